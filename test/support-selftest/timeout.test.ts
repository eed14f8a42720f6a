/**
 * The suite runs with a per-test timeout above Bun's 5 s default
 * (`bun run test:host` passes --timeout; bunfig's timeout is ignored by Bun
 * 1.4.5). Run as plain `bun test`, this test fails and says so.
 */
import { test } from "bun:test";

test("a test may run longer than Bun's 5 s default (run the suite with `bun run test:host`)", async () => {
  await Bun.sleep(5_200);
});
