/**
 * The plain-HTTP operations endpoints: /healthz (the process answers),
 * /readyz (every readiness condition, each named in the body so `kubectl
 * describe` shows which one is missing) and /metrics (Prometheus text).
 */
import { Hono } from "hono";

export interface ReadinessCheck {
  name: string;
  ok: () => boolean;
}

export function opsApp(o: { checks: ReadinessCheck[]; metrics: () => Promise<{ contentType: string; body: string }> }): Hono {
  const app = new Hono();
  app.get("/healthz", (c) => c.text("ok\n"));
  app.get("/readyz", (c) => {
    const lines = o.checks.map((ch) => {
      let ok = false;
      try {
        ok = ch.ok();
      } catch {
        ok = false;
      }
      return { ok, line: `[${ok ? "+" : "-"}] ${ch.name}` };
    });
    const ready = lines.every((l) => l.ok);
    return c.text(lines.map((l) => l.line).join("\n") + `\n${ready ? "ready" : "not ready"}\n`, ready ? 200 : 503);
  });
  app.get("/metrics", async (c) => {
    const m = await o.metrics();
    return c.body(m.body, 200, { "content-type": m.contentType });
  });
  return app;
}
