import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createCa, issueServing, keyMatchesCert, parseCert, type CaBundle, type ServingCert } from "../../src/certs/authority.ts";
import { readCertDir, watchCertDir, type CertDirWatcher } from "../../src/certs/cert-manager.ts";
import type { Material } from "../../src/certs/material.ts";

let root: string;
let ca: CaBundle;
let pairs: ServingCert[];
const watchers: CertDirWatcher[] = [];

beforeAll(async () => {
  root = mkdtempSync(join(tmpdir(), "kloak-certdir-"));
  ca = await createCa();
  pairs = await Promise.all([0, 1, 2].map(() => issueServing(ca, ["kloak-webhook.kloak.svc"])));
});
afterAll(() => {
  for (const w of watchers) w.stop();
  rmSync(root, { recursive: true, force: true });
});

/** A Secret volume as kubelet lays it out: files are symlinks through `..data`, which points at a timestamped directory. */
class KubeletVolume {
  private gen = 0;
  constructor(readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }
  publish(files: Record<string, string>): void {
    const prev = this.gen > 0 ? `..gen_${this.gen}` : undefined;
    const name = `..gen_${++this.gen}`;
    mkdirSync(join(this.dir, name));
    for (const [f, content] of Object.entries(files)) writeFileSync(join(this.dir, name, f), content);
    // kubelet's atomic writer: a temporary symlink renamed over ..data.
    symlinkSync(name, join(this.dir, "..data_tmp"));
    renameSync(join(this.dir, "..data_tmp"), join(this.dir, "..data"));
    for (const f of Object.keys(files)) {
      try {
        symlinkSync(join("..data", f), join(this.dir, f));
      } catch {
        // already linked through ..data
      }
    }
    if (prev) rmSync(join(this.dir, prev), { recursive: true, force: true });
  }
}

function files(p: ServingCert, withCa = true): Record<string, string> {
  return { "tls.crt": p.certPem, "tls.key": p.keyPem, ...(withCa ? { "ca.crt": ca.certPem } : {}) };
}

async function waitFor(cond: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error("timed out waiting");
    await Bun.sleep(10);
  }
}

describe("watchCertDir", () => {
  test(
    "follows kubelet's ..data symlink swaps",
    async () => {
      const vol = new KubeletVolume(join(root, "kubelet"));
      vol.publish(files(pairs[0]!));
      const seen: Material[] = [];
      const w = watchCertDir(vol.dir, (m) => seen.push(m), { intervalMs: 20 });
      watchers.push(w);
      await waitFor(() => seen.length === 1);
      expect(seen[0]!.certPem).toBe(pairs[0]!.certPem);
      expect(seen[0]!.caPem).toBe(ca.certPem);
      expect(seen[0]!.notAfter.getTime()).toBe(pairs[0]!.notAfter.getTime());

      vol.publish(files(pairs[1]!));
      await waitFor(() => seen.length === 2);
      expect(seen[1]!.certPem).toBe(pairs[1]!.certPem);
      expect(seen[1]!.keyPem).toBe(pairs[1]!.keyPem);

      // Unchanged content is not delivered again.
      await Bun.sleep(100);
      expect(seen).toHaveLength(2);
      expect(w.current()?.certPem).toBe(pairs[1]!.certPem);
      w.stop();
    },
    30_000,
  );

  test(
    "rapid swaps while polling: every delivered pair is consistent",
    async () => {
      const vol = new KubeletVolume(join(root, "rapid"));
      vol.publish(files(pairs[0]!));
      const seen: Material[] = [];
      const w = watchCertDir(vol.dir, (m) => seen.push(m), { intervalMs: 1 });
      watchers.push(w);
      await waitFor(() => seen.length === 1);
      for (let i = 0; i < 150; i++) {
        vol.publish(files(pairs[i % 3]!));
        await w.poll();
      }
      w.stop();
      expect(seen.length).toBeGreaterThan(10);
      for (const m of seen) expect(keyMatchesCert(m.certPem, m.keyPem)).toBe(true);
    },
    30_000,
  );

  test(
    "a half-written pair in a plain directory is ignored until it is whole",
    async () => {
      const dir = join(root, "plain");
      mkdirSync(dir);
      writeFileSync(join(dir, "tls.crt"), pairs[0]!.certPem);
      writeFileSync(join(dir, "tls.key"), pairs[0]!.keyPem);
      const seen: Material[] = [];
      const logs: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
      // Long interval: the test drives polls itself.
      const w = watchCertDir(dir, (m) => seen.push(m), { intervalMs: 60_000, log: (level, msg, fields) => logs.push({ level, msg, fields }) });
      watchers.push(w);
      await waitFor(() => seen.length === 1);
      expect(seen[0]!.caPem).toBe("");

      // New certificate written, key not yet.
      writeFileSync(join(dir, "tls.crt"), pairs[1]!.certPem);
      expect(await w.poll()).toBe(false);
      // Key half written.
      writeFileSync(join(dir, "tls.key"), pairs[1]!.keyPem.slice(0, 60));
      expect(await w.poll()).toBe(false);
      // Certificate truncated mid-write.
      writeFileSync(join(dir, "tls.crt"), pairs[1]!.certPem.slice(0, 200));
      writeFileSync(join(dir, "tls.key"), pairs[1]!.keyPem);
      expect(await w.poll()).toBe(false);
      expect(seen).toHaveLength(1);
      expect(w.current()?.certPem).toBe(pairs[0]!.certPem);
      const warned = logs.filter((l) => l.level === "warn");
      expect(warned.length).toBeGreaterThanOrEqual(3);
      for (const l of logs) expect(JSON.stringify(l)).not.toContain("PRIVATE KEY");
      for (const l of logs) expect(JSON.stringify(l)).not.toContain(pairs[1]!.keyPem.split("\n")[1]!.slice(0, 40));

      writeFileSync(join(dir, "tls.crt"), pairs[1]!.certPem);
      expect(await w.poll()).toBe(true);
      expect(seen).toHaveLength(2);
      expect(parseCert(seen[1]!.certPem).fingerprint).toBe(parseCert(pairs[1]!.certPem).fingerprint);
      expect(keyMatchesCert(seen[1]!.certPem, seen[1]!.keyPem)).toBe(true);
      w.stop();
    },
    30_000,
  );

  test("readCertDir says which file is missing or wrong", async () => {
    const dir = join(root, "empty");
    mkdirSync(dir);
    await expect(readCertDir(dir)).rejects.toThrow("tls.crt");
    writeFileSync(join(dir, "tls.crt"), pairs[0]!.certPem);
    await expect(readCertDir(dir)).rejects.toThrow("tls.key");
    writeFileSync(join(dir, "tls.key"), pairs[1]!.keyPem);
    await expect(readCertDir(dir)).rejects.toThrow("is not the private key");
    writeFileSync(join(dir, "tls.key"), pairs[0]!.keyPem);
    writeFileSync(join(dir, "ca.crt"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    await expect(readCertDir(dir)).rejects.toThrow("ca.crt");
    writeFileSync(join(dir, "ca.crt"), ca.certPem);
    const m = await readCertDir(dir);
    expect(m.certPem).toBe(pairs[0]!.certPem);
    expect(m.caPem).toBe(ca.certPem);
  });
});
