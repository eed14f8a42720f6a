/**
 * The secret side of the agent, without the data plane: the watches of
 * enabled Secrets and of kloak's shadows (two label selectors: memory grows
 * with what is enabled, not with the cluster), the catalog that loads keys into a sink (the BPF maps in the agent,
 * a recorder in tests), and the shadow writer that runs while this agent
 * holds the Lease. The agent and the controller tests build it the same way.
 */
import { CoordinationV1Api, CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { ENABLED, MANAGED, isEnabled, isShadow } from "../kube/contract.ts";
import { LeaseElector } from "../kube/lease.ts";
import { Reflector, type Handlers, type ObjectMeta } from "../kube/reflector.ts";
import { SecretCatalog, type CatalogSink, type PolicySource } from "../controller/secret-catalog.ts";
import { secretView } from "../controller/secret-view.ts";
import type { SecretView } from "../kube/secret-view.ts";
import { ShadowWriter, type EventSink } from "../controller/shadow-writer.ts";
import type { LogFn } from "../log.ts";

export interface SecretPlaneOptions {
  kc: KubeConfig;
  sink: CatalogSink;
  policy: PolicySource;
  events: EventSink;
  log: LogFn;
  lease: { namespace: string; name: string; identity: string; leaseDurationSeconds: number };
  watchTimeoutSeconds?: number;
}

/**
 * Enabled originals and shadows seen as one cache. A label selector cannot
 * say "enabled=true OR managed=true", hence two watches. An object that
 * stops matching (label removed) is delivered as a delete, as upstream.
 */
export class SecretWatches {
  constructor(
    readonly originals: Reflector<SecretView>,
    readonly shadows: Reflector<SecretView>,
  ) {}

  get(namespace: string, name: string): SecretView | undefined {
    return this.originals.get(namespace, name) ?? this.shadows.get(namespace, name);
  }

  *values(): IterableIterator<SecretView> {
    yield* this.originals.values();
    yield* this.shadows.values();
  }

  get size(): number {
    return this.originals.size + this.shadows.size;
  }

  get reflectors(): Reflector<SecretView>[] {
    return [this.originals, this.shadows];
  }

  on(h: Handlers<SecretView>): void {
    this.originals.on(h);
    this.shadows.on(h);
  }

  start(): void {
    this.originals.start();
    this.shadows.start();
  }

  stop(): void {
    this.originals.stop();
    this.shadows.stop();
  }

  async whenSynced(): Promise<void> {
    await Promise.all([this.originals.whenSynced(), this.shadows.whenSynced()]);
  }
}

export class SecretPlane {
  readonly secrets: SecretWatches;
  readonly catalog: SecretCatalog;
  readonly writer: ShadowWriter;
  readonly elector: LeaseElector;
  /** the first list is loaded into the sink */
  synced = false;

  constructor(o: SecretPlaneOptions) {
    const core = o.kc.makeApiClient(CoreV1Api);
    const watch = (name: string, labelSelector: string) =>
      new Reflector<SecretView>({
        name,
        kc: o.kc,
        path: "/api/v1/secrets",
        query: { labelSelector },
        list: (page) => core.listSecretForAllNamespaces({ ...page, labelSelector }),
        transform: secretView,
        meta: (s) => s.metadata as ObjectMeta,
        log: o.log,
        watchTimeoutSeconds: o.watchTimeoutSeconds,
        // A Secret may be ~1 MiB on the wire (data, plus last-applied-configuration holding it again):
        // 50 per page bounds a page to ~50 MiB while it is parsed and trimmed.
        pageSize: 50,
      });
    // Only enablement by label is seen: an annotation-only Secret is not watched (docs/kubernetes.md, "Moving from annotations").
    this.secrets = new SecretWatches(watch("secrets", `${ENABLED}=true`), watch("shadow-secrets", `${MANAGED}=true`));
    this.catalog = new SecretCatalog(o.sink, this.secrets, o.policy, o.log);
    this.writer = new ShadowWriter(core, this.secrets, o.events, o.log);
    const seconds = o.lease.leaseDurationSeconds;
    // client-go's proportions (15 s / 10 s / 2 s): step down well before a peer may take over.
    this.elector = new LeaseElector(o.kc.makeApiClient(CoordinationV1Api), {
      ...o.lease,
      renewDeadlineMs: Math.round(seconds * 1000 * (2 / 3)),
      retryPeriodMs: Math.round(seconds * 1000 * (2 / 15)),
      log: o.log,
    });
    this.elector.onChange((leader) => this.writer.setLeader(leader));
    const changed = (s: SecretView) => {
      void this.catalog.touch(s);
      this.writer.observe(s);
    };
    this.secrets.on({ add: changed, update: changed, delete: changed });
  }

  /** Resolves once every Secret of the first list is loaded (or refused); the Lease is contended from then on. */
  async start(): Promise<void> {
    this.secrets.start();
    await this.secrets.whenSynced();
    await Promise.all(
      [...this.secrets.values()].filter((s) => isEnabled(s.metadata, "label") || isShadow(s.metadata)).map((s) => this.catalog.touch(s)),
    );
    this.synced = true;
    this.elector.start();
  }

  async stop(): Promise<void> {
    await this.elector.stop();
    this.secrets.stop();
  }
}
