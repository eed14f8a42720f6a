/** Summary statistics shared by the benchmark parts (one definition, so every table means the same thing). */

/** Median of the finite values (NaN when there are none). */
export function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/**
 * The p-quantile of ascending `sorted` by nearest rank (NaN when empty): a
 * value that was measured, never an interpolation, so a p99.9 of few samples
 * is the worst one rather than a number nobody saw.
 */
export function nearestRank(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  return n ? sorted[Math.min(n - 1, Math.max(0, Math.ceil(p * n) - 1))]! : NaN;
}

/** Largest value, NaN (not -Infinity) when there is none, so it prints as "n/a". */
export function maxOf(xs: number[]): number {
  return xs.length ? Math.max(...xs) : NaN;
}

export function sum(xs: Iterable<number>): number {
  let s = 0;
  for (const x of xs) s += x;
  return s;
}

/** Per-operation cost in µs of `seconds` spent over `ops` operations. */
export function perOpUs(seconds: number, ops: number): number {
  return (seconds / ops) * 1e6;
}
