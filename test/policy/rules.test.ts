import { describe, expect, test } from "bun:test";
import {
  formatRule,
  hostMatches,
  MAX_RULES,
  mappedAddress,
  NAME_MAX,
  parseRule,
  parseRuleList,
  parseRules,
  RuleError,
  type Rule,
} from "../../src/policy/rules.ts";

function ruleError(f: () => unknown): RuleError {
  try {
    f();
  } catch (err) {
    expect(err).toBeInstanceOf(RuleError);
    const e = err as RuleError;
    expect(e.message).not.toContain("\n"); // one line
    return e;
  }
  throw new Error("expected a RuleError");
}

const label63 = "a".repeat(63);
// 63+1+63+1+63+1+61 = 253 characters
const name253 = `${label63}.${label63}.${label63}.${"b".repeat(61)}`;

describe("parseRule: accepted forms", () => {
  const host = (host: string, port: number | null = null) => ({ kind: "host", host, port });
  const wild = (suffix: string, port: number | null = null) => ({ kind: "wildcard", suffix, port });
  const cidr = (family: 4 | 6, address: string, prefix: number, port: number | null = null) => ({
    kind: "cidr",
    family,
    address,
    prefix,
    port,
  });
  // [input, parsed (without text), canonical form]
  const cases: [string, object, string][] = [
    ["api.example.com", host("api.example.com"), "api.example.com"],
    ["api.example.com:443", host("api.example.com", 443), "api.example.com:443"],
    ["API.Example.COM", host("api.example.com"), "api.example.com"],
    ["api.example.com.", host("api.example.com"), "api.example.com"],
    ["API.example.com.:8443", host("api.example.com", 8443), "api.example.com:8443"],
    ["  api.example.com  ", host("api.example.com"), "api.example.com"],
    ["localhost", host("localhost"), "localhost"],
    ["localhost:1", host("localhost", 1), "localhost:1"],
    ["a.b:65535", host("a.b", 65535), "a.b:65535"],
    ["_acme-challenge.example.com", host("_acme-challenge.example.com"), "_acme-challenge.example.com"],
    ["xn--bcher-kva.example", host("xn--bcher-kva.example"), "xn--bcher-kva.example"],
    ["3com.example", host("3com.example"), "3com.example"],
    [`${label63}.com`, host(`${label63}.com`), `${label63}.com`],
    [name253, host(name253), name253],
    [`${name253}.`, host(name253), name253],
    ["*.example.com", wild("example.com"), "*.example.com"],
    ["*.Example.COM.", wild("example.com"), "*.example.com"],
    ["*.example.com:8443", wild("example.com", 8443), "*.example.com:8443"],
    ["*.com", wild("com"), "*.com"],
    ["*.localhost", wild("localhost"), "*.localhost"],
    ["10.1.2.3", cidr(4, "10.1.2.3", 32), "10.1.2.3"],
    ["10.1.2.3:443", cidr(4, "10.1.2.3", 32, 443), "10.1.2.3:443"],
    ["0.0.0.0/0", cidr(4, "0.0.0.0", 0), "0.0.0.0/0"],
    ["10.0.0.0/8", cidr(4, "10.0.0.0", 8), "10.0.0.0/8"],
    ["10.0.0.0/8:443", cidr(4, "10.0.0.0", 8, 443), "10.0.0.0/8:443"],
    ["192.168.1.0/24", cidr(4, "192.168.1.0", 24), "192.168.1.0/24"],
    ["10.1.2.3/32", cidr(4, "10.1.2.3", 32), "10.1.2.3"],
    ["::1", cidr(6, "::1", 128), "::1"],
    ["2001:db8::1", cidr(6, "2001:db8::1", 128), "2001:db8::1"],
    ["2001:DB8:0:0:0:0:0:1", cidr(6, "2001:db8::1", 128), "2001:db8::1"],
    ["[::1]", cidr(6, "::1", 128), "::1"],
    ["[::1]:8443", cidr(6, "::1", 128, 8443), "[::1]:8443"],
    ["[2001:db8::1]:443", cidr(6, "2001:db8::1", 128, 443), "[2001:db8::1]:443"],
    ["fd00::/8", cidr(6, "fd00::", 8), "fd00::/8"],
    ["[fd00::/8]:443", cidr(6, "fd00::", 8, 443), "[fd00::/8]:443"],
    ["::/0", cidr(6, "::", 0), "::/0"],
    ["2001:db8::/128", cidr(6, "2001:db8::", 128), "2001:db8::"],
    // IPv4-mapped IPv6 has one spelling: IPv4.
    ["::ffff:10.1.2.3", cidr(4, "10.1.2.3", 32), "10.1.2.3"],
    ["::FFFF:a01:203", cidr(4, "10.1.2.3", 32), "10.1.2.3"],
    ["[::ffff:10.1.2.3]:443", cidr(4, "10.1.2.3", 32, 443), "10.1.2.3:443"],
    ["::ffff:10.0.0.0/104", cidr(4, "10.0.0.0", 8), "10.0.0.0/8"],
    ["::ffff:0:0/96", cidr(4, "0.0.0.0", 0), "0.0.0.0/0"],
    // A bare IPv6 address has no port: the last group is part of the address.
    ["::1:443", cidr(6, "::1:443", 128), "::1:443"],
  ];
  for (const [input, expected, canonical] of cases) {
    test(JSON.stringify(input), () => {
      const r = parseRule(input);
      expect(r).toEqual({ ...expected, text: input.trim() } as Rule);
      expect(formatRule(r)).toBe(canonical);
      // The canonical form reads back as the same rule.
      expect(formatRule(parseRule(canonical))).toBe(canonical);
    });
  }
});

describe("parseRule: rejections quote the rule and say how to fix it", () => {
  // [input, quoted rule in the message, hint the message must contain]
  const cases: [string, string, string | RegExp][] = [
    ["", '""', "empty rule"],
    ["   ", '"   "', "empty rule"],
    ["*.", '"*."', 'a wildcard must be "*." followed by a domain, e.g. "*.example.com"'],
    ["*", '"*"', 'e.g. "*.example.com"'],
    ["*foo.com", '"*foo.com"', 'a wildcard must be "*." followed by a domain, e.g. "*.foo.com"'],
    ["**.a.com", '"**.a.com"', 'e.g. "*.a.com"'],
    ["a.*.com", '"a.*.com"', '"*" is only allowed as the whole first label'],
    ["a*.com", '"a*.com"', '"*" is only allowed as the whole first label'],
    ["*.*.a.com", '"*.*.a.com"', '"*" is only allowed as the whole first label'],
    ["*.a..com", '"*.a..com"', "wildcard domain: empty label"],
    ["*.10.0.0.1", '"*.10.0.0.1"', "last label is all digits"],
    ["host:99999", '"host:99999"', "port 99999 is out of range; use 1-65535"],
    ["host:0", '"host:0"', "port 0 is out of range; use 1-65535"],
    ["host:65536", '"host:65536"', "out of range"],
    ["host:abc", '"host:abc"', 'port "abc" is not a number; write e.g. "host:443"'],
    ["host:-1", '"host:-1"', "is not a number"],
    ["host:", '"host:"', 'the port after ":" is missing'],
    ["*.example.com:0", '"*.example.com:0"', "out of range"],
    ["10.0.0.0/33", '"10.0.0.0/33"', 'must be a number 0-32, e.g. "10.0.0.0/8"'],
    ["10.0.0.0/x", '"10.0.0.0/x"', "must be a number 0-32"],
    ["10.0.0.0/", '"10.0.0.0/"', "must be a number 0-32"],
    ["10.0.0.0/8/8", '"10.0.0.0/8/8"', "must be a number 0-32"],
    ["::/129", '"::/129"', 'must be a number 0-128, e.g. "fd00::/8"'],
    ["/8", '"/8"', 'the address before "/" is missing'],
    ["10.1.2.3/8", '"10.1.2.3/8"', 'host bits are set after the /8 prefix; write the network address "10.0.0.0/8"'],
    ["10.1.2.3/8:443", '"10.1.2.3/8:443"', 'write the network address "10.0.0.0/8:443"'],
    ["fd00::1/8", '"fd00::1/8"', 'write the network address "fd00::/8"'],
    ["[fd00::1/8]:443", '"[fd00::1/8]:443"', 'write the network address "[fd00::/8]:443"'],
    ["::ffff:10.1.2.3/104", '"::ffff:10.1.2.3/104"', 'write the network address "10.0.0.0/8"'],
    ["fd00::/8:443", '"fd00::/8:443"', 'an IPv6 CIDR with a port needs brackets: "[fd00::/8]:443"'],
    ["https://a.com/path", '"https://a.com/path"', 'a rule is a host, not a URL; write "a.com"'],
    ["http://A.com:8080", '"http://A.com:8080"', 'a rule is a host, not a URL; write "a.com:8080"'],
    ["https://[::1]:8443/x", '"https://[::1]:8443/x"', 'write "[::1]:8443"'],
    ["a.com/path", '"a.com/path"', 'a rule is a host, not a URL; write "a.com"'],
    ["a.com b.com", '"a.com b.com"', "contains whitespace"],
    ["a.com\tb", '"a.com\\tb"', "contains whitespace"],
    ["a.com\nb", '"a.com\\nb"', "contains whitespace"],
    ["a.com,b.com", '"a.com,b.com"', "contains a comma; give each rule as its own entry"],
    ["[10.0.0.1]:443", '"[10.0.0.1]:443"', 'brackets are only for IPv6 addresses; write "10.0.0.1:443"'],
    ["[a.com]", '"[a.com]"', 'brackets are only for IPv6 addresses; write "a.com"'],
    ["[]", '"[]"', 'brackets are written "[IPv6]" or "[IPv6]:port"'],
    ["[::1]8443", '"[::1]8443"', 'brackets are written "[IPv6]" or "[IPv6]:port"'],
    ["[::1", '"[::1"', 'brackets are written "[IPv6]"'],
    ["a.com:443:1", '"a.com:443:1"', "not a valid IPv6 address (a port is written once"],
    ["1::2::3", '"1::2::3"', "not a valid IPv6 address"],
    ["fe80::1%eth0", '"fe80::1%eth0"', "zone IDs"],
    ["10.1.2.300", '"10.1.2.300"', 'not a valid IPv4 address; write four numbers 0-255'],
    ["1.2.3.4.5", '"1.2.3.4.5"', "not a valid IPv4 address"],
    ["10.1", '"10.1"', "not a valid IPv4 address"],
    ["010.1.2.3", '"010.1.2.3"', "without leading zeros"],
    ["300.0.0.0/8", '"300.0.0.0/8"', '"300.0.0.0" is not a valid IPv4 address'],
    ["a.123", '"a.123"', "last label is all digits"],
    ["a..com", '"a..com"', "empty label"],
    [".a.com", '".a.com"', "empty label"],
    ["a.com..", '"a.com.."', "empty label"],
    [".", '"."', "empty host name"],
    [":443", '":443"', "empty host name"],
    ["-a.com", '"-a.com"', 'label "-a" starts or ends with "-"'],
    ["a-.com", '"a-.com"', 'label "a-" starts or ends with "-"'],
    ["a!.com", '"a!.com"', '"!" is not allowed in a host name'],
    ["a;b.com", '"a;b.com"', '";" is not allowed'],
    ["bücher.example", '"bücher.example"', 'write the punycode form "xn--bcher-kva.example"'],
    [`${"a".repeat(64)}.com`, `"${"a".repeat(64)}.com"`, "a label is 64 characters long; the limit is 63"],
    [`${name253}a`, "", `host name is 254 characters long; the limit is ${NAME_MAX}`],
    [`*.${name253}`, "", "wildcard domain: host name is 253 characters long; the limit is 251"],
  ];
  for (const [input, quoted, hint] of cases) {
    test(JSON.stringify(input), () => {
      const e = ruleError(() => parseRule(input));
      expect(e.message.startsWith(`rule ${quoted || '"'}`)).toBe(true);
      if (typeof hint === "string") expect(e.message).toContain(hint);
      else expect(e.message).toMatch(hint);
      expect(e.index).toBeNull();
    });
  }

  test("a long rule is quoted shortened", () => {
    const e = ruleError(() => parseRule(`${"a".repeat(300)}.com`));
    expect(e.message).toContain(`rule "${"a".repeat(100)}…": `);
  });

  test("user:password@host is not echoed", () => {
    for (const input of ["https://user:hunter2pass@a.com/", "hunter2pass@a.com"]) {
      const e = ruleError(() => parseRule(input));
      expect(e.message).not.toContain("hunter2pass");
      expect(e.message).toContain("a rule is a host, not a URL");
    }
    const e = ruleError(() => parseRuleList("a.com,,https://user:hunter2pass@b.com"));
    expect(e.message).toBe("rule 2 of the list is empty; remove the extra comma");
  });
});

describe("parseRuleList (--allow, getkloak.io/hosts)", () => {
  test("comma separated, whitespace trimmed, canonical order kept", () => {
    const rules = parseRuleList(" api.example.com , *.b.example:443,10.0.0.0/8,[::1]:8443 ");
    expect(rules.map(formatRule)).toEqual(["api.example.com", "*.b.example:443", "10.0.0.0/8", "[::1]:8443"]);
    expect(rules.map((r) => r.text)).toEqual(["api.example.com", "*.b.example:443", "10.0.0.0/8", "[::1]:8443"]);
  });

  test("single rule", () => {
    expect(parseRuleList("a.com").map(formatRule)).toEqual(["a.com"]);
  });

  const empties: [string, string, number | null][] = [
    ["a.com,,b.com", 'rule 2 of "a.com,,b.com" is empty; remove the extra comma', 1],
    ["a.com, ,b.com", 'rule 2 of "a.com, ,b.com" is empty; remove the extra comma', 1],
    ["a.com,", 'rule 2 of "a.com," is empty; remove the trailing comma', 1],
    [",a.com", 'rule 1 of ",a.com" is empty; remove the leading comma', 0],
    ["", "the rule list is empty; give at least one host", null],
    ["   ", "the rule list is empty", null],
  ];
  for (const [input, message, index] of empties) {
    test(`empty entry: ${JSON.stringify(input)}`, () => {
      const e = ruleError(() => parseRuleList(input));
      expect(e.message).toContain(message);
      expect(e.index).toBe(index);
    });
  }

  test("a bad entry is reported with its index", () => {
    const e = ruleError(() => parseRuleList("a.com, *foo.com"));
    expect(e.message).toBe('rule "*foo.com": a wildcard must be "*." followed by a domain, e.g. "*.foo.com"');
    expect(e.index).toBe(1);
  });

  test("an IPv6 address in a list (its colons are not ports)", () => {
    expect(parseRuleList("::1,2001:db8::/32").map(formatRule)).toEqual(["::1", "2001:db8::/32"]);
  });
});

describe("parseRules (secrets file hosts:)", () => {
  test("one rule per entry", () => {
    expect(parseRules(["a.com", "*.b.com:443", "fd00::/8"]).map(formatRule)).toEqual(["a.com", "*.b.com:443", "fd00::/8"]);
  });

  test("an empty list gives no rules", () => {
    expect(parseRules([])).toEqual([]);
  });

  test("an entry with a comma must be split", () => {
    const e = ruleError(() => parseRules(["a.com", "b.com,c.com"]));
    expect(e.message).toBe('rule "b.com,c.com": contains a comma; give each rule as its own entry');
    expect(e.index).toBe(1);
  });

  test("empty and whitespace-only entries", () => {
    expect(ruleError(() => parseRules(["a.com", ""])).index).toBe(1);
    const e = ruleError(() => parseRules([" "]));
    expect(e.message).toContain('rule " ": empty rule');
    expect(e.index).toBe(0);
  });
});

describe("dedupe and limits", () => {
  test("identical rules (after normalisation) are kept once, first spelling wins", () => {
    const rules = parseRules(["A.com", "a.com.", "a.com", "a.com:443", "10.1.2.3", "10.1.2.3/32", "::ffff:10.1.2.3", "*.a.com"]);
    expect(rules.map(formatRule)).toEqual(["a.com", "a.com:443", "10.1.2.3", "*.a.com"]);
    expect(rules[0]!.text).toBe("A.com");
    expect(parseRuleList("a.com,A.COM").map(formatRule)).toEqual(["a.com"]);
  });

  test(`${MAX_RULES} rules are allowed, one more is not`, () => {
    const hosts = Array.from({ length: MAX_RULES + 1 }, (_, i) => `h${i}.example.com`);
    expect(parseRules(hosts.slice(0, MAX_RULES))).toHaveLength(MAX_RULES);
    for (const f of [() => parseRules(hosts), () => parseRuleList(hosts.join(","))]) {
      const e = ruleError(f);
      expect(e.message).toContain(`${MAX_RULES + 1} rules, more than the limit of ${MAX_RULES} per secret`);
      expect(e.message).toContain("CIDR");
      expect(e.message).toContain("wildcard");
      expect(e.index).toBeNull();
    }
  });

  test("the limit counts rules after dedupe", () => {
    const hosts = Array.from({ length: MAX_RULES }, (_, i) => `h${i}.example.com`);
    expect(parseRules([...hosts, "H0.example.com", "h1.example.com."])).toHaveLength(MAX_RULES);
  });

  test("constants", () => {
    expect(MAX_RULES).toBe(16);
    expect(NAME_MAX).toBe(253);
  });
});

describe("hostMatches", () => {
  const cases: [string, string, boolean][] = [
    ["*.example.test", "a.example.test", true],
    ["*.example.test", "a.b.example.test", true],
    ["*.example.test", "A.Example.TEST", true],
    ["*.example.test", "a.example.test.", true],
    ["*.example.test", "example.test", false],
    ["*.example.test", ".example.test", false],
    ["*.example.test", "badexample.test", false],
    ["*.example.test", "a.badexample.test", false],
    ["*.example.test", "a.example.test.evil", false],
    ["*.example.test", "", false],
    ["*.example.test:443", "a.example.test", true], // ports are checked elsewhere
    ["api.example.test", "api.example.test", true],
    ["API.example.test", "api.EXAMPLE.test", true],
    ["api.example.test", "api.example.test.", true],
    ["api.example.test", "a.api.example.test", false],
    ["api.example.test", "example.test", false],
    ["api.example.test", "api.example.test.evil", false],
    ["10.1.2.3", "10.1.2.3", false], // addresses are matched by address, not by name
    ["::1", "::1", false],
  ];
  for (const [rule, name, expected] of cases) {
    test(`${rule} vs ${JSON.stringify(name)}`, () => {
      expect(hostMatches(parseRule(rule), name)).toBe(expected);
    });
  }
});

describe("mappedAddress", () => {
  const cidr = (text: string) => {
    const r = parseRule(text);
    if (r.kind !== "cidr") throw new Error(`${text} is not an address rule`);
    return r;
  };
  const v4Mapped = (...octets: number[]) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, ...octets];
  const cases: [string, number[], number][] = [
    ["10.1.2.3", v4Mapped(10, 1, 2, 3), 128],
    ["10.0.0.0/8", v4Mapped(10, 0, 0, 0), 104],
    ["0.0.0.0/0", v4Mapped(0, 0, 0, 0), 96],
    ["192.168.1.0/24:443", v4Mapped(192, 168, 1, 0), 120],
    ["::ffff:10.1.2.3", v4Mapped(10, 1, 2, 3), 128],
    ["::1", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 128],
    ["2001:db8::1", [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 128],
    ["fd00::/8", [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8],
    ["[2001:db8:ab::/48]:443", [0x20, 0x01, 0x0d, 0xb8, 0, 0xab, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 48],
    ["::/0", new Array<number>(16).fill(0), 0],
  ];
  for (const [text, bytes, prefix] of cases) {
    test(text, () => {
      const m = mappedAddress(cidr(text));
      expect(m.bytes).toBeInstanceOf(Uint8Array);
      expect([...m.bytes]).toEqual(bytes);
      expect(m.prefix).toBe(prefix);
    });
  }
});
