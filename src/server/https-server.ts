/**
 * An HTTPS server whose certificate can be replaced without restarting the
 * process and without dropping traffic.
 *
 * Bun's `server.reload()` swaps handlers but keeps the TLS context (measured
 * on Bun 1.4.5: the old certificate is still served afterwards). So a reload
 * starts a second `Bun.serve` on the same port with `reusePort: true` and the
 * new certificate, then stops the old one gracefully:
 *
 * - `stop()` closes the old listener at once (a connect right after is
 *   refused by it, so new connections reach only the new server),
 * - idle keep-alive connections of the old server are closed, and clients
 *   reconnect to the new one,
 * - requests in flight on the old server complete; its `stop()` promise
 *   resolves when its last connection is gone.
 *
 * Every listener generation must set SO_REUSEPORT, including the first: the
 * kernel only lets a socket join a port whose current owner set it too.
 * Linux also restricts a reuseport group to one effective UID, so no other
 * user's process can join and take a share of the connections.
 */

import { readFileSync, writeFileSync } from "node:fs";

export interface ReloadableHttpsServerOptions {
  /** 0 picks a free port on the first start; reloads reuse whichever port that was. */
  port: number;
  hostname?: string;
  fetch: (req: Request) => Response | Promise<Response>;
  cert: string;
  key: string;
  /**
   * How long a replaced server may take to finish its in-flight requests
   * before the rest are cut off. Admission calls time out at 30 s on the API
   * server side at most, so waiting longer helps nobody. Default 30 000.
   */
  drainTimeoutMs?: number;
}

type BunServer = ReturnType<typeof Bun.serve>;

export class ReloadableHttpsServer {
  #current: BunServer;
  readonly #port: number;
  readonly #opts: ReloadableHttpsServerOptions;
  /** Serializes reloads so two of them never interleave start/stop. */
  #chain: Promise<void> = Promise.resolve();
  readonly #draining = new Map<BunServer, Promise<void>>();
  #stopped = false;

  private constructor(opts: ReloadableHttpsServerOptions) {
    this.#opts = opts;
    this.#current = this.#listen(opts.port, opts.cert, opts.key);
    const port = this.#current.port;
    if (port === undefined) throw new Error("HTTPS server started without a TCP port");
    this.#port = port;
  }

  /** Starts listening; throws (synchronously) if the certificate or key is unusable or the port is taken. */
  static start(opts: ReloadableHttpsServerOptions): ReloadableHttpsServer {
    return new ReloadableHttpsServer(opts);
  }

  get port(): number {
    return this.#port;
  }

  get hostname(): string | undefined {
    return this.#current.hostname;
  }

  /**
   * Switches to `cert`/`key`: the new listener starts and the old listener
   * closes in one synchronous step, so every connection accepted afterwards
   * gets the new certificate. Resolves once the previous server has drained
   * (its in-flight requests answered). If the new pair is unusable this
   * rejects and the previous certificate stays in service.
   */
  async reload(cert: string, key: string): Promise<void> {
    const swapped = this.#chain.then(() => this.#swap(cert, key));
    // Only the swap is serialized, not the drain; and the chain must survive
    // a rejected reload, or every later reload would reject too.
    this.#chain = swapped.then(
      () => {},
      () => {},
    );
    const { drained } = await swapped;
    await drained;
  }

  #swap(cert: string, key: string): { drained: Promise<void> } {
    if (this.#stopped) throw new Error("HTTPS server is stopped");
    let next: BunServer;
    try {
      next = this.#listen(this.#port, cert, key);
    } catch (e) {
      // Bun reports OpenSSL reason codes (e.g. KEY_VALUES_MISMATCH), never key bytes.
      throw new Error(`new certificate rejected, still serving the previous one: ${(e as Error).message}`);
    }
    const old = this.#current;
    this.#current = next;
    return { drained: this.#drain(old) };
  }

  #listen(port: number, cert: string, key: string): BunServer {
    const fetch = this.#opts.fetch;
    return Bun.serve({
      port,
      ...(this.#opts.hostname !== undefined ? { hostname: this.#opts.hostname } : {}),
      reusePort: true,
      tls: { cert, key },
      fetch: (req) => fetch(req),
    });
  }

  #drain(server: BunServer): Promise<void> {
    const limit = this.#opts.drainTimeoutMs ?? 30_000;
    const graceful = server.stop(false);
    let timer: ReturnType<typeof setTimeout> | undefined;
    const done = Promise.race([
      graceful,
      new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          // A graceful stop can be upgraded: this cuts what is left and settles `graceful` too.
          void server.stop(true).then(resolve, resolve);
        }, limit);
      }),
    ]).finally(() => {
      clearTimeout(timer);
      this.#draining.delete(server);
    });
    this.#draining.set(server, done);
    return done;
  }

  /**
   * Stops accepting and lets in-flight requests finish (up to the drain
   * timeout); `force` cuts them instead, including those of servers still
   * draining from earlier reloads.
   */
  async stop(force = false): Promise<void> {
    this.#stopped = true;
    await this.#chain;
    if (!this.#draining.has(this.#current)) void this.#drain(this.#current);
    if (force) for (const server of this.#draining.keys()) void server.stop(true);
    await Promise.all([...this.#draining.values()]);
  }
}

const MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req";

/**
 * A reload closes the old listener, and a connection still waiting in its
 * accept queue is reset then — a failed admission call (the API server does
 * not retry a POST). net.ipv4.tcp_migrate_req (Linux 5.14+) has the kernel
 * move such connections to another listener of the reuseport group instead.
 * It is a setting of the network namespace, so it is turned on only in one of
 * the server's own (a pod's), never in the host's: `netns`/`hostNetns` are the
 * inodes of this process's and pid 1's network namespaces. Says what it did.
 */
export function migrateQueuedConnections(o: { netns: bigint | null; hostNetns: bigint | null; file?: string }): string {
  const file = o.file ?? MIGRATE_REQ;
  if (o.netns === null || o.hostNetns === null || o.netns === o.hostNetns)
    return "left alone: this is the host's network namespace (or it cannot be told); a certificate reload may reset a connection queued on the old listener";
  try {
    if (readFileSync(file, "utf8").trim() === "1") return "on already";
    writeFileSync(file, "1\n");
    return "turned on in this pod's network namespace";
  } catch (e) {
    return `cannot be turned on (${(e as Error).message}); a certificate reload may reset a connection queued on the old listener`;
  }
}
