/**
 * Running an attack from inside a protected tree: `kloak exec` with one secret
 * (API_KEY, allowed where the test says) runs test/support/ossl_client.py,
 * which drives libssl the way code in the process could. The test then
 * asserts what every server received and what kloak reported; nothing here
 * ever prints the value.
 */
import { join } from "node:path";
import { buildHttpRequest, parseClientOutput, pythonPath } from "../support/clients.ts";
import { fakeSecret, occurrences, placeholderCount, runKloak, type Run } from "../support/kloak.ts";

export const OSSL_CLIENT = join(import.meta.dir, "..", "support", "ossl_client.py");

/** The request every attack writes: the placeholder in a header and in the body. */
export const REQUEST = buildHttpRequest({ host: "x", headers: { "X-Api-Key": "{{API_KEY}}" }, body: "k={{API_KEY}}" }).toString("latin1");

export interface AttackRun extends Run {
  /** the KEY=value lines the client printed */
  out: Record<string, string[]>;
}

export async function attack(o: {
  secret: string;
  steps: object[];
  /** --allow rules of API_KEY */
  allow?: string[];
  /** more kloak exec flags */
  flags?: string[];
  /** a wrapper in front of the client inside the tree (e.g. unshare) */
  wrap?: string[];
  env?: Record<string, string>;
}): Promise<AttackRun> {
  const args = ["exec", "--secret", `API_KEY=${o.secret}`];
  for (const a of o.allow ?? []) args.push("--allow", `API_KEY=${a}`);
  args.push(...(o.flags ?? []), "--", ...(o.wrap ?? []), pythonPath(), OSSL_CLIENT, JSON.stringify(o.steps));
  const r = await runKloak(args, { env: { KLOAK_TEST_REQUEST: REQUEST, ...o.env }, timeoutMs: 120_000 });
  return { ...r, out: parseClientOutput(r.stdout) };
}

/** How often the value and the placeholder occur in bytes some server or file received. */
export function count(bytes: Buffer | string, secret: string): { values: number; placeholders: number } {
  return { values: occurrences(bytes, secret), placeholders: placeholderCount(bytes) };
}

export { fakeSecret };

/** Steps of a client that connects to host:port with SNI, sets its fd, and handshakes. */
export function connectSteps(id: string, host: string, port: number, sni: string | null): object[] {
  return [
    { op: "tcp", id: `${id}.tcp`, host, port },
    { op: "ssl", id },
    { op: "set_fd", id, sock: `${id}.tcp` },
    ...(sni ? [{ op: "sni", id, name: sni }] : []),
    { op: "connect", id },
  ];
}
