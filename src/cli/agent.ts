/** `kloak agent`: parse and validate the configuration, run until SIGTERM/SIGINT. */
import { AGENT_USAGE, parseAgentConfig } from "../agent/config.ts";
import { jsonLogger } from "../log.ts";
import { loadKubeConfig } from "../kube/client.ts";
import { hardenSupervisor } from "../supervisor/harden.ts";

export async function agentCommand(argv: string[]): Promise<number> {
  const cfg = parseAgentConfig(argv, process.env);
  if (cfg === "help") {
    process.stdout.write(AGENT_USAGE + "\n");
    return 0;
  }
  const log = jsonLogger(cfg.logLevel);
  hardenSupervisor();
  // Before anything loads: a wrong kubeconfig is a usage error (exit 2).
  const kube = loadKubeConfig(cfg);
  const { startAgent } = await import("../agent/agent.ts");
  const agent = await startAgent(cfg, kube, log);
  const signal = await new Promise<string>((resolve) => {
    for (const s of ["SIGTERM", "SIGINT"] as const) process.once(s, () => resolve(s));
  });
  log("info", "stopping", { signal });
  await agent.stop();
  log("info", "stopped", {});
  return 0;
}
