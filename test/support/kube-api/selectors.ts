/**
 * Label and field selectors for the kube-apiserver test double, parsed and
 * matched the way k8s.io/apimachinery does for the forms in common use:
 * labels `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
 * `k>n`, `k<n`; fields `f=v`, `f==v`, `f!=v`. Terms are ANDed by commas.
 * `!=` and `notin` match objects that lack the label (as upstream). Field
 * selector values are compared literally (no backslash escapes).
 */
import type { KubeObject } from "../kube-api-server.ts";
import type { ResourceDef } from "./resources.ts";
import { badRequest } from "./status.ts";

type LabelReq =
  | { op: "eq" | "neq"; key: string; value: string }
  | { op: "in" | "notin"; key: string; values: string[] }
  | { op: "exists" | "notexists"; key: string }
  | { op: "gt" | "lt"; key: string; value: number };

export type Matcher = (o: KubeObject) => boolean;

const KEY = /^([a-z0-9]([-a-z0-9.]*[a-z0-9])?\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;

/** Splits on commas outside parentheses. */
function splitTerms(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = "";
  for (const ch of s) {
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    if (ch === "," && depth === 0) {
      out.push(cur);
      cur = "";
    } else cur += ch;
  }
  out.push(cur);
  return out.map((t) => t.trim());
}

function parseFail(term: string, why: string): Error {
  return badRequest(`unable to parse requirement: ${why} in ${JSON.stringify(term)}`);
}

function checkKey(term: string, key: string): string {
  if (!KEY.test(key) || key.length > 316) throw parseFail(term, `invalid label key "${key}"`);
  return key;
}

function checkValue(term: string, value: string): string {
  if (!VALUE.test(value) || value.length > 63) throw parseFail(term, `invalid label value: "${value}"`);
  return value;
}

function parseLabelTerm(term: string): LabelReq {
  let m = /^(\S+)\s+(in|notin)\s*\((.*)\)$/.exec(term);
  if (m) {
    const values = m[3]!.split(",").map((v) => checkValue(term, v.trim()));
    return { op: m[2] === "in" ? "in" : "notin", key: checkKey(term, m[1]!), values };
  }
  m = /^!\s*(\S+)$/.exec(term);
  if (m) return { op: "notexists", key: checkKey(term, m[1]!) };
  m = /^([^=!<>\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(term);
  if (m) {
    return { op: m[2] === "!=" ? "neq" : "eq", key: checkKey(term, m[1]!), value: checkValue(term, m[3]!) };
  }
  m = /^([^=!<>\s]+)\s*([<>])\s*(-?\d+)$/.exec(term);
  if (m) return { op: m[2] === ">" ? "gt" : "lt", key: checkKey(term, m[1]!), value: Number(m[3]) };
  m = /^([^=!<>\s()]+)$/.exec(term);
  if (m) return { op: "exists", key: checkKey(term, m[1]!) };
  throw parseFail(term, "found unexpected syntax");
}

/** Throws a 400 KubeApiError on a malformed selector. Empty selects everything. */
export function parseLabelSelector(selector: string | null | undefined): Matcher {
  if (selector === null || selector === undefined || selector.trim() === "") return () => true;
  const reqs = splitTerms(selector).map((t) => {
    if (t === "") throw parseFail(selector, "empty requirement");
    return parseLabelTerm(t);
  });
  return (o) => {
    const labels = o.metadata.labels ?? {};
    return reqs.every((r) => {
      const has = Object.hasOwn(labels, r.key);
      const v = labels[r.key];
      switch (r.op) {
        case "eq":
          return has && v === r.value;
        case "neq":
          return !has || v !== r.value;
        case "in":
          return has && r.values.includes(v!);
        case "notin":
          return !has || !r.values.includes(v!);
        case "exists":
          return has;
        case "notexists":
          return !has;
        case "gt":
        case "lt": {
          if (!has || !/^-?\d+$/.test(v!)) return false;
          return r.op === "gt" ? Number(v) > r.value : Number(v) < r.value;
        }
      }
    });
  };
}

/** Field getter for a selector label of this resource, or undefined if the real API would refuse it. */
function fieldGetter(res: ResourceDef, field: string): ((o: KubeObject) => string) | undefined {
  if (field === "metadata.name") return (o) => o.metadata.name ?? "";
  if (field === "metadata.namespace" && res.namespaced) return (o) => o.metadata.namespace ?? "";
  const g = res.fields[field];
  return g === undefined ? undefined : (o) => g(o) ?? "";
}

/** Throws a 400 KubeApiError ("field label not supported: X") for labels the real API does not index. */
export function parseFieldSelector(res: ResourceDef, selector: string | null | undefined): Matcher {
  if (selector === null || selector === undefined || selector.trim() === "") return () => true;
  const reqs = splitTerms(selector).map((term) => {
    const m = /^([^=!]+?)\s*(==|=|!=)\s*(.*)$/.exec(term);
    if (!m) throw badRequest(`invalid field selector: ${JSON.stringify(term)}`);
    const field = m[1]!.trim();
    const get = fieldGetter(res, field);
    if (get === undefined) throw badRequest(`field label not supported: ${field}`);
    return { get, neq: m[2] === "!=", value: m[3]!.trim() };
  });
  return (o) => reqs.every((r) => (r.get(o) === r.value) !== r.neq);
}
