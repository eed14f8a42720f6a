/**
 * Whether kloak can serve an enabled Kubernetes Secret: every value must fit
 * a placeholder and the hosts rules must parse. One function, used by the
 * shadow writer (an Event and no shadow) and the validating webhook (a denial),
 * so both say the same thing. Messages name keys and lengths, never values.
 */
import { parseRule, parseRuleList, RuleError, type Rule } from "../policy/rules.ts";
import { HOSTS, hostsText, ON_VIOLATION, type Meta } from "../kube/contract.ts";
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
  /** key -> raw value bytes */
  values: Map<string, Uint8Array>;
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
    (length < VALUE_MIN ? "use a longer value" : "split it or leave this Secret unprotected")
  );
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

export function checkSecret(secret: SecretLike): CheckedSecret {
  const problems: SecretProblem[] = [];
  const values = new Map<string, Uint8Array>();
  for (const [key, b64] of Object.entries(secret.data ?? {})) {
    const bytes = decodeBase64(b64);
    if (bytes === undefined) {
      problems.push({ key, message: `key ${JSON.stringify(key)} is not valid base64` });
      continue;
    }
    values.set(key, bytes);
  }
  for (const [key, text] of Object.entries(secret.stringData ?? {})) values.set(key, new TextEncoder().encode(text));
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
  return { values, rules, onViolation, problems };
}

/** One line for an Event or a webhook denial. */
export function describeProblems(problems: readonly SecretProblem[]): string {
  return problems.map((p) => p.message).join("; ");
}
