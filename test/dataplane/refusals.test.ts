/** The refusal table: every code the kernel can send has a reason, and a refusal is said the same way everywhere. */
import { expect, test } from "bun:test";
import { ENUMS } from "../../src/dataplane/abi.generated.ts";
import { noWorkerStats } from "../../src/dataplane/ring-protocol.ts";
import {
  ACTIONS,
  actionCode,
  actionName,
  describeRefusal,
  REFUSALS,
  refusalName,
  violationMask,
  workerRefusals,
} from "../../src/dataplane/refusals.ts";

test("every kernel refusal code decodes to a reason with a hint; no reason twice", () => {
  const codes = Object.entries(ENUMS.kloak_refusal).filter(([k]) => k !== "KR__COUNT");
  expect(codes.length).toBe(ENUMS.kloak_refusal.KR__COUNT);
  for (const [, code] of codes) expect(refusalName(code)).not.toBe("unknown");
  expect(REFUSALS.filter((r) => r.kernel !== null).length).toBe(codes.length);
  expect(new Set(REFUSALS.map((r) => r.name)).size).toBe(REFUSALS.length);
  for (const r of REFUSALS) expect(r.hint.length).toBeGreaterThan(0);
  expect(refusalName(ENUMS.kloak_refusal.KR__COUNT)).toBe("unknown");
});

test("the violation mask has the kernel codes of violations", () => {
  const mask = violationMask();
  for (const r of REFUSALS) if (r.kernel !== null) expect(((mask >>> r.kernel) & 1) === 1).toBe(r.violation);
});

test("actions are the kernel's, both ways", () => {
  expect(ACTIONS).toEqual(["pass", "block", "kill"]);
  for (const a of ACTIONS) expect(actionName(actionCode(a))).toBe(a);
  expect(actionName(99)).toBe("pass");
});

test("a refusal is said with its hint and what the violation policy did; the agent names the annotation", () => {
  const e = { reason: "destination_not_allowed", action: "block" as const };
  expect(describeRefusal(e, "exec")).toBe(
    "destination_not_allowed (no rule of the secret allows this peer; add one with --allow NAME=HOST if it is meant to); violation: the connection was shut down",
  );
  expect(describeRefusal(e, "agent")).toBe(
    "destination_not_allowed (add the host to the Secret's getkloak.io/hosts annotation if it is meant to); violation: the connection was shut down",
  );
  expect(describeRefusal({ reason: "truncated", action: "pass" }, "agent")).toBe("truncated (the placeholder was cut by the end of the write)");
  expect(describeRefusal({ reason: "unknown", action: "kill" }, "exec")).toBe("unknown; violation: the process was killed");
});

test("the worker's refusals: not stopped, patch failed or no value, buffers it found not private", () => {
  expect(workerRefusals({ ...noWorkerStats(), notStopped: 1, patchFailed: 2, noValue: 4, bufferRefused: 8, patched: 16 })).toBe(15);
});
