/**
 * Start-up as a list of phases, shut down in reverse: each phase that started
 * registers how it stops, so what started last stops first, and a start that
 * fails half-way stops exactly what had started (the caller calls stop()).
 * One place for the order, instead of stop lists kept by hand beside starts
 * (model: controller-runtime's runnable groups, started and stopped in phases).
 */
export class Phases {
  private readonly stops: { name: string; stop: () => unknown }[] = [];
  private stopping: Promise<void> | undefined;

  /** `onError`: a stop step that threw; the steps after it still run. */
  constructor(private readonly onError: (phase: string, e: Error) => void) {}

  /**
   * Run one phase's start; once it returned, its stop (given what start
   * returned) runs at shut-down before the stops of every earlier phase.
   */
  async start<T>(name: string, start: () => T | Promise<T>, stop?: (started: T) => unknown): Promise<T> {
    if (this.stopping) throw new Error(`${name}: not started, shutting down`);
    const started = await start();
    if (stop) this.stops.push({ name, stop: () => stop(started) });
    return started;
  }

  /** A phase started elsewhere (a server, a watch): only its stop is registered here. */
  started(name: string, stop: () => unknown): void {
    this.stops.push({ name, stop });
  }

  /** Stop every started phase, last started first; later calls wait for the same shut-down. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      for (let s = this.stops.pop(); s; s = this.stops.pop()) {
        try {
          await s.stop();
        } catch (e) {
          this.onError(s.name, e as Error);
        }
      }
    })();
    return this.stopping;
  }
}
