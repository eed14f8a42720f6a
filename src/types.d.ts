// The prebuilt eBPF object is imported as a file: a path on disk in
// development, embedded in the executable by `bun build --compile`.
declare module "*.bpf.o" {
  const path: string;
  export default path;
}
