import { describe, expect, test } from "bun:test";
import { Phases } from "../../src/lifecycle/phases.ts";

describe("Phases", () => {
  test("stops what started, last started first, each once", async () => {
    const log: string[] = [];
    const p = new Phases(() => {});
    const a = await p.start("a", () => "A", (v) => log.push(`stop ${v}`));
    p.started("b", () => log.push("stop b"));
    await p.start("c", async () => 3, (v) => log.push(`stop ${v}`));
    expect(a).toBe("A");
    await Promise.all([p.stop(), p.stop()]);
    expect(log).toEqual(["stop 3", "stop b", "stop A"]);
    await p.stop();
    expect(log.length).toBe(3);
  });

  test("a start that throws registers no stop; the phases before it still stop", async () => {
    const log: string[] = [];
    const p = new Phases(() => {});
    await p.start("a", () => 1, () => log.push("stop a"));
    await expect(p.start("b", () => Promise.reject(new Error("no")), () => log.push("stop b"))).rejects.toThrow("no");
    await p.stop();
    expect(log).toEqual(["stop a"]);
  });

  test("a stop that throws is reported and the earlier phases still stop", async () => {
    const log: string[] = [];
    const errors: string[] = [];
    const p = new Phases((phase, e) => errors.push(`${phase}: ${e.message}`));
    p.started("a", () => log.push("stop a"));
    p.started("b", async () => {
      throw new Error("broken");
    });
    await p.stop();
    expect(errors).toEqual(["b: broken"]);
    expect(log).toEqual(["stop a"]);
  });

  test("no phase starts once shutdown began", async () => {
    const p = new Phases(() => {});
    let ran = false;
    await p.stop();
    await expect(p.start("late", () => (ran = true))).rejects.toThrow("late: not started, shutting down");
    expect(ran).toBe(false);
  });
});
