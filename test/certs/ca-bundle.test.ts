import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import * as k8s from "@kubernetes/client-node";
import { createCa } from "../../src/certs/authority.ts";
import { caBundlePatch, patchCaBundle, type AdmissionApi } from "../../src/certs/ca-bundle.ts";
import { startKubeApiServer } from "../support/kube-api-server.ts";

type Api = Awaited<ReturnType<typeof startKubeApiServer>>;

const GROUP = "admissionregistration.k8s.io/v1";
const MUT = "kloak";
const VAL = "kloak-validate";
const b64 = (s: string) => Buffer.from(s).toString("base64");

let api: Api;
let admission: k8s.AdmissionregistrationV1Api;

function webhook(name: string, caBundle?: string) {
  return {
    name,
    admissionReviewVersions: ["v1"],
    sideEffects: "None",
    clientConfig: { service: { name: "kloak-webhook", namespace: "kloak", path: `/${name}`, port: 443 }, ...(caBundle ? { caBundle } : {}) },
  };
}

function seed() {
  api.create({
    apiVersion: GROUP,
    kind: "MutatingWebhookConfiguration",
    metadata: { name: MUT },
    webhooks: [webhook("pods.getkloak.io", b64("old ca")), webhook("secrets.getkloak.io")],
  });
  api.create({ apiVersion: GROUP, kind: "ValidatingWebhookConfiguration", metadata: { name: VAL }, webhooks: [webhook("validate.getkloak.io")] });
}

interface Config {
  webhooks?: { name: string; clientConfig?: { caBundle?: string } }[];
}
const bundles = (kind: string, name: string) => ((api.get(kind, undefined, name) as unknown as Config).webhooks ?? []).map((w) => [w.name, w.clientConfig?.caBundle]);
const patches = () => api.requests.filter((r) => r.method === "PATCH");

beforeEach(async () => {
  api = await startKubeApiServer();
  admission = api.kubeConfig().makeApiClient(k8s.AdmissionregistrationV1Api);
});
afterEach(async () => {
  await api.stop();
});

describe("caBundlePatch", () => {
  test("guards each changed webhook with a test of its name and uses add or replace as needed", () => {
    const ops = caBundlePatch({ webhooks: [webhook("a", "eA==") as never, webhook("b", "Y2E=") as never, webhook("c") as never] }, "Y2E=");
    expect(ops).toEqual([
      { op: "test", path: "/webhooks/0/name", value: "a" },
      { op: "replace", path: "/webhooks/0/clientConfig/caBundle", value: "Y2E=" },
      { op: "test", path: "/webhooks/2/name", value: "c" },
      { op: "add", path: "/webhooks/2/clientConfig/caBundle", value: "Y2E=" },
    ]);
    expect(caBundlePatch({ webhooks: [webhook("b", "Y2E=") as never] }, "Y2E=")).toEqual([]);
    expect(caBundlePatch({}, "Y2E=")).toEqual([]);
  });
});

describe("patchCaBundle", () => {
  test(
    "patches every webhook of both configurations with one JSON patch each; a second call sends nothing",
    async () => {
      seed();
      const ca = await createCa();
      const res = await patchCaBundle(admission, { mutating: MUT, validating: VAL, caPem: ca.certPem });
      expect(res.patched).toEqual([`MutatingWebhookConfiguration/${MUT}`, `ValidatingWebhookConfiguration/${VAL}`]);
      expect(bundles("MutatingWebhookConfiguration", MUT)).toEqual([
        ["pods.getkloak.io", b64(ca.certPem)],
        ["secrets.getkloak.io", b64(ca.certPem)],
      ]);
      expect(bundles("ValidatingWebhookConfiguration", VAL)).toEqual([["validate.getkloak.io", b64(ca.certPem)]]);
      expect(patches()).toHaveLength(2);
      for (const p of patches()) expect(p.contentType).toContain("application/json-patch+json");

      const again = await patchCaBundle(admission, { mutating: MUT, validating: VAL, caPem: ca.certPem });
      expect(again.patched).toEqual([]);
      expect(patches()).toHaveLength(2);
    },
    30_000,
  );

  test(
    "only the configuration that differs is patched",
    async () => {
      seed();
      const ca = await createCa();
      await patchCaBundle(admission, { mutating: MUT, validating: VAL, caPem: ca.certPem });
      const v = api.get("ValidatingWebhookConfiguration", undefined, VAL)!;
      api.update({ ...v, webhooks: [webhook("validate.getkloak.io", b64("stale"))] });
      const before = patches().length;
      const res = await patchCaBundle(admission, { mutating: MUT, validating: VAL, caPem: ca.certPem });
      expect(res.patched).toEqual([`ValidatingWebhookConfiguration/${VAL}`]);
      expect(patches().length).toBe(before + 1);
    },
    30_000,
  );

  test(
    "a missing configuration is named with a pointer to deploy/, after the other one was patched",
    async () => {
      seed();
      api.delete("ValidatingWebhookConfiguration", undefined, VAL);
      const ca = await createCa();
      const err = await patchCaBundle(admission, { mutating: MUT, validating: VAL, caPem: ca.certPem }).catch((e: Error) => e);
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toContain(`ValidatingWebhookConfiguration ${VAL} not found`);
      expect((err as Error).message).toContain("deploy/");
      expect((err as Error).message).not.toContain("MutatingWebhookConfiguration");
      expect(bundles("MutatingWebhookConfiguration", MUT).every(([, b]) => b === b64(ca.certPem))).toBe(true);

      api.delete("MutatingWebhookConfiguration", undefined, MUT);
      const both = await patchCaBundle(admission, { mutating: MUT, validating: VAL, caPem: ca.certPem }).catch((e: Error) => e);
      expect((both as Error).message).toContain(`MutatingWebhookConfiguration ${MUT} and ValidatingWebhookConfiguration ${VAL} not found`);
    },
    30_000,
  );

  test(
    "webhooks reordered between read and patch: the test op fails (422), we re-read and patch the right entries",
    async () => {
      seed();
      const ca = await createCa();
      let reordered = false;
      const racing: AdmissionApi = {
        readMutatingWebhookConfiguration: (p) => admission.readMutatingWebhookConfiguration(p),
        readValidatingWebhookConfiguration: (p) => admission.readValidatingWebhookConfiguration(p),
        patchValidatingWebhookConfiguration: (p, o) => admission.patchValidatingWebhookConfiguration(p, o),
        patchMutatingWebhookConfiguration: (p, o) => {
          if (!reordered) {
            reordered = true;
            const m = api.get("MutatingWebhookConfiguration", undefined, MUT)!;
            // Someone else swaps the entries and gives the (now first) one a bundle of their own.
            api.update({ ...m, webhooks: [webhook("secrets.getkloak.io", b64("theirs")), webhook("pods.getkloak.io", b64("old ca"))] });
          }
          return admission.patchMutatingWebhookConfiguration(p, o);
        },
      };
      const res = await patchCaBundle(racing, { mutating: MUT, validating: VAL, caPem: ca.certPem });
      expect(res.patched).toContain(`MutatingWebhookConfiguration/${MUT}`);
      expect(bundles("MutatingWebhookConfiguration", MUT)).toEqual([
        ["secrets.getkloak.io", b64(ca.certPem)],
        ["pods.getkloak.io", b64(ca.certPem)],
      ]);
      const mutPatches = patches().filter((p) => p.path.includes("mutatingwebhookconfigurations"));
      expect(mutPatches).toHaveLength(2);
    },
    30_000,
  );
});
