/**
 * URL routing, discovery documents and small request/response helpers of the
 * kube-apiserver test double (see ../kube-api-server.ts).
 */
import type { KubeObject } from "../kube-api-server.ts";
import { findByPath, groupsServed, RESOURCES, type ResourceDef } from "./resources.ts";
import { badRequest, type KubeApiError } from "./status.ts";
import type { PropagationPolicy } from "./store.ts";

export type Reply = { code: number; json: unknown } | { code: number; text: string };

export function json(code: number, body: unknown): Reply {
  return { code, json: body };
}

export function statusReply(e: KubeApiError): Reply {
  return json(e.code, e.toStatus());
}

export interface Route {
  res: ResourceDef;
  namespace?: string; // from the URL
  name?: string;
  subresource?: string;
  watchPath: boolean; // legacy /watch/ prefix
}

/** Maps a URL path to a resource route; undefined if not served. */
export function route(pathname: string): Route | undefined {
  const segs = pathname.split("/").filter((s) => s !== "").map(decodeURIComponent);
  let group: string;
  let version: string;
  let rest: string[];
  if (segs[0] === "api" && segs.length >= 2) {
    group = "";
    version = segs[1]!;
    rest = segs.slice(2);
  } else if (segs[0] === "apis" && segs.length >= 3) {
    group = segs[1]!;
    version = segs[2]!;
    rest = segs.slice(3);
  } else return undefined;
  let watchPath = false;
  if (rest[0] === "watch") {
    watchPath = true;
    rest = rest.slice(1);
  }
  const res = (plural: string | undefined) => (plural === undefined ? undefined : findByPath(group, version, plural));
  // namespaces/NS/<namespaced plural>[/NAME[/SUB]]
  if (rest[0] === "namespaces" && rest.length >= 3) {
    const r = res(rest[2]);
    if (r !== undefined && r.namespaced && rest.length <= 5) {
      const out: Route = { res: r, namespace: rest[1]!, watchPath };
      if (rest[3] !== undefined) out.name = rest[3];
      if (rest[4] !== undefined) out.subresource = rest[4];
      return out;
    }
  }
  const r = res(rest[0]);
  if (r === undefined || rest.length > 3) return undefined;
  const out: Route = { res: r, watchPath };
  if (rest[1] !== undefined) {
    if (r.namespaced) return undefined; // /api/v1/secrets/NAME is not a path
    out.name = rest[1];
  }
  if (rest[2] !== undefined) out.subresource = rest[2];
  return out;
}

export function discovery(pathname: string, host: string): Reply | undefined {
  const p = pathname.replace(/\/+$/, "");
  if (p === "/version") {
    return json(200, {
      major: "1",
      minor: "33",
      gitVersion: "v1.33.0-kloak-test-double",
      gitCommit: "0000000000000000000000000000000000000000",
      gitTreeState: "clean",
      buildDate: "2025-01-01T00:00:00Z",
      goVersion: "go1.24",
      compiler: "gc",
      platform: "linux/amd64",
    });
  }
  if (p === "/healthz" || p === "/livez" || p === "/readyz") {
    return { code: 200, text: "ok" };
  }
  if (p === "/api") {
    return json(200, {
      kind: "APIVersions",
      versions: ["v1"],
      serverAddressByClientCIDRs: [{ clientCIDR: "0.0.0.0/0", serverAddress: host }],
    });
  }
  const groupJson = (g: string) => {
    const versions = groupsServed()
      .filter((x) => x.group === g)
      .map((x) => ({ groupVersion: `${g}/${x.version}`, version: x.version }));
    return { name: g, versions, preferredVersion: versions[0] };
  };
  if (p === "/apis") {
    const names = [...new Set(groupsServed().map((g) => g.group).filter((g) => g !== ""))];
    return json(200, { kind: "APIGroupList", apiVersion: "v1", groups: names.map(groupJson) });
  }
  const m = /^\/(?:api\/(v1)|apis\/([^/]+)(?:\/([^/]+))?)$/.exec(p);
  if (m === null) return undefined;
  const group = m[2] ?? "";
  const version = m[1] ?? m[3];
  if (version === undefined) {
    if (!groupsServed().some((g) => g.group === group)) return undefined;
    return json(200, { kind: "APIGroup", apiVersion: "v1", ...groupJson(group) });
  }
  const rs = RESOURCES.filter((r) => r.group === group && r.version === version);
  if (rs.length === 0) return undefined;
  const verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"];
  const resources: Record<string, unknown>[] = [];
  for (const r of rs) {
    resources.push({ name: r.plural, singularName: r.singular, namespaced: r.namespaced, kind: r.kind, verbs, shortNames: r.shortNames });
    if (r.statusSubresource) {
      resources.push({ name: `${r.plural}/status`, singularName: "", namespaced: r.namespaced, kind: r.kind, verbs: ["get", "patch", "update"] });
    }
  }
  return json(200, { kind: "APIResourceList", apiVersion: "v1", groupVersion: group === "" ? version : `${group}/${version}`, resources });
}

export function stripTypeMeta(o: KubeObject): Record<string, unknown> {
  const { apiVersion: _a, kind: _k, ...rest } = o;
  return rest;
}

export function parseBody(text: string): unknown {
  if (text.trim() === "") return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw badRequest(`the object provided is unrecognized or malformed: ${(e as Error).message}`);
  }
}

export function propagation(url: URL, body: unknown): PropagationPolicy | undefined {
  const b = (body ?? {}) as { propagationPolicy?: string; orphanDependents?: boolean };
  const p = url.searchParams.get("propagationPolicy") ?? b.propagationPolicy;
  if (p !== undefined && p !== null) {
    if (p !== "Background" && p !== "Foreground" && p !== "Orphan") {
      throw badRequest(`propagationPolicy: Unsupported value: "${p}"`);
    }
    return p;
  }
  const orphan = url.searchParams.get("orphanDependents") ?? b.orphanDependents;
  if (orphan === true || orphan === "true") return "Orphan";
  return undefined;
}

