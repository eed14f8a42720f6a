/**
 * The scan cap: how many bytes of each TLS write the probe scans for
 * placeholders. One definition for `kloak exec`, the agent and the doctor.
 */
import { UsageError } from "../errors.ts";
import { parseSize } from "../size.ts";
import { MAX_SCAN, VALUE_MAX } from "./abi.ts";

export const DEFAULT_SCAN_CAP = 64 * 1024;
/** A placeholder is at most VALUE_MAX bytes: a smaller cap could cut the first one. */
export const MIN_SCAN_CAP = VALUE_MAX;
export { MAX_SCAN as MAX_SCAN_CAP };

/** A scan cap flag's value, range-checked. */
export function parseScanCap(flag: string, text: string): number {
  const n = parseSize(flag, text);
  if (n < MIN_SCAN_CAP || n > MAX_SCAN)
    throw new UsageError(`${flag} ${text}: must be between ${MIN_SCAN_CAP} bytes and ${MAX_SCAN >> 20}MiB`);
  return n;
}
