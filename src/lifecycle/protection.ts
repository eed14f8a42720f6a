/**
 * What `kloak exec` and the agent start alike, in this order:
 *   1. writers a kloak that died left stopped are resumed (its pins);
 *   2. the data plane loads (or is taken over), its maps are pinned and the
 *      guardian watches the pins: from here on a kloak that dies has its
 *      placeholders put back and its writers resumed by the guardian;
 *   3. the policy engine, which resolves the rules' names into the data plane.
 * Stopped in reverse: the policy engine, then the data plane, whose own stop
 * keeps the order its safety needs (closed while the pins and the guardian
 * still stand; unpinned; the guardian last).
 */
import { EnvironmentError } from "../errors.ts";
import type { Dataplane } from "../dataplane/dataplane.ts";
import { ensurePinDir, releaseDead, stalePins, unpinState } from "../dataplane/release.ts";
import type { Guardian } from "../supervisor/guardian-client.ts";
import { PolicyEngine, type PolicyEngineOptions } from "../policy/policy-engine.ts";
import type { Phases } from "./phases.ts";

export interface ProtectionOptions {
  /** where the data plane's maps are pinned in bpffs (release.ts execPinBase, agentPinBase) */
  pins: string;
  /** a dead kloak's pins were released */
  onStale(pins: string, released: { resumed: number; killed: number }): void | Promise<void>;
  /** load (or take over) the data plane */
  dataplane(): Promise<Dataplane>;
  /**
   * The guardian. `first`: started before the data plane loads, so the two
   * starts overlap (exec; it waits for the pins); else started once the data
   * plane is up, given it (the agent: a taken-over one waits for serving).
   */
  guardian: { first: true; start(): Promise<Guardian> } | { first?: false; start(dp: Dataplane): Promise<Guardian> };
  /**
   * How the data plane goes at shut-down; by default closed, unpinned, and
   * the guardian closed. The agent may hand it over instead.
   */
  stop?(dp: Dataplane, guardian: Guardian): Promise<void>;
  policy: PolicyEngineOptions;
}

export interface Protection {
  dp: Dataplane;
  guardian: Guardian;
  policy: PolicyEngine;
}

export async function startProtection(phases: Phases, o: ProtectionOptions): Promise<Protection> {
  await phases.start("resume writers a dead kloak left stopped", async () => {
    for (const stale of stalePins()) await o.onStale(stale, await releaseDead(stale));
  });
  const { dp, guardian } = await phases.start(
    "data plane",
    () => loadGuarded(o),
    // exec: kloak exits next, so the kernel's detach must not hold up its exit
    ({ dp, guardian }) => (o.stop ? o.stop(dp, guardian) : closeGuarded(dp, guardian, o.pins, { handOff: true })),
  );
  const policy = await phases.start(
    "policy engine",
    () => new PolicyEngine(dp, o.policy),
    (p) => p.close(),
  );
  dp.onSni((e) => policy.sawSni(e.sni));
  return { dp, guardian, policy };
}

/** Data plane, pins and guardian come up together: a failure takes down what is up. */
async function loadGuarded(o: ProtectionOptions): Promise<{ dp: Dataplane; guardian: Guardian }> {
  const g = o.guardian;
  const early = g.first ? g.start() : undefined;
  early?.catch(() => {}); // awaited below, where its failure is reported
  let dp: Dataplane;
  try {
    dp = await o.dataplane();
  } catch (e) {
    await early?.then((g) => g.close(), () => {});
    throw e;
  }
  try {
    try {
      ensurePinDir();
      dp.pinState(o.pins);
    } catch (e) {
      throw new EnvironmentError(
        `cannot pin kloak's maps in bpffs (${(e as Error).message.split("\n")[0]}); mount it: mount -t bpf bpf /sys/fs/bpf`,
      );
    }
    return { dp, guardian: await (early ?? (g as { start(dp: Dataplane): Promise<Guardian> }).start(dp)) };
  } catch (e) {
    await dp.close();
    unpinState(o.pins);
    await early?.then((g) => g.close(), () => {});
    throw e;
  }
}

/** Closed while the pins and the guardian still stand (a kloak dying meanwhile is released by it), then they go. */
export async function closeGuarded(dp: Dataplane, guardian: Guardian, pins: string, o: { handOff?: boolean } = {}): Promise<void> {
  await dp.close(o);
  unpinState(pins);
  await guardian.close();
}
