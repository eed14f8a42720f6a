/**
 * Where to find a worker script: beside the caller in development, and by its
 * path from the bundle root inside a `bun build --compile` executable (which
 * must list the worker as an extra entrypoint).
 */
export function workerSpec(besideCaller: URL, fromBundleRoot: string): string {
  return Bun.main.startsWith("/$bunfs/") ? fromBundleRoot : besideCaller.href;
}
