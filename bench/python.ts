/** The real Python interpreter for benchmark clients (python3 on PATH may be a slow pyenv shim). */
export function resolvePython(): string {
  const env = process.env.KLOAK_BENCH_PYTHON;
  if (env) return env;
  const py = Bun.which("python3") ?? "python3";
  const r = Bun.spawnSync([py, "-c", "import sys; print(sys.executable)"]);
  const exe = r.success ? r.stdout.toString().trim() : "";
  if (!exe) throw new Error(`cannot run ${py} to find the real Python interpreter`);
  return exe;
}
