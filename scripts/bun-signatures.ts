#!/usr/bin/env bun
/**
 * Derive the signatures of Bun's (stripped, static) BoringSSL functions for one
 * Bun binary, for src/dataplane/bun-signatures.ts.
 *
 *   bun scripts/bun-signatures.ts PATH-TO-BUN            print the entry
 *   bun scripts/bun-signatures.ts --write PATH-TO-BUN    add/replace it in the table
 *
 * A Bun release: `npm pack @oven/bun-linux-x64@VERSION` and run this on
 * package/bin/bun. Needs objdump (binutils) for instruction boundaries.
 *
 * How a function is found (the anchor), before its pattern is cut:
 *  - the string ".../boringssl/ssl/ssl_lib.cc" in .rodata; BoringSSL's
 *    OPENSSL_PUT_ERROR passes its address to ERR_put_error next to the library
 *    (ERR_LIB_SSL = 0x10) and the reason: `mov $imm32, %r32` sites in .text;
 *  - each site lies in a function (16-byte aligned, push %rbp; mov %rsp,%rbp:
 *    the nearest such start before the site); a function is named by the set of reasons it
 *    raises, from BoringSSL's ssl_lib.cc:
 *      SSL_write                 UNINITIALIZED 226, SSL_HANDSHAKE_FAILURE 215, BAD_LENGTH 111
 *      SSL_do_handshake          CONNECTION_TYPE_NOT_SET 134 (and not BAD_LENGTH: not inlined in a write)
 *      SSL_set_tlsext_host_name  SSL3_EXT_INVALID_SERVERNAME 213
 *      SSL_new                   NULL_SSL_CTX 185, and it tests its first argument first;
 *                                where LTO dropped that test (1.3.x): the function whose
 *                                result callers of SSL_set_tlsext_host_name pass to it
 *                                (call X; mov %rax,%R ... mov %R,%rdi; call SNI), agreed by
 *                                every such caller
 *    each rule must name exactly one function, or the script fails.
 * The pattern: the function's first instructions with every relocated field
 * (rel32 of calls and jumps, RIP-relative and absolute addresses) as ??,
 * grown until it matches once in .text. The runtime (bun-boringssl.ts) finds
 * the pattern, then checks again that the match is a function start that raises
 * the anchor's reasons.
 */
import { spawnSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import {
  type Code,
  errorSites,
  findPattern,
  functionEnd,
  functionStartBefore,
  isFunctionStart,
  lookupBun,
  openBun,
  readText,
  sslLibFileAddress,
} from "../src/dataplane/bun-boringssl.ts";
import type { BunFunction } from "../src/dataplane/bun-signatures.ts";

const RULES: { name: BunFunction; all: number[]; none: number[]; firstTestsArg?: boolean }[] = [
  { name: "SSL_write", all: [226, 215, 111], none: [] },
  { name: "SSL_do_handshake", all: [134], none: [111] },
  { name: "SSL_set_tlsext_host_name", all: [213], none: [] },
  { name: "SSL_new", all: [185], none: [186], firstTestsArg: true },
];

function die(msg: string): never {
  console.error(`bun-signatures: ${msg}`);
  process.exit(1);
}

const args = process.argv.slice(2);
if (args[0] === "--check") {
  // a fresh process: the table module above was loaded before --write changed it
  const r = lookupBun(args[1]!);
  if (r.kind !== "bun") die(`the runtime does not recognise ${args[1]}: ${JSON.stringify(r)}`);
  console.error(`Bun ${r.version}: ${r.functions.map((f) => `${f.name}@file+0x${f.offset.toString(16)}`).join(" ")}`);
  process.exit(0);
}
const write = args[0] === "--write";
const path = write ? args[1] : args[0];
if (!path) die("usage: bun scripts/bun-signatures.ts [--write] PATH-TO-BUN");

const bun = openBun(path) ?? die(`${path}: not a Bun binary (no ${"__DATA,__jsc_opcodes"} section or no "Bun v" version)`);
const version = bun.version!;
const fileAddr = sslLibFileAddress(bun.rodata, bun.rodataAddr) ?? die("no boringssl/ssl/ssl_lib.cc string");
const code = readText(bun.elf) ?? die("no .text");
bun.elf.close();

// functions by the reasons they raise
const byFn = new Map<number, Set<number>>();
for (const s of errorSites(code.bytes, fileAddr)) {
  const start = functionStartBefore(code, s.at);
  if (start === null) continue;
  if (!byFn.has(start)) byFn.set(start, new Set());
  byFn.get(start)!.add(s.reason);
}

interface Insn {
  at: number; // offset in .text
  bytes: number[];
  text: string;
}

/** Instructions of code[from, to) by objdump. */
function disassemble(c: Code, from: number, to: number): Insn[] {
  const r = spawnSync(
    "objdump",
    ["-d", "--insn-width=16", `--start-address=${c.addr + from}`, `--stop-address=${c.addr + to}`, path!],
    { encoding: "utf8", maxBuffer: 64 << 20 },
  );
  if (r.status !== 0) die(`objdump failed: ${r.stderr}`);
  const out: Insn[] = [];
  for (const line of r.stdout.split("\n")) {
    const m = /^\s*([0-9a-f]+):\t((?:[0-9a-f]{2} )+)\s*\t?(.*)$/.exec(line);
    if (!m) continue;
    out.push({ at: parseInt(m[1]!, 16) - c.addr, bytes: m[2]!.trim().split(" ").map((h) => parseInt(h, 16)), text: m[3]!.trim() });
  }
  return out;
}

const IMAGE_LOW = 0x200000;

/** The instruction's bytes as pattern tokens, relocated fields as ?? */
function tokens(c: Code, insn: Insn): string[] {
  const t = insn.bytes.map((b) => b.toString(16).padStart(2, "0"));
  const wild = (value: number) => {
    const le = Buffer.alloc(4);
    le.writeInt32LE(value | 0);
    for (let i = t.length - 4; i >= 0; i--) {
      if (insn.bytes.slice(i, i + 4).every((b, k) => b === le[k])) {
        for (let k = 0; k < 4; k++) t[i + k] = "??";
        return;
      }
    }
  };
  const mn = insn.text.split(/\s+/)[0] ?? "";
  const direct = /^(call|jmp|j[a-z]+)\b/.test(mn) && !insn.text.includes("*");
  if (direct && insn.bytes.length >= 5) for (let k = insn.bytes.length - 4; k < insn.bytes.length; k++) t[k] = "??";
  const rip = /# ([0-9a-f]+)/.exec(insn.text);
  if (insn.text.includes("(%rip)") && rip) wild(parseInt(rip[1]!, 16) - (c.addr + insn.at + insn.bytes.length));
  for (const m of insn.text.matchAll(/\$?0x([0-9a-f]+)/g)) {
    const v = parseInt(m[1]!, 16);
    if (v >= IMAGE_LOW && v < 2 ** 32) wild(v);
  }
  return t;
}

function patternFor(start: number): string {
  const insns = disassemble(code, start, Math.min(functionEnd(code, start), start + 512));
  const toks: string[] = [];
  for (const insn of insns) {
    toks.push(...tokens(code, insn));
    const fixed = toks.filter((x) => x !== "??").length;
    if (fixed < 24) continue;
    const p = toks.join(" ");
    const hits = findPattern(code.bytes, p, 2);
    if (hits.length === 1 && hits[0] === start) return p;
  }
  die(`no unique pattern in the first 512 bytes of the function at 0x${(code.addr + start).toString(16)}`);
}

/** Direct call sites of target in .text. */
function callersOf(target: number): number[] {
  const out: number[] = [];
  const b = code.bytes;
  for (let i = b.indexOf(0xe8); i >= 0 && i + 5 <= b.length; i = b.indexOf(0xe8, i + 1))
    if (i + 5 + b.readInt32LE(i + 1) === target) out.push(i);
  return out;
}

/** SSL_new by data flow into SSL_set_tlsext_host_name calls (see the header). */
function sslNewByDataFlow(sni: number): number | null {
  const agreed = new Set<number>();
  for (const site of callersOf(sni)) {
    const start = functionStartBefore(code, site);
    if (start === null) continue;
    const insns = disassemble(code, start, site + 5);
    const k = insns.findIndex((i) => i.at === site);
    const setRdi = insns.slice(0, k).reverse().find((i) => /,%rdi$/.test(i.text));
    const reg = setRdi && /^mov\s+(%r\w+),%rdi$/.exec(setRdi.text)?.[1];
    if (!reg) continue;
    for (let j = k - 1; j > 0; j--) {
      if (insns[j]!.text === `mov    %rax,${reg}` || new RegExp(`^mov\\s+%rax,${reg}$`).test(insns[j]!.text)) {
        const call = insns[j - 1]!;
        const m = /^call\s+([0-9a-f]+)\b/.exec(call.text);
        if (m) agreed.add(parseInt(m[1]!, 16) - code.addr);
        break;
      }
    }
  }
  return agreed.size === 1 ? [...agreed][0]! : null;
}

const functions: { name: BunFunction; pattern: string; reasons: number[] }[] = [];
const starts = new Map<BunFunction, number>();
for (const rule of RULES) {
  const found = [...byFn.entries()].filter(([start, rs]) => {
    if (!rule.all.every((r) => rs.has(r)) || rule.none.some((r) => rs.has(r))) return false;
    if (rule.firstTestsArg) {
      const first = disassemble(code, start, start + 32).find((i) => !/^(push|mov\s+%rsp,%rbp|sub\s+\$)/.test(i.text));
      return !!first && /^test\s+%rdi,%rdi/.test(first.text);
    }
    return true;
  });
  if (found.length === 0 && rule.name === "SSL_new" && starts.has("SSL_set_tlsext_host_name")) {
    const start = sslNewByDataFlow(starts.get("SSL_set_tlsext_host_name")!);
    if (start === null || !isFunctionStart(code, start)) die("SSL_new: no NULL_SSL_CTX site, and callers of SSL_set_tlsext_host_name do not agree on it");
    functions.push({ name: rule.name, pattern: patternFor(start), reasons: [] });
    console.error(`${rule.name}: 0x${(code.addr + start).toString(16)} (by data flow)`);
    continue;
  }
  if (found.length !== 1)
    die(`${rule.name}: ${found.length} functions raise ${rule.all.join(", ")} (want exactly one): ${found.map(([s]) => `0x${(code.addr + s).toString(16)}`).join(" ")}`);
  const [start] = found[0]!;
  starts.set(rule.name, start);
  functions.push({ name: rule.name, pattern: patternFor(start), reasons: rule.all });
  console.error(`${rule.name}: 0x${(code.addr + start).toString(16)}`);
}

const entry = `  ${JSON.stringify(version)}: {\n    functions: [\n${functions
  .map((f) => `      {\n        name: ${JSON.stringify(f.name)},\n        reasons: ${JSON.stringify(f.reasons)},\n        pattern:\n          ${JSON.stringify(f.pattern)},\n      },`)
  .join("\n")}\n    ],\n  },\n`;

if (!write) {
  process.stdout.write(entry);
  process.exit(0);
}
const table = new URL("../src/dataplane/bun-signatures.ts", import.meta.url);
const src = readFileSync(table, "utf8");
const begin = src.indexOf("// BEGIN SIGNATURES\n");
const end = src.indexOf("  // END SIGNATURES");
if (begin < 0 || end < 0) die("markers missing in src/dataplane/bun-signatures.ts");
const body = src.slice(begin + "// BEGIN SIGNATURES\n".length, end);
// entries are separated at top-level keys; replace this version's
const entries = body.split(/(?=^ {2}"[^"]+": \{$)/m).filter((e) => e.trim() && !e.startsWith(`  ${JSON.stringify(version)}:`));
entries.push(entry);
entries.sort((a, b) => {
  const va = /"([^"]+)"/.exec(a)![1]!.split(".").map(Number);
  const vb = /"([^"]+)"/.exec(b)![1]!.split(".").map(Number);
  for (let i = 0; i < 3; i++) if (va[i] !== vb[i]) return (va[i] ?? 0) - (vb[i] ?? 0);
  return 0;
});
writeFileSync(table, src.slice(0, begin) + "// BEGIN SIGNATURES\n" + entries.join("") + src.slice(end));
// the runtime must now find the functions the anchors found
const check = spawnSync(process.execPath, [import.meta.path, "--check", path], { stdio: "inherit" });
process.exit(check.status ?? 1);
