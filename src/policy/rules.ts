/**
 * Destination-policy rules: which hosts a secret may be sent to. One parser for
 * every place rules are written (secrets file `hosts:`, --allow, the
 * `getkloak.io/hosts` annotation) so they all accept exactly the same syntax.
 *
 *   api.example.com        exact host (single labels such as "localhost" too)
 *   *.example.com          any name with one or more labels before ".example.com",
 *                          never "example.com" itself
 *   10.1.2.3, 2001:db8::1  IP literal (IPv4-mapped IPv6 becomes IPv4)
 *   10.0.0.0/8, fd00::/8   CIDR; host bits must be zero
 *   any of them + ":port"  e.g. "api.example.com:443"; IPv6 needs brackets: "[::1]:443"
 *
 * Host names are ASCII letters, digits, "-" and "_" ("_" because real names
 * such as "_acme.example.com" or Docker service names use it; matching is
 * exact, so allowing it widens nothing). Output is lowercase without the
 * trailing dot. Every error is a one-line RuleError quoting the rule.
 */
import ipaddr from "ipaddr.js";
import { domainToASCII } from "node:url";

export type Rule =
  | { kind: "host"; host: string; port: number | null; text: string }
  | { kind: "wildcard"; suffix: string; port: number | null; text: string }
  | { kind: "cidr"; family: 4 | 6; address: string; prefix: number; port: number | null; text: string };
type Cidr = Extract<Rule, { kind: "cidr" }>;
/** Throws a RuleError about the rule being parsed. */
type Fail = (what: string) => never;

/** Rules per secret: a fixed bound keeps per-secret state small; longer lists are better said as a CIDR or wildcard. */
export const MAX_RULES = 16;
/** Longest DNS name (RFC 1035), without the trailing dot. */
export const NAME_MAX = 253;
const LABEL_MAX = 63;

export class RuleError extends Error {
  constructor(
    message: string,
    /** Position of the offending entry in its list, when there is one. */
    readonly index: number | null = null,
  ) {
    super(message);
    this.name = "RuleError";
  }
}

/** The rule as it appears in messages: JSON-quoted so a stray newline cannot break the line. */
function quote(text: string): string {
  return JSON.stringify(text.length > 100 ? `${text.slice(0, 100)}…` : text);
}

/**
 * Parses one rule. `text` is trimmed; anything else that is not part of the
 * syntax above is an error rather than being guessed at.
 */
export function parseRule(text: string): Rule {
  const rule = text.trim();
  const fail: Fail = (what) => {
    throw new RuleError(`rule ${quote(rule === "" ? text : rule)}: ${what}`);
  };

  if (rule === "") return fail('empty rule; write a host such as "api.example.com"');
  if (rule.includes("@")) {
    // user:password@host: the part before "@" may be a credential, so not echoed.
    throw new RuleError(
      'rule (not shown: it contains "@", which may hold a password): ' +
        "a rule is a host, not a URL or user@host; write only the host",
    );
  }
  if (/\s/.test(rule)) return fail("contains whitespace; a rule is one host, address or CIDR with no spaces");
  if (rule.includes("://")) {
    return fail(`a rule is a host, not a URL; write ${quote(urlHost(rule) ?? "the host alone")}`);
  }
  if (rule.includes(",")) return fail("contains a comma; give each rule as its own entry");

  const [hostPart, portText] = splitPort(rule, fail);
  const port = portText === null ? null : parsePort(portText, hostPart, fail);

  if (hostPart.includes("/")) return parseCidr(rule, hostPart, port, fail);
  if (hostPart.includes(":")) return addressRule(rule, parseV6(hostPart, fail), null, port);
  if (looksIPv4(hostPart)) {
    if (!ipaddr.IPv4.isValidFourPartDecimal(hostPart)) {
      return fail('not a valid IPv4 address; write four numbers 0-255 without leading zeros, e.g. "10.1.2.3"');
    }
    return addressRule(rule, ipaddr.IPv4.parse(hostPart), null, port);
  }
  if (hostPart.includes("*")) {
    const stars = /^\*+\.?/.exec(hostPart)?.[0] ?? "";
    const rest = hostPart.slice(stars.length);
    if (stars === "" || rest.includes("*")) {
      return fail('"*" is only allowed as the whole first label, as in "*.example.com"');
    }
    if (stars !== "*." || rest === "") {
      return fail(`a wildcard must be "*." followed by a domain, e.g. ${quote(`*.${rest || "example.com"}`)}`);
    }
    const suffix = parseHost(rest, NAME_MAX - 2, (what) => fail(`wildcard domain: ${what}`));
    return { kind: "wildcard", suffix, port, text: rule };
  }
  return { kind: "host", host: parseHost(hostPart, NAME_MAX, fail), port, text: rule };
}

/** Digits and dots only: meant as an IPv4 address, whatever DNS would allow. */
function looksIPv4(text: string): boolean {
  return /^[0-9.]+$/.test(text) && /[0-9]/.test(text);
}

function urlHost(text: string): string | null {
  try {
    const url = new URL(text);
    return url.hostname === "" ? null : url.port === "" ? url.hostname : `${url.hostname}:${url.port}`;
  } catch {
    return null;
  }
}

/** [host, port text or null]. Two or more colons without brackets is a bare IPv6, which has no port. */
function splitPort(rule: string, fail: Fail): [string, string | null] {
  if (rule.startsWith("[")) {
    const m = /^\[([^\][]*)\](?::(.*))?$/.exec(rule);
    if (m === null || m[1] === "") {
      return fail('brackets are written "[IPv6]" or "[IPv6]:port", e.g. "[2001:db8::1]:443"');
    }
    const inside = m[1] ?? "";
    if (!inside.includes(":")) {
      const plain = m[2] === undefined ? inside : `${inside}:${m[2]}`;
      return fail(`brackets are only for IPv6 addresses; write ${quote(plain)}`);
    }
    return [inside, m[2] ?? null];
  }
  const colons = rule.split(":").length - 1;
  if (colons !== 1) return [rule, null];
  const at = rule.indexOf(":");
  return [rule.slice(0, at), rule.slice(at + 1)];
}

function parsePort(text: string, host: string, fail: Fail): number {
  const example = quote(`${host}:443`);
  if (text === "") return fail(`the port after ":" is missing; write e.g. ${example}, or drop the ":"`);
  if (!/^[0-9]+$/.test(text)) return fail(`port ${quote(text)} is not a number; write e.g. ${example}`);
  const port = Number(text);
  if (port < 1 || port > 65535) return fail(`port ${text} is out of range; use 1-65535`);
  return port;
}

function parseV6(text: string, fail: Fail): ipaddr.IPv6 {
  if (text.includes("%")) return fail('IPv6 zone IDs ("%eth0") are not supported; write the address alone');
  if (!ipaddr.IPv6.isValid(text)) {
    return fail('not a valid IPv6 address (a port is written once, and with IPv6 in brackets: "[2001:db8::1]:443")');
  }
  return ipaddr.IPv6.parse(text);
}

function parseCidr(rule: string, hostPart: string, port: number | null, fail: Fail): Cidr {
  const slash = hostPart.indexOf("/");
  const addrText = hostPart.slice(0, slash);
  const prefixText = hostPart.slice(slash + 1);
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  if (addrText === "") return fail('the address before "/" is missing; a CIDR is written e.g. "10.0.0.0/8"');
  if (addrText.includes(":")) addr = parseV6(addrText, fail);
  else if (ipaddr.IPv4.isValidFourPartDecimal(addrText)) addr = ipaddr.IPv4.parse(addrText);
  else if (looksIPv4(addrText)) {
    return fail(`${quote(addrText)} is not a valid IPv4 address; a CIDR is written e.g. "10.0.0.0/8"`);
  } else return fail(`a rule is a host, not a URL; write ${quote(addrText)}`);

  const max = addr.kind() === "ipv4" ? 32 : 128;
  const withPort = /^([0-9]+):([0-9]+)$/.exec(prefixText);
  if (withPort !== null && max === 128) {
    return fail(`an IPv6 CIDR with a port needs brackets: ${quote(`[${addrText}/${withPort[1]}]:${withPort[2]}`)}`);
  }
  if (!/^[0-9]{1,3}$/.test(prefixText) || Number(prefixText) > max) {
    const example = max === 32 ? "10.0.0.0/8" : "fd00::/8";
    return fail(`the prefix length after "/" must be a number 0-${max}, e.g. ${quote(example)}`);
  }
  const prefix = Number(prefixText);
  const cidr = `${addrText}/${prefix}`;
  const net =
    addr.kind() === "ipv4" ? ipaddr.IPv4.networkAddressFromCIDR(cidr) : ipaddr.IPv6.networkAddressFromCIDR(cidr);
  if (net.toString() !== addr.toString()) {
    const fixed = formatRule(addressRule(rule, net, prefix, port));
    return fail(`host bits are set after the /${prefix} prefix; write the network address ${quote(fixed)}`);
  }
  return addressRule(rule, addr, prefix, port);
}

/** A cidr rule; IPv4-mapped IPv6 becomes IPv4 so one address has one spelling. */
function addressRule(text: string, addr: ipaddr.IPv4 | ipaddr.IPv6, prefix: number | null, port: number | null): Cidr {
  if (addr.kind() === "ipv6") {
    const v6 = addr as ipaddr.IPv6;
    const bits = prefix ?? 128;
    if (v6.isIPv4MappedAddress() && bits >= 96) {
      return { kind: "cidr", family: 4, address: v6.toIPv4Address().toString(), prefix: bits - 96, port, text };
    }
    return { kind: "cidr", family: 6, address: v6.toRFC5952String(), prefix: bits, port, text };
  }
  return { kind: "cidr", family: 4, address: addr.toString(), prefix: prefix ?? 32, port, text };
}

/** Lowercase DNS name without its trailing dot. */
function parseHost(text: string, max: number, fail: Fail): string {
  if (/[^\x00-\x7f]/.test(text)) {
    const ascii = domainToASCII(text);
    return fail(`host names must be ASCII; write the punycode form ${ascii === "" ? '("xn--...")' : quote(ascii)}`);
  }
  const host = (text.endsWith(".") ? text.slice(0, -1) : text).toLowerCase();
  if (host === "") return fail('empty host name; write e.g. "example.com"');
  if (host.length > max) return fail(`host name is ${host.length} characters long; the limit is ${max}`);
  const bad = /[^a-z0-9._-]/.exec(host);
  if (bad !== null) return fail(`${quote(bad[0])} is not allowed in a host name (letters, digits, "-", "_" and "." only)`);
  const labels = host.split(".");
  for (const label of labels) {
    if (label === "") return fail('empty label (".." or a leading "."); labels are separated by single dots');
    if (label.length > LABEL_MAX) return fail(`a label is ${label.length} characters long; the limit is ${LABEL_MAX}`);
    if (label.startsWith("-") || label.endsWith("-")) {
      return fail(`label ${quote(label)} starts or ends with "-", which DNS does not allow`);
    }
  }
  // An all-digit last label is never a real name, but resolvers read "127.1" as an IPv4 address.
  if (/^[0-9]+$/.test(labels[labels.length - 1] ?? "")) {
    return fail('the last label is all digits; an IPv4 address is four numbers, e.g. "10.1.2.3"');
  }
  return host;
}

/** Canonical text: lowercase, canonical addresses, "/32" and "/128" left off, IPv6 with a port in brackets. */
export function formatRule(r: Rule): string {
  let base: string;
  if (r.kind === "host") base = r.host;
  else if (r.kind === "wildcard") base = `*.${r.suffix}`;
  else base = r.prefix === (r.family === 4 ? 32 : 128) ? r.address : `${r.address}/${r.prefix}`;
  if (r.port === null) return base;
  return r.kind === "cidr" && r.family === 6 ? `[${base}]:${r.port}` : `${base}:${r.port}`;
}

/** Drops repeats (by canonical text, first kept) and applies MAX_RULES. */
function finish(rules: Rule[]): Rule[] {
  const seen = new Set<string>();
  const out = rules.filter((r) => {
    const key = formatRule(r);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  if (out.length > MAX_RULES) {
    throw new RuleError(
      `${out.length} rules, more than the limit of ${MAX_RULES} per secret; ` +
        `cover several with a CIDR (e.g. "10.0.0.0/8") or a wildcard (e.g. "*.example.com")`,
    );
  }
  return out;
}

function atIndex<T>(index: number, f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof RuleError) throw new RuleError(err.message, index);
    throw err;
  }
}

/**
 * "a.com, *.b.com:443": the --allow flag and `getkloak.io/hosts` annotation
 * form. An empty list is an error, not "anywhere": no rules means any
 * destination, and that must not happen because of an empty string.
 */
export function parseRuleList(text: string): Rule[] {
  if (text.trim() === "") {
    throw new RuleError('the rule list is empty; give at least one host, e.g. "api.example.com"');
  }
  const entries = text.split(",");
  return finish(
    entries.map((entry, i) => {
      if (entry.trim() === "") {
        const where = i === 0 ? "leading" : i === entries.length - 1 ? "trailing" : "extra";
        // The list is not echoed if it holds a "@" (see parseRule).
        const list = text.includes("@") ? "the list" : quote(text.trim());
        throw new RuleError(`rule ${i + 1} of ${list} is empty; remove the ${where} comma`, i);
      }
      return atIndex(i, () => parseRule(entry));
    }),
  );
}

/** The list form (secrets file `hosts:`): one rule per entry. An empty list gives no rules. */
export function parseRules(list: readonly string[]): Rule[] {
  return finish(list.map((entry, i) => atIndex(i, () => parseRule(entry))));
}

/**
 * The rule's network as a 16-byte IPv6 address (IPv4 as ::ffff:a.b.c.d) and
 * a prefix over 128 bits, so both families share one key format (e.g. one LPM trie).
 */
export function mappedAddress(r: Cidr): { bytes: Uint8Array; prefix: number } {
  return { bytes: mappedBytes(r.address, r.family), prefix: r.family === 4 ? r.prefix + 96 : r.prefix };
}

/** An address as 16 bytes, IPv4 as ::ffff:a.b.c.d: the one form kloak's data plane compares. */
export function mappedBytes(address: string, family: 4 | 6): Uint8Array {
  if (family === 6) return new Uint8Array(ipaddr.IPv6.parse(address).toByteArray());
  const bytes = new Uint8Array(16);
  bytes[10] = 0xff;
  bytes[11] = 0xff;
  bytes.set(ipaddr.IPv4.parse(address).toByteArray(), 12);
  return bytes;
}

/**
 * Whether a host or wildcard rule covers `name` (an SNI or DNS name); the port
 * is checked separately. Always false for cidr rules.
 */
export function hostMatches(r: Rule, name: string): boolean {
  let n = name.toLowerCase();
  if (n.endsWith(".")) n = n.slice(0, -1);
  if (r.kind === "host") return n === r.host;
  // At least one character before ".suffix", so the bare suffix never matches.
  if (r.kind === "wildcard") return n.length > r.suffix.length + 1 && n.endsWith(`.${r.suffix}`);
  return false;
}
