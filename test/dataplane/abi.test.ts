/** src/dataplane/abi.ts must match bpf/kloak.h as compiled: struct layouts from the object's BTF, #defines from the header. */
import { expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as abi from "../../src/dataplane/abi.ts";
import { ACTIONS, REFUSALS } from "../../src/dataplane/refusals.ts";

/** refusals.ts names whose kernel enum name differs from NAME in upper case. */
const KR_NAMES: Record<string, string> = {
  scope_not_entitled: "NOT_ENTITLED",
  too_many_placeholders: "TOO_MANY",
};
import { ROOT } from "../support/kloak.ts";

interface BtfType {
  id: number;
  kind: string;
  name?: string;
  size?: number;
  members?: { name: string; bits_offset: number }[];
  values?: { name: string; val: number }[];
}
const dump = Bun.spawnSync(["bpftool", "-j", "btf", "dump", "file", join(ROOT, "bpf", "kloak.bpf.o")]);
if (!dump.success) throw new Error(`bpftool btf dump failed (install bpftool): ${dump.stderr}`);
const types = (JSON.parse(dump.stdout.toString()) as { types: BtfType[] }).types;
const struct = (name: string) => {
  const t = types.find((t) => t.kind === "STRUCT" && t.name === name);
  if (!t) throw new Error(`struct ${name} not in the object's BTF`);
  return t;
};

for (const [name, layout] of Object.entries(abi.LAYOUT)) {
  test(`struct ${name}: size and offsets`, () => {
    const t = struct(name);
    expect(t.size).toBe(layout.size);
    const offsets = Object.fromEntries(t.members!.map((m) => [m.name, m.bits_offset / 8]));
    expect(offsets).toEqual(layout.fields);
  });
}

const enumValues = (name: string) => {
  const t = types.find((t) => t.kind === "ENUM" && t.name === name);
  if (!t) throw new Error(`enum ${name} not in BTF`);
  return Object.fromEntries(t.values!.map((v) => [v.name, v.val]));
};

test("enum kloak_counter matches COUNTERS in order", () => {
  const e = enumValues("kloak_counter");
  abi.COUNTERS.forEach((name, i) => expect(e[`KC_${name.toUpperCase()}`]).toBe(i));
  expect(e.KC__COUNT).toBe(abi.COUNTERS.length);
});

/** enum values named PREFIX_X in the object equal { X } of a mirror (names compared without underscores) */
const sameEnum = (name: string, prefix: string, mirror: Record<string, number>) => {
  const e = enumValues(name);
  const norm = (k: string) => k.replace(/_/g, "").toLowerCase();
  const got = Object.fromEntries(Object.entries(e).map(([k, v]) => [norm(k.slice(prefix.length)), v]));
  expect(got).toEqual(Object.fromEntries(Object.entries(mirror).map(([k, v]) => [norm(k), v])));
};

test("enum kloak_refusal is refusals.ts's kernel reasons, in order; no reason is listed that the kernel lacks", () => {
  const e = enumValues("kloak_refusal");
  const kernel = REFUSALS.filter((r) => r.kernel !== null);
  expect(e.KR__COUNT).toBe(kernel.length);
  expect(Object.keys(e).length).toBe(kernel.length + 1);
  for (const r of kernel) expect({ name: r.name, value: e[`KR_${KR_NAMES[r.name] ?? r.name.toUpperCase()}`] }).toEqual({ name: r.name, value: r.kernel! });
});

test("enum kloak_action matches ACTIONS", () => {
  const e = enumValues("kloak_action");
  ACTIONS.forEach((a, i) => expect(e[`KLOAK_ACTION_${a.toUpperCase()}`]).toBe(i));
});

test("enums: event types, functions, modes, connection flags, rule kinds", () => {
  sameEnum("kloak_event_type", "KE_", abi.EventType);
  sameEnum("kloak_fn", "KLOAK_FN_", abi.Fn);
  sameEnum("kloak_mode", "KLOAK_MODE_", abi.Mode);
  sameEnum("kloak_conn_flags", "KLOAK_CONN_", abi.ConnFlags);
  sameEnum("kloak_rule_kind", "KLOAK_RULE_", abi.RuleKind);
  sameEnum("kloak_scope_flags", "KLOAK_SCOPE_", abi.ScopeFlags);
});

test("#defines of kloak.h", () => {
  const h = readFileSync(join(ROOT, "bpf", "kloak.h"), "latin1");
  const def = (n: string) => {
    const m = new RegExp(`#define ${n} (.+?)(\\s*/\\*.*)?$`, "m").exec(h);
    if (!m) throw new Error(`#define ${n} missing`);
    return Number(eval(m[1]!.replace(/u\b/g, "")));
  };
  expect(def("KLOAK_MARKER_LEN")).toBe(abi.MARKER_LEN);
  expect(def("KLOAK_VALUE_MIN")).toBe(abi.VALUE_MIN);
  expect(def("KLOAK_VALUE_MAX")).toBe(abi.VALUE_MAX);
  expect(def("KLOAK_KEY_LEN")).toBe(abi.KEY_LEN);
  expect(def("KLOAK_MAX_SUBST")).toBe(abi.MAX_SUBST);
  expect(def("KLOAK_MAX_CANDIDATES")).toBe(abi.MAX_CANDIDATES);
  expect(def("KLOAK_ITEM_UNCHECKED")).toBe(abi.ITEM_UNCHECKED);
  expect(def("KLOAK_CHUNK")).toBe(abi.CHUNK);
  expect(def("KLOAK_MAX_SCAN")).toBe(abi.MAX_SCAN);
  expect(def("KLOAK_MAX_RULES")).toBe(abi.MAX_RULES);
  expect(def("KLOAK_NAME_MAX")).toBe(abi.NAME_MAX);
  expect(def("KLOAK_CGROUP_DEPTH")).toBe(abi.CGROUP_DEPTH);
  expect(def("KLOAK_CONNS_PER_PROCESS")).toBe(abi.CONNS_PER_PROCESS);
});
