/**
 * Not a Kubernetes double: an HTTP endpoint that accepts every request and
 * never answers, with a KubeConfig pointing at it. For testing that clients
 * time out instead of hanging; nothing else can reproduce a hung API server.
 */
import * as k8s from "@kubernetes/client-node";

export function startBlackHole(): { kc: k8s.KubeConfig; stop(): void } {
  const server = Bun.serve({ port: 0, hostname: "127.0.0.1", fetch: () => new Promise<Response>(() => {}) });
  const kc = new k8s.KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "hole", server: `http://127.0.0.1:${server.port}`, skipTLSVerify: true }],
    users: [{ name: "u", token: "t" }],
    contexts: [{ name: "hole", cluster: "hole", user: "u" }],
    currentContext: "hole",
  });
  return { kc, stop: () => server.stop(true) };
}
