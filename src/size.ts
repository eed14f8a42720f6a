/**
 * Sizes as operators write them on the command line and in the environment:
 * "65536", "64KiB", "1MiB", "1m" ... (binary units: k = 1024).
 */
import { UsageError } from "./errors.ts";

/** text in bytes; throws UsageError naming the flag. */
export function parseSize(flag: string, text: string): number {
  const m = /^(\d+)\s*(|b|k|kb|kib|m|mb|mib)$/i.exec(text.trim());
  if (!m) throw new UsageError(`${flag} ${JSON.stringify(text)}: not a size; write e.g. 65536, 64KiB or 1MiB`);
  const unit = m[2]!.toLowerCase();
  const mult = unit.startsWith("k") ? 1024 : unit.startsWith("m") ? 1024 * 1024 : 1;
  return Number(m[1]) * mult;
}
