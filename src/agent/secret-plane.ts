/**
 * The secret side of the agent, without the data plane: the watch of every
 * Secret, the catalog that loads keys into a sink (the BPF maps in the agent,
 * a recorder in tests), and the shadow writer that runs while this agent
 * holds the Lease. The agent and the controller tests build it the same way.
 */
import { CoordinationV1Api, CoreV1Api, type KubeConfig } from "@kubernetes/client-node";
import { isEnabled, isShadow } from "../kube/contract.ts";
import { LeaseElector } from "../kube/lease.ts";
import { Reflector, type ObjectMeta } from "../kube/reflector.ts";
import { SecretCatalog, type CatalogSink, type PolicySource } from "../controller/secret-catalog.ts";
import { secretView, type SecretView } from "../controller/secret-view.ts";
import { ShadowWriter, type EventSink } from "../controller/shadow-writer.ts";
import type { LogFn } from "./log.ts";

export interface SecretPlaneOptions {
  kc: KubeConfig;
  sink: CatalogSink;
  policy: PolicySource;
  events: EventSink;
  log: LogFn;
  lease: { namespace: string; name: string; identity: string; leaseDurationSeconds: number };
  watchTimeoutSeconds?: number;
}

export class SecretPlane {
  readonly secrets: Reflector<SecretView>;
  readonly catalog: SecretCatalog;
  readonly writer: ShadowWriter;
  readonly elector: LeaseElector;
  /** the first list is loaded into the sink */
  synced = false;

  constructor(o: SecretPlaneOptions) {
    const core = o.kc.makeApiClient(CoreV1Api);
    this.secrets = new Reflector<SecretView>({
      name: "secrets",
      kc: o.kc,
      path: "/api/v1/secrets",
      list: (page) => core.listSecretForAllNamespaces(page),
      transform: secretView,
      meta: (s) => s.metadata as ObjectMeta,
      log: o.log,
      watchTimeoutSeconds: o.watchTimeoutSeconds,
    });
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
      [...this.secrets.values()].filter((s) => isEnabled(s.metadata) || isShadow(s.metadata)).map((s) => this.catalog.touch(s)),
    );
    this.synced = true;
    this.elector.start();
  }

  async stop(): Promise<void> {
    await this.elector.stop();
    this.secrets.stop();
  }
}
