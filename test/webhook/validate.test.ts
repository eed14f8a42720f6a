/**
 * /validate over real HTTPS: enabled Secrets kloak cannot serve are refused,
 * naming the key or annotation at fault and never a value.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { b64, fixtureSecrets, secretObject, secretReview, startWebhook, type Harness } from "./fixtures/harness.ts";

let h: Harness;
beforeAll(async () => {
  h = await startWebhook();
});
afterAll(() => h.stop());

const ENABLED = { "getkloak.io/enabled": "true" };
const GOOD = b64("sk_live_0123456789abcdef");

async function validate(body: Record<string, any>) {
  const { response } = await h.review("/validate", body);
  expect(response.uid).toBe(body.request.uid);
  expect(response.patch).toBeUndefined();
  return response;
}

describe("/validate", () => {
  test("an enabled Secret with a 5-byte value is denied, naming the key and not the value", async () => {
    const short = "s3krt";
    const response = await validate(secretReview(secretObject("api", { token: b64(short), ok: GOOD }, { labels: ENABLED })));
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(422);
    expect(response.status.reason).toBe("Invalid");
    expect(response.status.message).toStartWith(`kloak cannot serve secret "shop/api": key "token" is 5 bytes`);
    expect(response.status.message).not.toContain(`"ok"`);
    const everything = JSON.stringify(response) + JSON.stringify(h.logs);
    expect(everything).not.toContain(short);
    expect(everything).not.toContain(b64(short));
    expect(h.outcomes.at(-1)).toMatchObject({ path: "/validate", outcome: "denied" });
  });

  test("a 5000-byte value is denied naming the key (UPDATE too)", async () => {
    const big = "x".repeat(5000);
    const response = await validate(secretReview(secretObject("cert", { "tls.key": b64(big) }, { labels: ENABLED }), "UPDATE"));
    expect(response.allowed).toBe(false);
    expect(response.status.code).toBe(422);
    expect(response.status.message).toContain(`key "tls.key" is 5000 bytes`);
    expect(JSON.stringify(response)).not.toContain("xxxxxxxx");
  });

  test("bad hosts rules are denied naming the annotation", async () => {
    for (const [hosts, why] of [
      ["*.", "a wildcard must be"],
      ["https://x", "a rule is a host, not a URL"],
    ] as const) {
      const secret = secretObject("api", { token: GOOD }, { labels: ENABLED, annotations: { "getkloak.io/hosts": hosts } });
      const response = await validate(secretReview(secret));
      expect(response.allowed).toBe(false);
      expect(response.status.code).toBe(422);
      expect(response.status.message).toContain(`kloak cannot serve secret "shop/api": getkloak.io/hosts annotation: rule ${JSON.stringify(hosts)}`);
      expect(response.status.message).toContain(why);
    }
  });

  test("a good enabled Secret (data and stringData, hosts rules) is allowed", async () => {
    const secret = secretObject("api", { token: GOOD }, { labels: ENABLED, annotations: { "getkloak.io/hosts": "api.stripe.com, *.example.com" } });
    secret.stringData = { extra: "another-long-enough-value" };
    const response = await validate(secretReview(secret));
    expect(response.allowed).toBe(true);
    expect(response.status).toBeUndefined();
    expect(response.warnings).toBeUndefined();
    expect(h.outcomes.at(-1)).toMatchObject({ path: "/validate", outcome: "allowed" });
  });

  test("a Secret that is not enabled is allowed whatever it holds", async () => {
    const response = await validate(secretReview(secretObject("plain", { a: b64("x"), b: b64("y".repeat(5000)) }, { annotations: { "getkloak.io/hosts": "*." } })));
    expect(response.allowed).toBe(true);
    expect(response.warnings).toBeUndefined();
  });

  test("kloak's shadows are allowed", async () => {
    const shadow = secretObject("api-kloak", { token: b64("kloak:AB") }, { labels: { "getkloak.io/managed": "true", "getkloak.io/owner": "api", ...ENABLED } });
    expect((await validate(secretReview(shadow))).allowed).toBe(true);
  });

  test("an invalid enablement value is allowed with a warning", async () => {
    const response = await validate(secretReview(secretObject("api", { token: b64("abc") }, { labels: { "getkloak.io/enabled": "yes" } })));
    expect(response.allowed).toBe(true);
    expect(response.warnings).toEqual([
      `secret shop/api has getkloak.io/enabled="yes"; only "true" enables kloak, so kloak ignores it: set it to "true" or remove it`,
    ]);
  });

  test("DELETE is allowed (no object)", async () => {
    const response = await validate(secretReview(secretObject("api", { token: b64("abc") }, { labels: ENABLED }), "DELETE"));
    expect(response.allowed).toBe(true);
  });

  test("a Secret made with generateName is named by its prefix", async () => {
    const secret = secretObject("", { token: b64("abc") }, { labels: ENABLED });
    secret.metadata.generateName = "tok-";
    delete secret.metadata.name;
    const response = await validate(secretReview(secret));
    expect(response.status.message).toStartWith(`kloak cannot serve secret "shop/tok-*": `);
  });

  test("malformed reviews are 400 with a reason", async () => {
    const cases: [unknown, string][] = [
      [secretReview(null), "request.object is missing: "],
      [{ ...secretReview(secretObject("a", {})), apiVersion: "admission.k8s.io/v1beta1" }, "apiVersion must be"],
      [secretReview(secretObject("a", { k: 5 as unknown as string })), "request.object.data.k: expected string, got a number"],
      [secretReview(secretObject("a", {}), "CREATE", { kind: { group: "", version: "v1", kind: "ConfigMap" } }), "this endpoint reviews v1 Secrets"],
    ];
    for (const [body, reason] of cases) {
      const res = await h.post("/validate", body);
      expect(res.status).toBe(400);
      expect(await res.text()).toContain(reason);
      expect(h.outcomes.at(-1)).toMatchObject({ path: "/validate", outcome: "invalid" });
    }
  });

  test("a wrongly typed value is reported by its type, never echoed", async () => {
    const secret = secretObject("a", { k: GOOD }, { labels: ENABLED });
    secret.data.k = ["sentinel-value-in-array"];
    secret.type = 42;
    const res = await h.post("/validate", secretReview(secret));
    expect(res.status).toBe(400);
    const text = await res.text();
    expect(text).toContain("request.object.type: expected string, got a number");
    expect(text).not.toContain("sentinel");
    expect(text).not.toContain("42");
  });
});

describe("/validate and getkloak.io/keys", () => {
  test("limits apply to the named keys only: a DB Secret with port and user passes", async () => {
    const secret = secretObject("db", { password: GOOD, port: b64("5432"), user: b64("app") }, { labels: ENABLED, annotations: { "getkloak.io/keys": "password" } });
    expect((await validate(secretReview(secret))).allowed).toBe(true);
  });

  test("a TLS chain over 4 KB in a kubernetes.io/tls Secret passes: the key pair is never protected", async () => {
    const secret = { ...secretObject("tls", { "tls.crt": b64("c".repeat(9000)), "tls.key": b64("k".repeat(1700)), token: GOOD }, { labels: ENABLED }), type: "kubernetes.io/tls" };
    expect((await validate(secretReview(secret))).allowed).toBe(true);
  });

  test("an image-pull Secret cannot be enabled: the kubelet reads it, and its shadow would not be valid JSON", async () => {
    const pull = { ...secretObject("pull", { ".dockerconfigjson": b64('{"auths":{}}') }, { labels: ENABLED }), type: "kubernetes.io/dockerconfigjson" };
    const r = await validate(secretReview(pull));
    expect(r.allowed).toBe(false);
    expect(r.status.message).toContain("a kubernetes.io/dockerconfigjson Secret cannot be protected (image-pull Secrets are read by the kubelet");
  });

  test("naming tls.key of a kubernetes.io/tls Secret, or a key that does not exist, is denied saying why", async () => {
    const tls = { ...secretObject("tls", { "tls.crt": b64("c".repeat(900)), "tls.key": b64("k".repeat(900)) }, { labels: ENABLED, annotations: { "getkloak.io/keys": "tls.key" } }), type: "kubernetes.io/tls" };
    const r1 = await validate(secretReview(tls));
    expect(r1.allowed).toBe(false);
    expect(r1.status.message).toContain("getkloak.io/keys names tls.key of a kubernetes.io/tls Secret");
    const typo = secretObject("db", { password: GOOD }, { labels: ENABLED, annotations: { "getkloak.io/keys": "password, pw" } });
    const r2 = await validate(secretReview(typo));
    expect(r2.allowed).toBe(false);
    expect(r2.status.message).toContain('getkloak.io/keys names "pw", which the Secret does not have');
  });
});

describe("/validate with the namespaces the agent sees", () => {
  let v: Harness;
  const labels: Record<string, Record<string, string> | undefined> = { shop: { "getkloak.io/enabled": "true" }, plain: undefined };
  beforeAll(async () => {
    v = await startWebhook(fixtureSecrets(), {
      namespaces: async (name) => {
        if (name === "broken") throw new Error("connect ECONNREFUSED");
        return name in labels ? { name, labels: labels[name] } : null;
      },
    });
  });
  afterAll(() => v.stop());
  const review = async (ns: string) => (await v.review("/validate", secretReview(secretObject("api", { token: GOOD }, { labels: ENABLED }), "CREATE", { namespace: ns }))).response;

  test("an enabled Secret in an opted-in namespace is allowed", async () => {
    expect((await review("shop")).allowed).toBe(true);
  });

  test("an enabled Secret in a namespace that is not opted in is denied: its pods would get the real value", async () => {
    const r = await review("plain");
    expect(r.allowed).toBe(false);
    expect(r.status.code).toBe(403);
    expect(r.status.message).toContain("kubectl label namespace plain getkloak.io/enabled=true");
  });

  test("namespaces cannot be read: denied with a retry hint", async () => {
    const r = await review("broken");
    expect(r.allowed).toBe(false);
    expect(r.status.code).toBe(503);
  });

  test("an annotation alone no longer enables a Secret (the webhook does not select it; if called, it allows)", async () => {
    const r = (await v.review("/validate", secretReview(secretObject("api", { token: b64("s3krt") }, { annotations: ENABLED }), "CREATE", { namespace: "plain" }))).response;
    expect(r.allowed).toBe(true);
  });
});
