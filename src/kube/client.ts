/**
 * Where the agent's API access comes from: a kubeconfig file when given,
 * otherwise the pod's service account (in-cluster). Either way the failure
 * says what was missing and how to fix it.
 */
import { existsSync } from "node:fs";
import { KubeConfig } from "@kubernetes/client-node";
import { EnvironmentError, UsageError } from "../errors.ts";

const SA_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token";

export function loadKubeConfig(o: { kubeconfig?: string; context?: string }): { kc: KubeConfig; source: string } {
  const kc = new KubeConfig();
  if (o.kubeconfig) {
    if (!existsSync(o.kubeconfig)) throw new UsageError(`agent: --kubeconfig (KUBECONFIG) ${JSON.stringify(o.kubeconfig)}: no such file`);
    try {
      kc.loadFromFile(o.kubeconfig);
    } catch (e) {
      throw new UsageError(`agent: --kubeconfig ${JSON.stringify(o.kubeconfig)} cannot be read: ${(e as Error).message.split("\n")[0]}`);
    }
    if (o.context) {
      if (!kc.getContextObject(o.context)) throw new UsageError(`agent: --context ${JSON.stringify(o.context)} is not in ${o.kubeconfig}; kubectl config get-contexts lists them`);
      kc.setCurrentContext(o.context);
    }
    if (!kc.getCurrentCluster()) throw new UsageError(`agent: ${o.kubeconfig} has no current context; pass --context`);
    return { kc, source: o.kubeconfig };
  }
  if (!process.env.KUBERNETES_SERVICE_HOST || !existsSync(SA_TOKEN)) {
    throw new EnvironmentError(
      "agent: not running in a Kubernetes pod (no KUBERNETES_SERVICE_HOST or service account token) and no --kubeconfig given; " +
        "run it in the DaemonSet (kubectl apply -k deploy) or pass --kubeconfig",
    );
  }
  kc.loadFromCluster();
  return { kc, source: "in-cluster service account" };
}
