/**
 * Whether kloak can serve an enabled Kubernetes Secret: every protected value
 * must fit a placeholder and the hosts rules must parse. Which keys are
 * protected: those getkloak.io/keys names, else all of them; a
 * kubernetes.io/tls Secret's tls.crt and tls.key never (the workload uses the
 * key pair itself and never sends it in a TLS write, so a placeholder would
 * only break its TLS). Unprotected keys are copied into the shadow as they
 * are, and no limit applies to them. One function, used by the
 * shadow writer (an Event and no shadow) and the validating webhook (a denial),
 * so both say the same thing. Messages name keys and lengths, never values.
 */
import { parseRule, parseRuleList, RuleError, type Rule } from "../policy/rules.ts";
import { HOSTS, hostsText, KEYS, ON_VIOLATION, type Meta } from "../kube/contract.ts";
import { ACTIONS, type ViolationAction } from "../dataplane/refusals.ts";
import { huffmanProblem, VALUE_MAX, VALUE_MIN, valueShape } from "./placeholder.ts";

export interface SecretLike {
  metadata?: Meta;
  type?: string;
  /** base64 values, as the API serves them */
  data?: Record<string, string> | null;
  /** plain values (write-only field; merged into data by the API server) */
  stringData?: Record<string, string> | null;
}

export interface SecretProblem {
  /** the data key at fault; absent for problems of the whole Secret */
  key?: string;
  message: string;
}

export interface CheckedSecret {
  /** protected key -> raw value bytes */
  values: Map<string, Uint8Array>;
  /** keys not protected: the shadow holds their values as they are */
  passthrough: string[];
  /** null: the secret may go anywhere */
  rules: Rule[] | null;
  /** getkloak.io/on-violation; null: the agent's default */
  onViolation: ViolationAction | null;
  problems: SecretProblem[];
}

function decodeBase64(s: string): Uint8Array | undefined {
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(s) || s.length % 4 !== 0) return undefined;
  return Uint8Array.from(Buffer.from(s, "base64"));
}

export function lengthMessage(key: string, length: number): string {
  return (
    `key ${JSON.stringify(key)} is ${length} bytes; kloak serves values of ${VALUE_MIN} to ` +
    `${VALUE_MAX} bytes (the placeholder has the value's length): ` +
    (length < VALUE_MIN ? "use a longer value" : "split it") +
    `, or leave the key out of ${KEYS} (it is then copied into the shadow as it is)`
  );
}

/** Keys of a kubernetes.io/tls Secret the workload uses itself. */
export const TLS_PAIR = ["tls.crt", "tls.key"] as const;

/** The protected keys, or a problem (getkloak.io/keys naming keys the Secret lacks, or nothing left to protect). */
/** Secret types whose values the kubelet or the API server read, never the workload's TLS. */
const NOT_FOR_WORKLOADS: Record<string, string> = {
  "kubernetes.io/dockerconfigjson": "image-pull Secrets are read by the kubelet to pull images, not sent by your pod",
  "kubernetes.io/dockercfg": "image-pull Secrets are read by the kubelet to pull images, not sent by your pod",
  "kubernetes.io/service-account-token": "service account tokens are managed by Kubernetes; use a projected token instead",
};

function selectKeys(secret: SecretLike, keys: string[], problems: SecretProblem[]): Set<string> {
  const text = secret.metadata?.annotations?.[KEYS];
  const tls = secret.type === "kubernetes.io/tls";
  const other = secret.type ? NOT_FOR_WORKLOADS[secret.type] : undefined;
  if (other) {
    // Their shadow would not even pass the API server's validation (a placeholder is not JSON).
    problems.push({ message: `a ${secret.type} Secret cannot be protected (${other}): remove getkloak.io/enabled` });
    return new Set();
  }
  if (text === undefined) {
    const chosen = new Set(keys.filter((k) => !(tls && (TLS_PAIR as readonly string[]).includes(k))));
    if (chosen.size === 0 && keys.length > 0) {
      problems.push({
        message: tls
          ? `a kubernetes.io/tls Secret's tls.crt and tls.key are used by the workload itself and never sent in a TLS write, so kloak does not protect them and this Secret has nothing else: remove ${"getkloak.io/enabled"}, or add the keys to protect and name them in ${KEYS}`
          : "the Secret has no keys to protect",
      });
    }
    return chosen;
  }
  const named = [...new Set(text.split(",").map((k) => k.trim()).filter((k) => k !== ""))];
  const have = new Set(keys);
  const unknown = named.filter((k) => !have.has(k));
  if (unknown.length) {
    problems.push({
      message: `${KEYS} names ${unknown.map((k) => JSON.stringify(k)).join(", ")}, which the Secret does not have (it has ${keys.map((k) => JSON.stringify(k)).join(", ") || "no keys"}): fix the annotation`,
    });
  }
  if (tls) {
    const pair = named.filter((k) => (TLS_PAIR as readonly string[]).includes(k));
    if (pair.length) {
      problems.push({
        message: `${KEYS} names ${pair.join(" and ")} of a kubernetes.io/tls Secret: the workload uses its key pair itself (it is never sent in a TLS write), so a placeholder would only break its TLS; leave ${pair.length > 1 ? "them" : "it"} out`,
      });
    }
  }
  if (named.length === 0) problems.push({ message: `${KEYS} is empty: name the keys to protect, or remove the annotation to protect all` });
  return new Set(named.filter((k) => have.has(k)));
}

/** Parses the hosts annotation or label; a problem rather than an exception. */
function checkHosts(meta: Meta | undefined, problems: SecretProblem[]): Rule[] | null {
  const text = hostsText(meta);
  if (text === undefined) return null;
  const fromLabel = meta?.annotations?.[HOSTS] === undefined;
  try {
    // A label value cannot hold commas: it is one host.
    return fromLabel ? [parseRule(text)] : parseRuleList(text);
  } catch (e) {
    if (!(e instanceof RuleError)) throw e;
    problems.push({
      message: `${HOSTS} ${fromLabel ? "label" : "annotation"}: ${e.message}`,
    });
    return null;
  }
}

/** The keys kloak protects of a Secret with these keys (problems aside). */
export function protectedKeys(secret: SecretLike, keys: string[]): Set<string> {
  return selectKeys(secret, keys, []);
}

export function checkSecret(secret: SecretLike): CheckedSecret {
  const problems: SecretProblem[] = [];
  const values = new Map<string, Uint8Array>();
  const allKeys = [...new Set([...Object.keys(secret.data ?? {}), ...Object.keys(secret.stringData ?? {})])];
  const selected = selectKeys(secret, allKeys, problems);
  const passthrough = allKeys.filter((k) => !selected.has(k));
  // Only protected keys are decoded: an unprotected value (a 400 KB bundle) is copied, never looked at.
  for (const [key, b64] of Object.entries(secret.data ?? {})) {
    if (!selected.has(key)) continue;
    const bytes = decodeBase64(b64);
    if (bytes === undefined) {
      problems.push({ key, message: `key ${JSON.stringify(key)} is not valid base64` });
      continue;
    }
    values.set(key, bytes);
  }
  for (const [key, text] of Object.entries(secret.stringData ?? {})) if (selected.has(key)) values.set(key, new TextEncoder().encode(text));
  // Limits apply to protected keys only; the others are copied as they are.
  for (const [key, bytes] of values) {
    if (bytes.length < VALUE_MIN || bytes.length > VALUE_MAX) {
      problems.push({ key, message: lengthMessage(key, bytes.length) });
      continue;
    }
    const huffman = huffmanProblem(`key ${JSON.stringify(key)}`, valueShape(bytes));
    if (huffman !== undefined) problems.push({ key, message: huffman });
  }
  const rules = checkHosts(secret.metadata, problems);
  const action = secret.metadata?.annotations?.[ON_VIOLATION];
  let onViolation: ViolationAction | null = null;
  if (action !== undefined) {
    if ((ACTIONS as readonly string[]).includes(action)) onViolation = action as ViolationAction;
    else problems.push({ message: `${ON_VIOLATION} annotation ${JSON.stringify(action)}: use ${ACTIONS.join(", ")}` });
  }
  return { values, passthrough, rules, onViolation, problems };
}

/** One line for an Event or a webhook denial. */
export function describeProblems(problems: readonly SecretProblem[]): string {
  return problems.map((p) => p.message).join("; ");
}
