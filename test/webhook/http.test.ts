/**
 * The webhook's HTTP surface over real HTTPS: TLS verified against the test CA,
 * malformed requests answered 400/413/415 with a reason, internal failures
 * turned into denials, and random garbage never a 500.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { webhookApp, type WebhookOutcome } from "../../src/webhook/app.ts";
import { testCerts } from "../support/certs.ts";
import { clone, fixtureSecrets, loadPod, podReview, secretObject, secretReview, startWebhook, uid, type Harness } from "./fixtures/harness.ts";

let h: Harness;
beforeAll(async () => {
  h = await startWebhook();
});
afterAll(() => h.stop());

describe("TLS", () => {
  test("a client trusting the test CA gets a review", async () => {
    const res = await h.post("/mutate", podReview(loadPod()));
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toStartWith("application/json");
    const review = (await res.json()) as Record<string, any>;
    expect(review.apiVersion).toBe("admission.k8s.io/v1");
    expect(review.kind).toBe("AdmissionReview");
    expect(review.response.allowed).toBe(true);
  });

  test("a client without the CA cannot connect", async () => {
    let error: unknown;
    try {
      await fetch(h.url + "/mutate", {
        method: "POST",
        body: JSON.stringify(podReview(loadPod())),
        headers: { "content-type": "application/json" },
        signal: AbortSignal.timeout(10_000),
      });
    } catch (e) {
      error = e;
    }
    expect(error).toBeDefined();
    expect(String((error as { code?: string }).code ?? error)).toMatch(/CERT|certificate|SELF_SIGNED|UNABLE_TO/i);
  });
});

describe("malformed requests", () => {
  test("not JSON: 400, and the parser's words (which quote the body) are not echoed", async () => {
    const res = await h.post("/mutate", `{"apiVersion": "admission.k8s.io/v1", "request": {"object": hunter2-secret}}`, { raw: true });
    expect(res.status).toBe(400);
    const text = await res.text();
    expect(text).toContain("request body is not JSON");
    expect(text).not.toContain("hunter2");
    expect(h.outcomes.at(-1)).toMatchObject({ path: "/mutate", outcome: "invalid" });
  });

  test("missing request.object: 400 saying so", async () => {
    const body = podReview(loadPod());
    delete body.request.object;
    const res = await h.post("/mutate", body);
    expect(res.status).toBe(400);
    expect(await res.text()).toStartWith("request.object is missing: a CREATE review must carry the Pod");
  });

  test("wrong apiVersion: 400", async () => {
    const res = await h.post("/mutate", { ...podReview(loadPod()), apiVersion: "admission.k8s.io/v1beta1" });
    expect(res.status).toBe(400);
    expect(await res.text()).toContain(`apiVersion must be "admission.k8s.io/v1"`);
  });

  test("wrong kind of review or object: 400 naming the path", async () => {
    const cases: [Record<string, any>, string][] = [
      [{ ...podReview(loadPod()), kind: "Pod" }, `kind must be "AdmissionReview"`],
      [podReview(loadPod(), { uid: 7 }), "request.uid: expected string, got a number"],
      [podReview(loadPod(), { kind: { group: "", version: "v1", kind: "Secret" } }), "this endpoint reviews v1 Pods"],
      [podReview({ ...loadPod(), spec: { volumes: "nope" } }), "request.object.spec.volumes: expected array, got a string"],
      [podReview(loadPod(), { namespace: null, object: { ...loadPod(), metadata: {} } }), "request.namespace is missing"],
    ];
    for (const [body, reason] of cases) {
      const res = await h.post("/mutate", body);
      expect(res.status).toBe(400);
      expect(await res.text()).toContain(reason);
    }
  });

  test("not application/json: 415", async () => {
    for (const type of ["text/plain", "application/x-www-form-urlencoded", "application/jsonx"]) {
      const res = await h.post("/mutate", podReview(loadPod()), { contentType: type });
      expect(res.status).toBe(415);
      expect(await res.text()).toContain("content-type must be application/json");
    }
    const ok = await h.post("/mutate", podReview(loadPod()), { contentType: "application/json; charset=utf-8" });
    expect(ok.status).toBe(200);
  });

  test("a body over 3 MiB: 413; exactly 3 MiB is read", async () => {
    const review = podReview(loadPod());
    const base = JSON.stringify(review).length;
    const padded = (n: number) => {
      const r = clone(review);
      r.request.object.metadata.annotations.padding = "p".repeat(n - base - `,"padding":""`.length);
      return JSON.stringify(r);
    };
    const atLimit = padded(3 * 1024 * 1024);
    expect(atLimit.length).toBe(3 * 1024 * 1024);
    expect((await h.post("/mutate", atLimit, { raw: true })).status).toBe(200);
    const over = await h.post("/mutate", padded(3 * 1024 * 1024 + 1), { raw: true });
    expect(over.status).toBe(413);
    expect(await over.text()).toContain("request body is over 3145728 bytes");
    expect(h.outcomes.at(-1)).toMatchObject({ path: "/mutate", outcome: "invalid" });
  });

  test("a streamed body over 3 MiB (no content-length): 413", async () => {
    const chunk = new Uint8Array(256 * 1024).fill(0x20);
    let sent = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(ctl) {
        if (sent >= 16) return ctl.close();
        sent++;
        ctl.enqueue(chunk);
      },
    });
    const res = await fetch(h.url + "/validate", {
      method: "POST",
      body,
      headers: { "content-type": "application/json" },
      tls: { ca: h.ca },
      signal: AbortSignal.timeout(10_000),
    });
    expect(res.status).toBe(413);
  });

  test("other methods: 405; other paths: 404", async () => {
    const get = await fetch(h.url + "/mutate", { tls: { ca: h.ca }, signal: AbortSignal.timeout(10_000) });
    expect(get.status).toBe(405);
    expect(get.headers.get("allow")).toBe("POST");
    const other = await h.post("/admit", podReview(loadPod()));
    expect(other.status).toBe(404);
  });
});

describe("internal failures", () => {
  test("a lookup that throws: HTTP 200, denied with a generic message, logged, counted as error", async () => {
    const { ca, cert, key } = await testCerts();
    const outcomes: WebhookOutcome[] = [];
    const logs: string[] = [];
    const app = webhookApp({
      secrets: {
        get: () => {
          throw new Error("cache exploded");
        },
        synced: () => true,
      },
      onRequest: (_path, outcome) => outcomes.push(outcome),
      log: (level, msg, fields) => logs.push(`${level} ${msg} ${JSON.stringify(fields)}`),
    });
    const server = Bun.serve({ port: 0, hostname: "127.0.0.1", tls: { cert, key }, fetch: app.fetch });
    try {
      const body = podReview(loadPod());
      const res = await fetch(`https://127.0.0.1:${server.port}/mutate`, {
        method: "POST",
        body: JSON.stringify(body),
        headers: { "content-type": "application/json" },
        tls: { ca },
        signal: AbortSignal.timeout(10_000),
      });
      expect(res.status).toBe(200);
      const { response } = (await res.json()) as Record<string, any>;
      expect(response.uid).toBe(body.request.uid);
      expect(response.allowed).toBe(false);
      expect(response.status.code).toBe(500);
      expect(response.status.message).not.toContain("cache exploded");
      expect(outcomes).toEqual(["error"]);
      expect(logs.some((l) => l.startsWith("error ") && l.includes("cache exploded"))).toBe(true);
    } finally {
      await server.stop(true);
    }
  });

  test("throwing metrics and log callbacks do not change the answer", async () => {
    const app = webhookApp({
      secrets: fixtureSecrets(),
      onRequest: () => {
        throw new Error("metrics down");
      },
      log: () => {
        throw new Error("log down");
      },
    });
    const body = podReview(loadPod());
    const res = await app.request("/mutate", { method: "POST", body: JSON.stringify(body), headers: { "content-type": "application/json" } });
    expect(res.status).toBe(200);
    expect(((await res.json()) as Record<string, any>).response.patchType).toBe("JSONPatch");
  });

  test("metrics see each request once with its duration", async () => {
    const before = h.outcomes.length;
    await h.post("/validate", secretReview(secretObject("x", {})));
    expect(h.outcomes.length).toBe(before + 1);
    const last = h.outcomes.at(-1)!;
    expect(last.path).toBe("/validate");
    expect(last.outcome).toBe("allowed");
    expect(last.seconds).toBeGreaterThanOrEqual(0);
    expect(last.seconds).toBeLessThan(5);
  });
});

// --- fuzz ----------------------------------------------------------------------

/** Deterministic PRNG (mulberry32) so a failure replays. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Every [container, key] pair in the document (containers are objects and arrays). */
function slots(doc: Json): [Json[] | { [k: string]: Json }, string | number][] {
  const out: [Json[] | { [k: string]: Json }, string | number][] = [];
  const walk = (x: Json) => {
    if (Array.isArray(x)) x.forEach((v, i) => (out.push([x, i]), walk(v)));
    else if (x !== null && typeof x === "object") for (const [k, v] of Object.entries(x)) out.push([x, k]), walk(v);
  };
  walk(doc);
  return out;
}

const WEIRD: Json[] = [null, 0, -1, 1.5, true, false, "", "x", "getkloak.io/enabled", [], [null], {}, { name: 5 }, "db-credentials"];

function mutateOnce(doc: Json, r: () => number): void {
  const all = slots(doc);
  if (all.length === 0) return;
  const [parent, key] = all[Math.floor(r() * all.length)]!;
  const action = r();
  if (action < 0.3) {
    if (Array.isArray(parent)) parent.splice(key as number, 1);
    else delete parent[key as string];
  } else {
    const value = WEIRD[Math.floor(r() * WEIRD.length)]!;
    (parent as Record<string | number, Json>)[key] = structuredClone(value);
  }
}

describe("fuzz", () => {
  test("200 random mutations of the fixture reviews: every answer is 200 or 400, never an internal error", async () => {
    const r = rng(0x6b6c6f61);
    const bases = {
      "/mutate": podReview(loadPod()) as Json,
      "/validate": secretReview(
        secretObject("api", { token: "c2tfbGl2ZV8wMTIzNDU2Nzg5", short: "YWJj" }, { labels: { "getkloak.io/enabled": "true" }, annotations: { "getkloak.io/hosts": "api.example.com" } }),
      ) as Json,
    };
    const statuses = new Map<number, number>();
    const before = h.outcomes.length;
    for (let i = 0; i < 200; i++) {
      const path = i % 4 === 3 ? "/validate" : "/mutate";
      const doc = structuredClone(bases[path]) as { [k: string]: Json };
      (doc.request as { [k: string]: Json }).uid = uid();
      const edits = 1 + Math.floor(r() * 4);
      for (let j = 0; j < edits; j++) mutateOnce(doc, r);
      const res = await h.post(path, doc);
      const text = await res.text();
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
      if (res.status !== 200 && res.status !== 400) throw new Error(`mutation ${i}: HTTP ${res.status}: ${text}`);
      if (res.status === 200) {
        const review = JSON.parse(text);
        expect(review.response.uid).toBe((doc.request as { uid: string }).uid);
        expect(typeof review.response.allowed).toBe("boolean");
      } else {
        expect(text.trim().length).toBeGreaterThan(0);
      }
    }
    const outcomes = h.outcomes.slice(before).map((o) => o.outcome);
    expect(outcomes).toHaveLength(200);
    expect(outcomes).not.toContain("error");
    // the mutations reach both kinds of answer
    expect(statuses.get(200) ?? 0).toBeGreaterThan(10);
    expect(statuses.get(400) ?? 0).toBeGreaterThan(10);
  });
});
