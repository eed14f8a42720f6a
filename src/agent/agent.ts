/**
 * `kloak agent`: everything one node runs, in one process. Order matters:
 * the ops server first (liveness while loading), then the data plane, the
 * watches, the secret catalog, pods, and last the webhook, which must not
 * answer before the cache it decides from is filled. Shutdown runs the same
 * phases in reverse (lifecycle/phases.ts).
 */
import { AdmissionregistrationV1Api, CoreV1Api, AppsV1Api, RbacAuthorizationV1Api, type KubeConfig } from "@kubernetes/client-node";
import { METADATA_ONLY } from "../controller/shadow-writer.ts";
import { describeError, statusOf } from "../kube/http.ts";
import { secretView } from "../controller/secret-view.ts";
import { Counter, Registry } from "prom-client";
import { VERSION, gitCommit } from "../build-info.ts";
import { agentPinBase, releaseDead, unpinState } from "../dataplane/release.ts";
import { Dataplane, type DataplaneOptions } from "../dataplane/dataplane.ts";
import { claimHandover, listHandovers, releaseHandover, type Handover } from "../dataplane/handover.ts";
import { handoverIdentity, objectBytes } from "../dataplane/bpf-object.ts";
import { unhookableMessage } from "../dataplane/unhookable.ts";
import { Guardian } from "../supervisor/guardian-client.ts";
import { describeDestination, describeRefusal } from "../dataplane/refusals.ts";
import { dataplaneMetrics, type DataplaneSnapshot } from "../metrics/dataplane-metrics.ts";
import { agentMetrics } from "../metrics/agent-metrics.ts";
import { Phases } from "../lifecycle/phases.ts";
import { closeGuarded, startProtection, type Protection } from "../lifecycle/protection.ts";
import { dnsLookup } from "../policy/resolver.ts";
import { Reflector, type ObjectMeta, type ReflectorOptions } from "../kube/reflector.ts";
import { EventRecorder } from "../kube/events.ts";
import { SecretPlane } from "./secret-plane.ts";
import { metaView, podView, type MetaView, type PodView } from "../controller/pod-view.ts";
import { PodController } from "../controller/pod-controller.ts";
import { PodAttacher } from "../node/pod-attacher.ts";
import { cgroupV2Root } from "../node/cgroups.ts";
import { webhookApp } from "../webhook/app.ts";
import { migrateQueuedConnections, ReloadableHttpsServer } from "../server/https-server.ts";
import { netnsInode } from "../../lib/proc.ts";
import { opsApp } from "../server/ops-app.ts";
import { CertStore } from "../certs/cert-store.ts";
import { WebhookRegistrar } from "../webhook/registration.ts";
import { startCertRotation } from "../certs/rotation.ts";
import { readCertDir, watchCertDir } from "../certs/cert-manager.ts";
import { serviceDnsNames } from "../certs/authority.ts";
import type { Material } from "../certs/material.ts";
import { webhookRegistration, type AgentConfig } from "./config.ts";
import type { LogFn } from "../log.ts";

export interface RunningAgent {
  opsPort: number;
  webhookPort: number;
  stop(): Promise<void>;
}

/** What readiness, metrics and shutdown read of the running agent. */
interface AgentState {
  catalogSynced: boolean;
  podsSynced: boolean;
  material: Material | undefined;
  dp: Dataplane | undefined;
  webhook: ReloadableHttpsServer | undefined;
  /** SIGTERM came: not ready, so endpoints drop this agent before its listener closes */
  stopping: boolean;
  /** decided when shutdown starts: the data plane is handed over to the next agent, not closed */
  handover: boolean;
  /** the data plane's numbers as last read for /metrics */
  snapshot: DataplaneSnapshot | undefined;
}

/** The watches of this node's pods and of what enables them (namespaces, owners). */
interface Watches {
  pods: Reflector<PodView>;
  namespaces: Reflector<MetaView>;
  owners: Record<"ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet", Reflector<MetaView>>;
}

/**
 * Phases, each stopped in reverse at shutdown: ops server, data plane (with
 * its pins, guardian and policy engine: lifecycle/protection.ts, as `kloak
 * exec` starts them), pod attacher, watches, secret plane, webhook. So the
 * webhook stops first and the watches stop before the attacher and the data
 * plane they feed.
 */
export async function startAgent(cfg: AgentConfig, kube: { kc: KubeConfig; source: string }, log: LogFn): Promise<RunningAgent> {
  const { kc, source } = kube;
  const cgroupRoot = cgroupV2Root(cfg.cgroupRoot);
  const commit = gitCommit();
  log("info", "kloak agent starting", { version: VERSION, commit, node: cfg.nodeName, kube: source, cgroupRoot });
  const state: AgentState = {
    catalogSynced: false,
    podsSynced: false,
    material: undefined,
    dp: undefined,
    webhook: undefined,
    stopping: false,
    handover: false,
    snapshot: undefined,
  };
  const phases = new Phases((phase, e) => log("warn", "shutdown step failed", { phase, error: (e as Error).message }));
  const core = kc.makeApiClient(CoreV1Api);
  const events = new EventRecorder(core, { component: "kloak", host: cfg.nodeName, log });
  try {
    // Ops first: liveness and the reason for not-ready are visible while the rest loads.
    const registry = new Registry();
    const ops = startOps(cfg, state, registry);
    phases.started("ops server", () => ops.stop(true));

    const { dp, policy, guardian } = await startDataplane(phases, cfg, state, registry, log);
    const watches = createWatches(kc, cfg, log);
    const plane = new SecretPlane({
      kc,
      sink: dp,
      policy,
      events,
      log,
      lease: { namespace: cfg.namespace, name: cfg.leaseName, identity: `${cfg.podName}_${cfg.nodeName}`, leaseDurationSeconds: cfg.leaseDurationSeconds },
    });
    const attacher = await phases.start(
      "pod attacher",
      () =>
        new PodAttacher(dp, {
          cgroupRoot,
          log,
          strictBinding: cfg.strictBinding,
          onViolation: cfg.onViolation,
          // Taken over: pods keep their scopes; new ones get ids the previous agent never used.
          firstScopeId: Math.max(1000, dp.firstFreeScopeId()),
          adoptedScope: (cgroupId) => dp.adoptedScope(cgroupId),
        }),
      // Before the data plane closes: its retry timer must not touch closed maps.
      (a) => a.close(),
    );
    const podController = new PodController({ ...watches, secrets: plane.secrets, catalog: plane.catalog, attacher, events, log });
    routeWatchEvents(watches, plane, podController, state);
    reportToPods(dp, attacher, plane, events, log);

    const reflectors = [watches.pods, watches.namespaces, ...Object.values(watches.owners)] as Reflector<unknown>[];
    for (const r of reflectors) r.start();
    phases.started("watches", () => reflectors.forEach((r) => r.stop()));
    await syncSecrets(phases, plane, cfg, state, dp, guardian, log);
    await syncPods(watches, podController, attacher, plane, state, dp, log);

    // The webhook, last: it decides from the secret cache.
    const metrics = registerMetrics(registry, state, dp, plane, podController, events, [...plane.secrets.reflectors, ...reflectors] as Reflector<unknown>[], commit);
    const webhook = await startWebhook(phases, kc, cfg, state, plane, watches, metrics, log);
    log("info", "kloak agent ready", { webhookPort: webhook.port, opsPort: ops.port });
    return {
      opsPort: ops.port ?? cfg.opsPort,
      webhookPort: webhook.port,
      async stop() {
        // Not ready first: endpoints drop this agent while its webhook still answers; then the
        // listener closes and requests in flight finish (webhook.stop drains), then the rest.
        state.stopping = true;
        state.handover = wantHandover(cfg, watches.pods, watches.owners.DaemonSet, log);
        log("info", "shutting down: not ready; the webhook serves on, then drains", { delaySeconds: cfg.shutdownDelaySeconds, handover: state.handover });
        if (cfg.shutdownDelaySeconds > 0) await Bun.sleep(cfg.shutdownDelaySeconds * 1000);
        await phases.stop();
        await events.flush();
      },
    };
  } catch (e) {
    // What started stops (the data plane closes: placeholders back, writers resumed).
    await phases.stop();
    await events.flush();
    throw e;
  }
}

function startOps(cfg: AgentConfig, state: AgentState, registry: Registry): ReturnType<typeof Bun.serve> {
  return Bun.serve({
    port: cfg.opsPort,
    hostname: cfg.bindAddress,
    fetch: opsApp({
      checks: [
        { name: "not shutting down", ok: () => !state.stopping },
        { name: "ebpf object loaded", ok: () => state.dp !== undefined },
        { name: "secrets synced", ok: () => state.catalogSynced },
        { name: "pods synced", ok: () => state.podsSynced },
        {
          name: "webhook certificate valid",
          ok: () => state.webhook !== undefined && state.material !== undefined && state.material.notAfter.getTime() > Date.now(),
        },
      ],
      metrics: async () => {
        const dp = state.dp;
        if (dp) state.snapshot = dp.snapshot(dp.mode === "stop" ? await dp.workerStats() : undefined);
        return { contentType: registry.contentType, body: state.snapshot ? await registry.metrics() : "" };
      },
    }).fetch,
  });
}

/**
 * The data plane as `kloak exec` starts it (lifecycle/protection.ts): taken
 * over from the previous agent on this node when it left one this agent can
 * use, else loaded. At shutdown it is handed over to the next agent or closed.
 */
async function startDataplane(phases: Phases, cfg: AgentConfig, state: AgentState, registry: Registry, log: LogFn): Promise<Protection> {
  const handovers = new Counter({
    name: "kloak_handovers_total",
    help: "Data planes left by a previous agent on this node (zero-gap upgrade), by outcome: adopted, or released (placeholders back, writers resumed) because incompatible (another object or settings: that upgrade has a gap), expired, orphaned or failed",
    labelNames: ["outcome"],
    registers: [registry],
  });
  // If this process dies, the guardian (or the next agent, via the pins) restores and resumes what it stopped.
  const pins = agentPinBase(process.pid);
  const p = await startProtection(phases, {
    pins,
    // A previous agent on this node that died may have left writers stopped.
    onStale: (pin, { resumed, killed }) =>
      log("warn", "a previous kloak process died; put its placeholders back and resumed its processes", { pin, resumed, killed }),
    dataplane: () => loadOrAdopt(cfg, log, (outcome) => handovers.inc({ outcome })),
    // Taken over: writers stopped during the gap wait for the secrets, not for the guardian.
    guardian: { start: (dp) => Guardian.start(pins, { waitServing: dp.adopted }) },
    // Last at shutdown (after the watches stopped): nothing may change the maps behind a handover.
    stop: (dp, guardian) => (state.handover ? handOver(dp, guardian, pins, cfg, log) : closeGuarded(dp, guardian, pins)),
    policy: { lookup: dnsLookup(cfg.dnsServers.length ? cfg.dnsServers : undefined), warn: (msg) => log("warn", msg) },
  });
  state.dp = p.dp;
  log("info", "ebpf object loaded", { mode: p.dp.mode, reason: p.dp.modeReason, uprobes: p.dp.uprobes });
  return p;
}

async function loadOrAdopt(cfg: AgentConfig, log: LogFn, count: (outcome: string) => void): Promise<Dataplane> {
  const dpOpts: DataplaneOptions = { mode: cfg.rewriteMode, scanCap: cfg.scanCap, holds: cfg.holds, warn: (msg) => log("warn", msg) };
  const taken = await takeHandover(cfg, log, count);
  if (!taken) return Dataplane.start(dpOpts);
  try {
    const dp = await Dataplane.adopt(dpOpts, taken);
    count("adopted");
    log("info", "took over the data plane of the previous agent: its probes and maps stay, nothing was detached", { from: taken.pid, mode: dp.mode });
    return dp;
  } catch (e) {
    count("failed");
    const r = await releaseHandover(taken.path);
    log("warn", "could not take over the previous agent's data plane; released it (placeholders back, writers resumed) and loading afresh", {
      error: (e as Error).message,
      ...r,
    });
    return Dataplane.start(dpOpts);
  }
}

async function handOver(dp: Dataplane, guardian: Guardian, pins: string, cfg: AgentConfig, log: LogFn): Promise<void> {
  const deadline = Date.now() + cfg.handoverTimeoutSeconds * 1000;
  guardian.handingOver();
  try {
    const dir = await dp.handOver(deadline);
    unpinState(pins);
    guardian.handover(dir, deadline);
    // It stays, waiting for the successor until the deadline (in a pod it ends with the container).
    guardian.leave();
    log("info", "data plane handed over: probes and maps stay for the next agent", { dir, timeoutSeconds: cfg.handoverTimeoutSeconds });
  } catch (e) {
    // handOver let go of the data plane: put back and resume whatever it still had stopped.
    const r = await releaseDead(pins);
    await guardian.close();
    log("warn", "could not hand the data plane over; released it instead (placeholders go out until the next agent attaches)", {
      error: (e as Error).message,
      ...r,
    });
  }
}

function createWatches(kc: KubeConfig, cfg: AgentConfig, log: LogFn): Watches {
  const core = kc.makeApiClient(CoreV1Api);
  const apps = kc.makeApiClient(AppsV1Api);
  const reflect = <T,>(name: string, path: string, list: ReflectorOptions<T>["list"], transform: ReflectorOptions<T>["transform"], query?: Record<string, string>) =>
    new Reflector<T>({ name, kc, path, list, transform, meta: (o) => (o as { metadata: ObjectMeta }).metadata, log, query });
  const nodeSelector = `spec.nodeName=${cfg.nodeName}`;
  return {
    pods: reflect<PodView>("pods", "/api/v1/pods", (page) => core.listPodForAllNamespaces({ ...page, fieldSelector: nodeSelector }), podView, { fieldSelector: nodeSelector }),
    namespaces: reflect<MetaView>("namespaces", "/api/v1/namespaces", (page) => core.listNamespace(page), metaView),
    owners: {
      ReplicaSet: reflect<MetaView>("replicasets", "/apis/apps/v1/replicasets", (page) => apps.listReplicaSetForAllNamespaces(page), metaView),
      Deployment: reflect<MetaView>("deployments", "/apis/apps/v1/deployments", (page) => apps.listDeploymentForAllNamespaces(page), metaView),
      StatefulSet: reflect<MetaView>("statefulsets", "/apis/apps/v1/statefulsets", (page) => apps.listStatefulSetForAllNamespaces(page), metaView),
      DaemonSet: reflect<MetaView>("daemonsets", "/apis/apps/v1/daemonsets", (page) => apps.listDaemonSetForAllNamespaces(page), metaView),
    },
  };
}

/** Pod, namespace and owner changes (once pods synced) and catalog changes reach the pod controller. */
function routeWatchEvents({ pods, namespaces, owners }: Watches, plane: SecretPlane, podController: PodController, state: AgentState): void {
  plane.catalog.onChange((ns) => {
    if (state.podsSynced) podController.namespaceChanged(ns);
  });
  pods.on({
    add: (p) => state.podsSynced && podController.podChanged(p),
    update: (p) => state.podsSynced && podController.podChanged(p),
    delete: (p) => podController.podDeleted(p),
  });
  namespaces.on({
    update: (n) => state.podsSynced && podController.namespaceChanged(n.metadata.name ?? ""),
    add: (n) => state.podsSynced && podController.namespaceChanged(n.metadata.name ?? ""),
  });
  for (const r of Object.values(owners))
    r.on({ update: (o) => state.podsSynced && podController.namespaceChanged(o.metadata.namespace ?? "") });
}

/** What kloak did to a pod's TLS, said on the pod as Events. */
function reportToPods(dp: Dataplane, attacher: PodAttacher, plane: SecretPlane, events: EventRecorder, log: LogFn): void {
  // A refused substitution becomes an Event on the pod (EventRecorder rate-limits per pod).
  dp.onRefusal((e) => {
    const pod = attacher.podOfScope(e.scopeId);
    if (!pod) return;
    const s = plane.catalog.describe(e.secretId);
    const what = s ? `secret ${s.name} key ${s.key}` : "a placeholder";
    events.record(
      { apiVersion: "v1", kind: "Pod", namespace: pod.namespace, name: pod.name, uid: pod.uid },
      "Warning",
      "KloakSubstitutionRefused",
      `kloak left ${what} as a placeholder in a TLS write to ${describeDestination(e)}: ${describeRefusal(e, "agent")}`,
    );
  });

  // TLS kloak cannot hook in a pod: its placeholders go out as they are; say so on the pod.
  dp.unhookable.on((r) => {
    const pod = attacher.podOfScope(r.scopeId);
    log("warn", "unhookable TLS", { pid: r.tgid, comm: r.comm, exe: r.exe, reason: r.reason, pod: pod?.name });
    if (!pod) return;
    events.record(
      { apiVersion: "v1", kind: "Pod", namespace: pod.namespace, name: pod.name, uid: pod.uid },
      "Warning",
      "KloakTlsUnhookable",
      unhookableMessage(r),
    );
  });
}

/** Every agent loads the maps; one of them (the Lease holder) also writes shadows. */
async function syncSecrets(phases: Phases, plane: SecretPlane, cfg: AgentConfig, state: AgentState, dp: Dataplane, guardian: Guardian, log: LogFn): Promise<void> {
  // A taken-over ring holds requests of writers stopped during the gap: served once their values are loaded,
  // or, after --handover-timeout, without them (fail closed: their placeholders go out).
  let served = !dp.adopted;
  const serve = (why: string) => {
    if (served) return;
    served = true;
    clearTimeout(serveTimer);
    dp.resumeWrites();
    guardian.serving();
    log(why === "synced" ? "info" : "warn", "serving the writes of the taken-over data plane", { after: why });
  };
  const serveTimer = setTimeout(() => serve("timeout"), cfg.handoverTimeoutSeconds * 1000);
  phases.started("secret plane", () => plane.stop());
  await plane.start();
  state.catalogSynced = true;
  serve("synced");
  clearTimeout(serveTimer);
  log("info", "secrets synced", { watched: plane.secrets.size, ...plane.catalog.stats() });
}

async function syncPods(
  { pods, namespaces, owners }: Watches,
  podController: PodController,
  attacher: PodAttacher,
  plane: SecretPlane,
  state: AgentState,
  dp: Dataplane,
  log: LogFn,
): Promise<void> {
  await Promise.all([pods.whenSynced(), namespaces.whenSynced(), ...Object.values(owners).map((r) => r.whenSynced())]);
  state.podsSynced = true;
  podController.all();
  log("info", "pods synced", { pods: podController.trackedPods });
  if (dp.adopted) {
    // What the previous agent had and this one does not want any more (pods gone, secrets disabled meanwhile).
    const pruned = await dp.pruneAdopted({ scope: (id) => attacher.podOfScope(id) !== undefined, secret: (id) => plane.catalog.describe(id) !== undefined });
    log("info", "taken-over data plane reconciled", { ...pruned });
  }
}

function registerMetrics(
  registry: Registry,
  state: AgentState,
  dp: Dataplane,
  plane: SecretPlane,
  podController: PodController,
  events: EventRecorder,
  reflectors: Reflector<unknown>[],
  commit: string,
): ReturnType<typeof agentMetrics> {
  const { catalog, writer, elector } = plane;
  const metrics = agentMetrics(
    registry,
    {
      attachedProcesses: () => dp.attachedProcesses,
      uprobeLinks: () => dp.uprobeLinks,
      attachErrors: () => dp.attachErrors,
      maps: () => dp.mapUsage(),
      secrets: () => catalog.stats(),
      pods: () => podController.trackedPods,
      leader: () => elector.isLeader(),
      watches: () => reflectors.map((r) => ({ resource: r.name, connected: r.connected, errors: r.errors })),
      shadowWrites: () => ({ writes: writer.writes, errors: writer.errors, unservable: writer.unservable.size }),
      eventsDropped: () => events.dropped(),
      certNotAfter: () => state.material?.notAfter,
    },
    { version: VERSION, commit, mode: dp.mode },
  );
  dataplaneMetrics(() => state.snapshot ?? dp.snapshot(), registry);
  return metrics;
}

/** The admission webhook with its certificate and its registration: last, once the caches it decides from are filled. */
async function startWebhook(
  phases: Phases,
  kc: KubeConfig,
  cfg: AgentConfig,
  state: AgentState,
  plane: SecretPlane,
  { namespaces }: Watches,
  metrics: ReturnType<typeof agentMetrics>,
  log: LogFn,
): Promise<ReloadableHttpsServer> {
  const core = kc.makeApiClient(CoreV1Api);
  const { secrets, elector } = plane;
  // Metadata only (METADATA_ONLY): the API server leaves values out, so a look-up never reads a value kloak does not protect.
  const app = webhookApp({
    secrets: {
      get: (ns, name) => secrets.get(ns, name),
      synced: () => state.catalogSynced,
      fetch: async (namespace, name) => {
        try {
          return secretView((await core.readNamespacedSecret({ namespace, name }, METADATA_ONLY)) as never);
        } catch (e) {
          if (statusOf(e) === 404) return null;
          throw new Error(describeError(e));
        }
      },
    },
    namespaces: async (name) => {
      const cached = namespaces.get(undefined, name);
      if (cached) return cached.metadata;
      try {
        return metaView((await core.readNamespace({ name })) as never).metadata;
      } catch (e) {
        if (statusOf(e) === 404) return null;
        throw new Error(describeError(e));
      }
    },
    onRequest: (path, outcome, seconds) => metrics.webhook(path, outcome, seconds),
    log,
  });
  const registrar = new WebhookRegistrar(
    kc.makeApiClient(AdmissionregistrationV1Api),
    kc.makeApiClient(RbacAuthorizationV1Api),
    webhookRegistration(cfg),
    log,
  );
  phases.started("webhook registration", () => registrar.stop());
  const material = await firstMaterial(cfg, core, log, phases, (m) => (state.material = m), registrar);
  // A certificate reload must not reset a review waiting in the old listener's queue.
  const netns = (pid: number) => {
    try {
      return netnsInode(pid);
    } catch {
      return null;
    }
  };
  log("info", "queued connections at a certificate reload", { migration: migrateQueuedConnections({ netns: netns(process.pid), hostNetns: netns(1) }) });
  const webhook = ReloadableHttpsServer.start({
    port: cfg.webhookPort,
    hostname: cfg.bindAddress,
    fetch: app.fetch,
    cert: material.current.certPem,
    key: material.current.keyPem,
  });
  state.webhook = webhook;
  material.serve(webhook);
  phases.started("webhook", () => webhook.stop());
  // Only now, with a server that answers, may the configurations exist; one writer (the Lease holder).
  registrar.setActive(elector.isLeader());
  elector.onChange((leader) => registrar.setActive(leader));
  return webhook;
}

/**
 * The serving certificate: kloak's own CA shared through a Secret (self), or
 * cert-manager's mounted files. `serve` is called once the server exists;
 * later certificates go to its reload, and `onMaterial` sees each one in use.
 */
async function firstMaterial(
  cfg: AgentConfig,
  core: CoreV1Api,
  log: LogFn,
  phases: Phases,
  onMaterial: (m: Material) => void,
  registrar: WebhookRegistrar,
): Promise<{ current: Material; serve(server: { reload(cert: string, key: string): Promise<void> }): void }> {
  let server: { reload(cert: string, key: string): Promise<void> } | undefined;
  if (cfg.certMode === "cert-manager") {
    const current = await readCertDir(cfg.certDir!);
    onMaterial(current);
    const w = watchCertDir(
      cfg.certDir!,
      (m) => {
        void server
          ?.reload(m.certPem, m.keyPem)
          .then(() => onMaterial(m))
          .catch((e) => log("error", "the new cert-manager certificate was not loaded; the old one stays in use", { error: (e as Error).message }));
      },
      { log },
    );
    phases.started("certificate files watch", () => w.stop());
    return { current, serve: (s) => (server = s) };
  }
  const store = new CertStore(core, {
    namespace: cfg.namespace,
    secretName: cfg.tlsSecret,
    dnsNames: serviceDnsNames(cfg.serviceName, cfg.namespace),
    log,
  });
  const rotation = await startCertRotation({
    store,
    // Before the server exists there is nothing to reload; it starts from current().
    server: { reload: async (cert, key) => server?.reload(cert, key) },
    // Before a leaf from a new CA is served: the registrar writes it at once when it is the writer.
    patchBundle: async (caPem: string) => {
      registrar.setCa(caPem);
      await registrar.reconcile();
    },
    onMaterial,
    log,
  });
  phases.started("certificate rotation", () => rotation.stop());
  onMaterial(rotation.current());
  return { current: rotation.current(), serve: (s) => (server = s) };
}

/**
 * A handover left by the previous agent on this node (handover.ts), claimed
 * for this one when it can take it over: same object and settings, before its
 * deadline. Every other one is released first (placeholders back, writers
 * resumed, probes gone): two data planes must never both be attached.
 */
async function takeHandover(cfg: AgentConfig, log: LogFn, count: (outcome: string) => void): Promise<Handover | undefined> {
  const { offered, orphaned } = listHandovers();
  log("debug", "data planes left on this node", { offered: offered.map((h) => h.path), orphaned });
  for (const dir of orphaned) {
    const r = await releaseHandover(dir);
    count("orphaned");
    log("warn", "released a data plane whose taker died", { dir, ...r });
  }
  if (offered.length === 0) return undefined;
  const bytes = await objectBytes();
  let taken: Handover | undefined;
  for (const h of offered) {
    const compatible =
      h.scanCap === cfg.scanCap &&
      (cfg.rewriteMode === "auto" || cfg.rewriteMode === h.mode) &&
      handoverIdentity(bytes, { mode: h.mode, uprobes: h.uprobes, scanCap: cfg.scanCap }) === h.identity;
    const expired = Date.now() >= h.deadline;
    const claimed = claimHandover(h);
    if (!claimed) {
      log("debug", "a data plane left on this node was claimed by another process first", { dir: h.path });
      continue; // its guardian released it just now
    }
    if (!taken && compatible && !expired) {
      taken = claimed;
      continue;
    }
    const outcome = taken && compatible && !expired ? "superseded" : expired ? "expired" : "incompatible";
    const r = await releaseHandover(claimed.path);
    count(outcome);
    log("warn", outcome === "incompatible"
      ? "the previous agent's data plane is another object or has other settings: released it (placeholders back, writers resumed); this upgrade has a gap until this agent attaches"
      : "released a data plane left by a previous agent (placeholders back, writers resumed)", { from: h.pid, outcome, ...r });
  }
  return taken;
}

/**
 * Hand the data plane over at shutdown? always/never as configured; auto:
 * when this agent's own DaemonSet lives on (a rolling update, a node drain,
 * a deleted pod: a successor comes), not when it is gone (uninstall).
 */
function wantHandover(
  cfg: AgentConfig,
  pods: Reflector<PodView>,
  daemonSets: Reflector<MetaView>,
  log: LogFn,
): boolean {
  if (cfg.handover !== "auto") return cfg.handover === "always";
  const self = pods.get(cfg.namespace, cfg.podName);
  const owner = self?.metadata.ownerReferences?.find((o) => o.kind === "DaemonSet" && o.controller);
  const ds = owner && daemonSets.get(cfg.namespace, owner.name);
  const ok = ds !== undefined && ds.metadata.uid === owner!.uid;
  if (!ok) log("info", "no handover: this agent's DaemonSet is not there (uninstall, or not run by a DaemonSet)", { pod: cfg.podName });
  return ok;
}
