/**
 * TEST DOUBLE of the Kubernetes API server (kube-apiserver), in-process, for
 * testing kloak's controllers with real @kubernetes/client-node clients.
 * It is not a Kubernetes API server and must never be mistaken for one.
 *
 * Implements (node:https on 127.0.0.1, random port, test PKI from ./certs.ts;
 * node:https rather than Bun.serve because Bun.serve holds a streamed
 * response's headers back until the first body chunk, which would leave a
 * quiet watch's client waiting for headers):
 *   - Resources, at the real paths (namespaced and all-namespaces):
 *     core v1 namespaces, secrets, pods (+ /status), events, services,
 *     configmaps; apps/v1 replicasets, deployments, statefulsets, daemonsets
 *     (+ /status); coordination.k8s.io/v1 leases; events.k8s.io/v1 events;
 *     admissionregistration.k8s.io/v1 mutating/validatingwebhookconfigurations;
 *     rbac.authorization.k8s.io/v1 clusterroles (stored, not enforced).
 *     Also /api, /apis, /api/v1, /apis/G/V discovery, /version, /healthz,
 *     /livez, /readyz.
 *   - Bearer-token auth: any non-empty token is accepted; a request without
 *     `Authorization: Bearer ...` gets 401 Status.
 *   - One global resourceVersion counter; uid, creationTimestamp, generation
 *     (bumped when anything outside metadata/status changes), generateName.
 *     No-op updates do not bump resourceVersion nor emit watch events.
 *   - Status errors with upstream reasons/codes/messages: NotFound 404
 *     (also for a missing namespace on create), AlreadyExists 409, Conflict
 *     409 (stale metadata.resourceVersion on PUT/PATCH, delete preconditions),
 *     BadRequest 400 (kind/apiVersion/name/namespace mismatch, bad
 *     selectors), Invalid 422 (failed JSON-patch op), 415 unknown patch type.
 *   - PATCH: application/json-patch+json (RFC 6902, fast-json-patch),
 *     application/merge-patch+json (RFC 7386). A patched object's
 *     metadata.resourceVersion is a precondition, as upstream.
 *   - PUT/PATCH on the main resource ignore .status for types with a status
 *     subresource; PUT/PATCH on /status change only .status.
 *   - DELETE returns the deleted object; DeleteOptions preconditions;
 *     propagationPolicy (query or body) Background/Foreground/Orphan, see GC.
 *   - LIST: `<Kind>List` with metadata.resourceVersion = current; items omit
 *     apiVersion/kind (as upstream); labelSelector (=, ==, !=, in, notin,
 *     exists, !exists, >, <) and fieldSelector (=, ==, !=) on
 *     metadata.name, metadata.namespace, plus per type: pods spec.nodeName,
 *     status.phase, ...; secrets type; events involvedObject.*, reason, type;
 *     namespaces status.phase. Other field labels: 400
 *     "field label not supported".
 *   - WATCH (?watch=true|1 or /watch/ paths): newline-delimited JSON events,
 *     streamed chunked, one write per event. resourceVersion absent/"0":
 *     synthetic ADDED for current objects, then live; resourceVersion=N:
 *     replay of every change after N from history, then live; N older than
 *     the last compact(): one ERROR event (Status 410 Expired, "too old
 *     resource version: N (M)") and a clean end. Selectors apply, and an
 *     object that stops (starts) matching is delivered as DELETED (ADDED),
 *     like the upstream watch cache. allowWatchBookmarks=true: a BOOKMARK with
 *     the current resourceVersion every bookmarkIntervalMs. timeoutSeconds=N
 *     ends the stream cleanly after N s.
 *   - Garbage collection by metadata.ownerReferences[].uid, recursive:
 *     a dependent whose owners are all gone is deleted; one that still has a
 *     live owner (or under Orphan) just loses the dangling reference.
 *     Deleting a Namespace deletes everything in it first.
 *   - pause(): every open connection is reset (a watch ends without the
 *     terminating chunk: clients see ECONNRESET) and every request gets 503
 *     ServiceUnavailable until resume(). Watches resumed afterwards from a
 *     resourceVersion still in history get the changes they missed.
 *
 * Approximates:
 *   - application/strategic-merge-patch+json is applied as a JSON merge patch:
 *     lists are replaced, not merged by key; $patch/$retainKeys directives
 *     are not understood.
 *   - GC runs synchronously right after the owner's deletion (upstream it is
 *     asynchronous, seconds later); Foreground is treated as Background
 *     (owner gone first, no foregroundDeletion finalizer).
 *   - Deletion is immediate: finalizers and deletionTimestamp/grace periods
 *     are not modelled. Namespaces are removed at once (no Terminating).
 *   - HTTP create resets .status of status-subresource types (pods get
 *     {phase: Pending}); no defaulting or validation of specs otherwise.
 *   - core/v1 and events.k8s.io/v1 Events are stored separately (upstream
 *     they are one resource seen through two versions).
 *   - LIST pages with limit/continue (kube-api/paging.ts: namespace/name
 *     order; the token holds the last key and the first page's
 *     resourceVersion, which every page reports; later pages show current
 *     objects, not the first page's snapshot; a token from before compact()
 *     gets 410 Expired). List options are validated as upstream
 *     (resourceVersionMatch needs resourceVersion and no continue; no
 *     resourceVersion with continue), then resourceVersion/Match are
 *     ignored: always the latest, paged even at resourceVersion "0" (as 1.33+
 *     does from its watch cache; older servers send everything at once).
 *     pagesServed records the options each page was asked with. Watch
 *     ignores sendInitialEvents / resourceVersionMatch.
 *   - dryRun=All is honoured (nothing stored) but returns the would-be object
 *     without a new resourceVersion.
 *
 *   - Admission (kube-api/admission.ts): HTTP POST (create) and PUT (update)
 *     go through the stored Mutating- then ValidatingWebhookConfigurations
 *     like kube-apiserver: rules, namespaceSelector, objectSelector (old or
 *     new object), AdmissionReview v1 over HTTPS verified against caBundle as
 *     <service>.<namespace>.svc (resolveService says where it listens),
 *     timeoutSeconds, failurePolicy, JSONPatch applied, upstream's messages.
 *     PATCH requests, direct store access, reinvocation and matchConditions
 *     are not admitted/modelled.
 *
 *   - Secret validation on HTTP create/update (kube-api/secret-types.ts):
 *     key names, 1 MiB total, the keys each built-in type requires (tls,
 *     dockerconfigjson as JSON, basic-auth, ssh-auth), immutable type; 422
 *     Invalid as upstream words it.
 *   - Watch lag (setWatchLag): events of a resource reach watchers late.
 *   - RBAC (option rbac, kube-api/rbac.ts): requests with the kubeconfig's
 *     token are authorized against the roles given (e.g. what
 *     deploy/base/rbac.yaml binds to ServiceAccount kloak/kloak); 403
 *     Forbidden worded as upstream, recorded in forbidden. Each such request
 *     is recorded in accesses (verb, group, resource/subresource, namespace,
 *     name), for unusedGrants(). Without the option, or with another token,
 *     anything is allowed.
 *
 * Does not do: server-side apply (application/apply-patch+yaml → 415),
 * managedFields, scale/exec/log/eviction subresources, protobuf or
 * table output, field validation, other resource types (404).
 *
 * Direct store access (create/get/list/update/delete) has the HTTP semantics
 * and throws KubeApiError (.code, .reason) where the HTTP API would answer
 * with a Status; it differs in that update() also writes .status, create()
 * keeps .status as given and ignores metadata.resourceVersion, and list()
 * returns objects with apiVersion/kind.
 *
 * kubeConfig() returns a plain KubeConfig equivalent to loading
 * kubeconfigPath; client-node 1.4.0 under Bun 1.4.5 verifies the server
 * against its caFile (checked by the selftest).
 */
import { KubeConfig } from "@kubernetes/client-node";
import { writeFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { createServer } from "node:https";
import type { AddressInfo, Socket } from "node:net";
import { join } from "node:path";
import { stringify as toYaml } from "yaml";
import { testCerts } from "./certs.ts";
import { findByApiVersionKind, findByKind, type ResourceDef } from "./kube-api/resources.ts";
import { discovery, json, parseBody, propagation, route, statusReply, stripTypeMeta, type Reply, type Route } from "./kube-api/routes.ts";
import { parseFieldSelector, parseLabelSelector } from "./kube-api/selectors.ts";
import {
  badRequest,
  KubeApiError,
  methodNotAllowed,
  notFound,
  resourceNotFound,
} from "./kube-api/status.ts";
import { Store, type WatchInfo, type WatchRequest } from "./kube-api/store.ts";
import { admit, type AdmissionCall, type ServiceResolver } from "./kube-api/admission.ts";
import { accessOf, authorize, type Access, type RbacPolicy } from "./kube-api/rbac.ts";
import { validateSecretObject } from "./kube-api/secret-types.ts";
import { page, validateListOptions, type Page } from "./kube-api/paging.ts";
export { describeAccess, grantsOf, policyFor, unusedGrants, type Access, type RbacPolicy } from "./kube-api/rbac.ts";

type DeleteOpts = NonNullable<Parameters<Store["delete"]>[3]>;

export { KubeApiError } from "./kube-api/status.ts";
export type { WatchInfo } from "./kube-api/store.ts";

export interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata: {
    name?: string;
    generateName?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: {
      apiVersion: string;
      kind: string;
      name: string;
      uid: string;
      controller?: boolean;
      blockOwnerDeletion?: boolean;
    }[];
    creationTimestamp?: string;
    deletionTimestamp?: string;
    generation?: number;
    [k: string]: unknown;
  };
  [k: string]: unknown;
}

export interface PageServed {
  resource: string;
  items: number;
  continued: boolean;
  resourceVersion?: string;
  resourceVersionMatch?: string;
  limit?: number;
}

export interface RecordedRequest {
  method: string;
  path: string;
  query: string;
  contentType?: string;
}

export interface KubeApiServer {
  /** https://127.0.0.1:PORT */
  url: string;
  /** PEM / path of the CA the serving certificate chains to. */
  ca: string;
  caFile: string;
  /** kubeconfig (YAML) pointing at url with caFile and a bearer token. */
  kubeconfigPath: string;
  /** Fresh KubeConfig (CA file + bearer token) for in-process clients. */
  kubeConfig(): KubeConfig;
  /** Direct store access; same semantics as HTTP (resourceVersion, watchers, GC). Throws KubeApiError. */
  create<T extends KubeObject>(obj: T): T & KubeObject;
  get(kind: string, namespace: string | undefined, name: string): KubeObject | undefined;
  list(kind: string, namespace?: string): KubeObject[];
  update<T extends KubeObject>(obj: T): T & KubeObject;
  delete(kind: string, namespace: string | undefined, name: string): boolean;
  /** core/v1 and events.k8s.io/v1 Events recorded so far, oldest first. */
  events(): KubeObject[];
  /** Every HTTP request seen, in arrival order. */
  requests: RecordedRequest[];
  /** Every admission webhook call made, in order. */
  admissionCalls: AdmissionCall[];
  /** Every LIST page served: resource, item count, whether it was a continuation, and the list options asked for. */
  pagesServed: PageServed[];
  /** Requests refused by the rbac option, as "403 message". */
  forbidden: string[];
  /** With the rbac option: every resource request made with the kubeconfig's token, as the authorizer saw it (refused ones marked). */
  accesses: Access[];
  /** Delay watch events of a resource (plural, or "*" for all) by ms from now on; 0 ends the lag. */
  setWatchLag(resource: string, ms: number): void;
  /** Open watch streams (e.g. to wait until an informer is connected). */
  openWatches(): WatchInfo[];
  /** Current global resourceVersion. */
  resourceVersion(): string;
  /** Reset every open watch and answer 503 until resume(). */
  pause(): void;
  resume(): void;
  /** Forget watch history: a watch from an older resourceVersion gets 410 Gone. */
  compact(): void;
  stop(): Promise<void>;
}

export interface KubeApiServerOptions {
  /** Interval of BOOKMARK events on watches with allowWatchBookmarks=true. Default 1000. */
  bookmarkIntervalMs?: number;
  /** Where admission webhooks' Services listen; without it a webhook call fails (service not found). */
  resolveService?: ServiceResolver;
  /**
   * RBAC for requests that carry the kubeconfig's token (the process under
   * test); other bearer tokens are cluster admins (the test itself).
   */
  rbac?: RbacPolicy;
}

const TOKEN = "kloak-test-token";
const JSON_HEADERS = { "content-type": "application/json" };

export async function startKubeApiServer(opts: KubeApiServerOptions = {}): Promise<KubeApiServer> {
  const certs = await testCerts();
  const bookmarkIntervalMs = opts.bookmarkIntervalMs ?? 1000;
  const store = new Store();
  const requests: RecordedRequest[] = [];
  let paused = false;

  /** Starts a watch stream on `res`; headers are flushed at once, each event is one write. */
  function serveWatch(req: IncomingMessage, res: ServerResponse, url: URL, r: Route): void {
    const q = url.searchParams;
    const labelSelector = parseLabelSelector(q.get("labelSelector"));
    const fieldSelector = parseFieldSelector(r.res, q.get("fieldSelector"));
    const rv = q.get("resourceVersion");
    if (rv !== null && rv !== "" && !/^\d+$/.test(rv)) {
      throw badRequest(`resourceVersion: Invalid value: "${rv}": must be an unsigned integer`);
    }
    const watchReq: WatchRequest = {
      labelSelector,
      fieldSelector,
      allowBookmarks: q.get("allowWatchBookmarks") === "true",
      bookmarkIntervalMs,
      query: url.search.replace(/^\?/, ""),
    };
    if (r.namespace !== undefined) watchReq.namespace = r.namespace;
    if (rv !== null) watchReq.resourceVersion = rv;
    const timeout = q.get("timeoutSeconds");
    if (timeout !== null && /^\d+$/.test(timeout)) watchReq.timeoutSeconds = Number(timeout);

    res.writeHead(200, JSON_HEADERS);
    res.flushHeaders();
    let done = false;
    // Watch lag (watchLagMs): every event and the end are delivered that much later, in order,
    // as a loaded API server or watch cache does; the store already holds the change.
    const lag = (fn: () => void) => {
      const ms = lagMs(r.res.plural);
      if (ms > 0) setTimeout(fn, ms);
      else fn();
    };
    const handle = store.watch(r.res, watchReq, {
      send(line) {
        lag(() => {
          if (!done) res.write(line);
        });
      },
      end(abrupt) {
        lag(() => {
          if (done) return;
          done = true;
          if (abrupt) res.socket?.destroy(); // no terminating chunk: the client sees a reset
          else res.end();
        });
      },
    });
    const gone = () => {
      done = true;
      handle.stop();
    };
    res.on("close", gone);
    req.on("close", () => {
      if (res.writableEnded || res.destroyed) gone();
    });
  }

  /** Everything except watches: returns the reply to send. */
  function dispatch(method: string, url: URL, r: Route, bodyText: string, contentType: string): Reply {
    const q = url.searchParams;
    const dryRun = q.getAll("dryRun").includes("All");
    const ns = r.res.namespaced ? r.namespace : undefined;

    if (r.subresource !== undefined) {
      if (r.subresource !== "status" || !r.res.statusSubresource || r.name === undefined) throw resourceNotFound();
      switch (method) {
        case "GET": {
          const o = store.get(r.res, ns, r.name);
          if (o === undefined) throw notFound(r.res, r.name);
          return json(200, o);
        }
        case "PUT":
          return json(200, store.update(r.res, ns, r.name, parseBody(bodyText) as KubeObject, { subresource: "status", dryRun }));
        case "PATCH":
          return json(200, store.patch(r.res, ns, r.name, contentType, bodyText, { subresource: "status", dryRun }));
        default:
          throw methodNotAllowed(method);
      }
    }

    if (r.name === undefined) {
      if (method === "GET" || method === "DELETE") {
        if (method === "GET") validateListOptions(q);
        const labels = parseLabelSelector(q.get("labelSelector"));
        const fields = parseFieldSelector(r.res, q.get("fieldSelector"));
        let items = store.list(r.res, ns, (o) => labels(o) && fields(o));
        if (method === "DELETE") {
          if (r.res.namespaced && ns === undefined) throw methodNotAllowed(method);
          const policy = propagation(url, parseBody(bodyText));
          const deleted: KubeObject[] = [];
          for (const o of items) {
            if (store.get(r.res, ns, o.metadata.name!) === undefined) continue; // collected meanwhile
            const dopts: DeleteOpts = { dryRun };
            if (policy !== undefined) dopts.propagationPolicy = policy;
            deleted.push(store.delete(r.res, ns, o.metadata.name!, dopts));
          }
          items = deleted;
        }
        const shown: Page = method === "GET" ? page(items, q, store.resourceVersion(), store.compactedAt()) : { items, resourceVersion: store.resourceVersion() };
        pagesServed.push({
          resource: r.res.plural,
          items: shown.items.length,
          continued: q.get("continue") !== null,
          resourceVersion: q.get("resourceVersion") ?? undefined,
          resourceVersionMatch: q.get("resourceVersionMatch") ?? undefined,
          limit: q.get("limit") !== null ? Number(q.get("limit")) : undefined,
        });
        return json(200, {
          kind: r.res.listKind,
          apiVersion: r.res.apiVersion,
          metadata: {
            resourceVersion: shown.resourceVersion,
            ...(shown.continue ? { continue: shown.continue, remainingItemCount: shown.remainingItemCount } : {}),
          },
          items: shown.items.map(stripTypeMeta),
        });
      }
      if (method === "POST") {
        if (r.res.namespaced && ns === undefined) throw methodNotAllowed(method);
        return json(201, store.create(r.res, ns, parseBody(bodyText) as KubeObject, { http: true, dryRun }));
      }
      throw methodNotAllowed(method);
    }

    switch (method) {
      case "GET": {
        const o = store.get(r.res, ns, r.name);
        if (o === undefined) throw notFound(r.res, r.name);
        return json(200, o);
      }
      case "PUT":
        return json(200, store.update(r.res, ns, r.name, parseBody(bodyText) as KubeObject, { keepStatus: true, dryRun }));
      case "PATCH":
        return json(200, store.patch(r.res, ns, r.name, contentType, bodyText, { dryRun }));
      case "DELETE": {
        const body = parseBody(bodyText) as { preconditions?: { uid?: string; resourceVersion?: string } } | undefined;
        const dopts: DeleteOpts = { dryRun };
        const policy = propagation(url, body);
        if (policy !== undefined) dopts.propagationPolicy = policy;
        if (body?.preconditions !== undefined) dopts.preconditions = body.preconditions;
        return json(200, store.delete(r.res, ns, r.name, dopts));
      }
      default:
        throw methodNotAllowed(method);
    }
  }

  function send(res: ServerResponse, reply: Reply): void {
    if ("text" in reply) {
      res.writeHead(reply.code, { "content-type": "text/plain" });
      res.end(reply.text);
    } else {
      const body = JSON.stringify(reply.json);
      res.writeHead(reply.code, { ...JSON_HEADERS, "content-length": Buffer.byteLength(body) });
      res.end(body);
    }
  }

  const admissionCalls: AdmissionCall[] = [];
  const pagesServed: PageServed[] = [];
  const forbidden: string[] = [];
  const accesses: Access[] = [];
  const watchLag = new Map<string, number>();
  const lagMs = (plural: string) => watchLag.get(plural) ?? watchLag.get("*") ?? 0;
  const namespaceRes = findByKind("Namespace")!;
  /** HTTP creates (POST) and updates (PUT) of the main resource go through the stored webhooks; the body to store comes back. */
  async function admission(method: string, r: Route, bodyText: string): Promise<string> {
    if ((method !== "POST" && method !== "PUT") || r.subresource !== undefined) return bodyText;
    if (method === "POST" && r.name !== undefined) return bodyText;
    if (method === "PUT" && r.name === undefined) return bodyText;
    const object = parseBody(bodyText) as KubeObject;
    if (typeof object !== "object" || object === null || typeof object.metadata !== "object") return bodyText;
    const namespace = r.res.namespaced ? (r.namespace ?? object.metadata.namespace) : undefined;
    const oldObject = method === "PUT" ? store.get(r.res, namespace, r.name!) : undefined;
    if (method === "PUT" && oldObject === undefined) return bodyText; // the store answers 404
    const admitted = await admit(
      {
        configs: (kind) => store.list(findByKind(kind)!, undefined),
        namespaceLabels: (name) => store.get(namespaceRes, undefined, name)?.metadata.labels,
        resolve: opts.resolveService,
        calls: admissionCalls,
      },
      { operation: method === "POST" ? "CREATE" : "UPDATE", res: r.res, namespace, object, oldObject },
    );
    if (r.res.kind === "Secret") validateSecretObject(admitted, oldObject);
    return JSON.stringify(admitted);
  }

  async function onRequest(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", "https://127.0.0.1");
    const method = req.method ?? "GET";
    const contentType = req.headers["content-type"];
    const rec: RecordedRequest = { method, path: url.pathname, query: url.search.replace(/^\?/, "") };
    if (contentType !== undefined) rec.contentType = contentType;
    requests.push(rec);
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const bodyText = Buffer.concat(chunks).toString("utf8");
    if (paused) {
      send(res, statusReply(new KubeApiError(503, "ServiceUnavailable", "the API server is paused (kube-api-server test double)")));
      return;
    }
    const auth = req.headers.authorization;
    if (auth === undefined || !/^Bearer\s+\S+/i.test(auth)) {
      send(res, statusReply(new KubeApiError(401, "Unauthorized", "Unauthorized")));
      return;
    }
    try {
      const disc = discovery(url.pathname, `127.0.0.1:${port}`);
      if (disc !== undefined) {
        if (method !== "GET") throw methodNotAllowed(method);
        send(res, disc);
        return;
      }
      const r = route(url.pathname);
      if (r === undefined) throw resourceNotFound();
      const q = url.searchParams;
      if (opts.rbac && auth.replace(/^Bearer\s+/i, "") === TOKEN) {
        const bodyName = method === "POST" ? ((parseBody(bodyText) as KubeObject | null)?.metadata?.name ?? undefined) : undefined;
        const access = accessOf(method, r, r.watchPath || q.get("watch") === "true" || q.get("watch") === "1", bodyName);
        accesses.push(access);
        try {
          authorize(opts.rbac, access);
        } catch (e) {
          access.forbidden = true;
          if (e instanceof KubeApiError) forbidden.push(`${e.code} ${e.message}`);
          throw e;
        }
      }
      if (method === "GET" && r.name === undefined && r.subresource === undefined && (r.watchPath || q.get("watch") === "true" || q.get("watch") === "1")) {
        serveWatch(req, res, url, r);
        return;
      }
      send(res, dispatch(method, url, r, await admission(method, r, bodyText), contentType ?? ""));
    } catch (e) {
      if (res.headersSent) {
        res.socket?.destroy();
        return;
      }
      if (e instanceof KubeApiError) send(res, statusReply(e));
      else send(res, statusReply(new KubeApiError(500, "InternalError", `Internal error occurred: ${(e as Error).stack ?? String(e)}`)));
    }
  }

  const sockets = new Set<Socket>();
  const server = createServer({ cert: certs.cert, key: certs.key }, (req, res) => {
    onRequest(req, res).catch(() => res.destroy()); // e.g. the client went away mid-body
  });
  server.on("secureConnection", (s: Socket) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.requestTimeout = 0; // watches are long
  server.headersTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (server.address() as AddressInfo).port;

  const url = `https://127.0.0.1:${port}`;
  const kubeconfigPath = join(certs.dir, `kubeconfig-${port}.yaml`);
  writeFileSync(
    kubeconfigPath,
    toYaml({
      apiVersion: "v1",
      kind: "Config",
      clusters: [{ name: "kloak-test", cluster: { server: url, "certificate-authority": certs.caFile } }],
      users: [{ name: "kloak-test", user: { token: TOKEN } }],
      contexts: [{ name: "kloak-test", context: { cluster: "kloak-test", user: "kloak-test", namespace: "default" } }],
      "current-context": "kloak-test",
    }),
  );

  function resolveKind(kind: string): ResourceDef {
    const res = findByKind(kind);
    if (res === undefined) throw new Error(`kube-api-server double: unknown kind ${JSON.stringify(kind)}`);
    return res;
  }

  function resolveObject(obj: KubeObject): ResourceDef {
    const res = obj.apiVersion ? findByApiVersionKind(obj.apiVersion, obj.kind) : findByKind(obj.kind);
    if (res === undefined) throw new Error(`kube-api-server double: unknown apiVersion/kind ${obj.apiVersion}/${obj.kind}`);
    return res;
  }

  return {
    url,
    ca: certs.ca,
    caFile: certs.caFile,
    kubeconfigPath,
    admissionCalls,
    pagesServed,
    forbidden,
    accesses,
    setWatchLag(resource, ms) {
      watchLag.set(resource, ms);
    },
    kubeConfig() {
      const kc = new KubeConfig();
      kc.loadFromOptions({
        clusters: [{ name: "kloak-test", server: url, caFile: certs.caFile, skipTLSVerify: false }],
        users: [{ name: "kloak-test", token: TOKEN }],
        contexts: [{ name: "kloak-test", cluster: "kloak-test", user: "kloak-test", namespace: "default" }],
        currentContext: "kloak-test",
      });
      return kc;
    },
    create<T extends KubeObject>(obj: T): T & KubeObject {
      return store.create(resolveObject(obj), undefined, obj) as T;
    },
    get(kind, namespace, name) {
      return store.get(resolveKind(kind), namespace, name);
    },
    list(kind, namespace) {
      return store.list(resolveKind(kind), namespace);
    },
    update<T extends KubeObject>(obj: T): T & KubeObject {
      const res = resolveObject(obj);
      if (obj.metadata?.name === undefined) throw new Error("kube-api-server double: update() needs metadata.name");
      return store.update(res, obj.metadata.namespace, obj.metadata.name, obj) as T;
    },
    delete(kind, namespace, name) {
      const res = resolveKind(kind);
      if (store.get(res, namespace, name) === undefined) return false;
      store.delete(res, namespace, name);
      return true;
    },
    events() {
      return [...store.allOf("Event"), ...store.allOf("Event.events.k8s.io")].sort(
        (a, b) => Number(a.metadata.resourceVersion) - Number(b.metadata.resourceVersion),
      );
    },
    requests,
    openWatches: () => store.openWatches(),
    resourceVersion: () => store.resourceVersion(),
    pause() {
      paused = true;
      store.closeWatches(true);
      for (const s of sockets) s.destroy();
    },
    resume() {
      paused = false;
    },
    compact() {
      store.compact();
    },
    async stop() {
      store.closeWatches(false);
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      await closed;
    },
  };
}
