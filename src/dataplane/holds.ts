/**
 * How kloak holds a protected process: `ptrace` (tracer.ts: only kloak sees
 * the hold) or `signals` (job-control stops, which the parent sees: for trees
 * that run a debugger or strace themselves, since a process has one tracer).
 * Its own module, so option parsing (exec, agent config) names the choices
 * without loading the tracer and its ptrace bindings.
 */
export const HOLD_METHODS = ["ptrace", "signals"] as const;
export type HoldMethod = (typeof HOLD_METHODS)[number];
