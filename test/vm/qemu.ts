/**
 * Boot a Debian kernel under qemu and run one shell command inside, in the
 * style of libbpf's vmtest and cilium's vimto: the VM sees this machine's
 * root file system read-only (9p) under a tmpfs overlay, so the command runs
 * the project checkout, Bun and the system's libbpf, curl and python exactly
 * as installed here. Software emulation (TCG): this host's /dev/kvm is PVM,
 * which stock kernels cannot use. No network device: loopback only.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fetchKernel, type KernelSpec } from "./kernels.ts";
import { initramfs } from "./initramfs.ts";

export type Lockdown = "none" | "integrity" | "confidentiality";

export interface VmOptions {
  kernel: KernelSpec;
  lockdown: Lockdown;
  /** sh script run as root in `cwd` inside the VM. */
  script: string;
  /** Working directory inside the VM (a host path: the host root is the VM's root). */
  cwd: string;
  /** Environment for the script (PATH and HOME have defaults). */
  env?: Record<string, string>;
  /** Whole run, boot included. */
  timeoutMs: number;
  memoryMiB?: number;
  cpus?: number;
  /** Called with each chunk of console output as it arrives. */
  onOutput?: (chunk: string) => void;
  /** Extra kernel command line. */
  append?: string;
}

export interface VmResult {
  /** The script's exit code; null when it never finished (boot failure, timeout). */
  code: number | null;
  /** Everything the console printed: kernel messages, init's lines, the script's output. */
  console: string;
  /** Files the script left in $KLOAK_JOB (the shared job folder), by name. */
  files: Map<string, Buffer>;
  timedOut: boolean;
  bootMs: number | null;
  totalMs: number;
}

const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const shq = (s: string) => `'${s.replaceAll("'", `'\\''`)}'`;

export async function runVm(o: VmOptions): Promise<VmResult> {
  const qemu = process.env.KLOAK_QEMU || "qemu-system-x86_64";
  if (!Bun.which(qemu)) throw new Error(`${qemu} not found: apt-get install qemu-system-x86 (scripts/setup.sh does)`);
  const k = await fetchKernel(o.kernel);
  const initrd = await initramfs(k);
  const job = mkdtempSync(join(tmpdir(), "kloak-vm-job-"));
  const env = { PATH: DEFAULT_PATH, HOME: "/root", KLOAK_JOB: "/kloak-job", ...o.env };
  writeFileSync(join(job, "cwd"), o.cwd);
  writeFileSync(
    join(job, "run.sh"),
    [...Object.entries(env).map(([n, v]) => `export ${n}=${shq(v)}`), o.script, ""].join("\n"),
  );
  const append = [
    "console=ttyS0",
    "quiet",
    "loglevel=4",
    "panic=-1",
    "oops=panic",
    "mitigations=off",
    o.lockdown === "none" ? "" : `lockdown=${o.lockdown}`,
    o.append ?? "",
  ]
    .filter(Boolean)
    .join(" ");
  const args = [
    qemu,
    "-machine", "q35,accel=tcg",
    "-cpu", "max",
    "-smp", String(o.cpus ?? 1),
    "-m", String(o.memoryMiB ?? 3072),
    "-nographic", "-no-reboot", "-nic", "none", "-monitor", "none", "-serial", "stdio",
    "-kernel", k.vmlinuz,
    "-initrd", initrd,
    "-append", append,
    "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    "-virtfs", `local,path=${job},mount_tag=job,security_model=none`,
  ];
  const started = performance.now();
  let bootMs: number | null = null;
  let text = "";
  const proc = Bun.spawn(args, { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    proc.kill("SIGKILL");
  }, o.timeoutMs);
  const decoder = new TextDecoder();
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    for await (const chunk of stream) {
      const s = decoder.decode(chunk, { stream: true }).replaceAll("\r\n", "\n");
      text += s;
      if (bootMs === null && text.includes("kloak-vm: ready")) bootMs = Math.round(performance.now() - started);
      o.onOutput?.(s);
    }
  };
  await Promise.all([pump(proc.stdout), pump(proc.stderr), proc.exited]);
  clearTimeout(timer);
  const files = new Map<string, Buffer>();
  let code: number | null = null;
  try {
    for (const name of new Bun.Glob("*").scanSync({ cwd: job, onlyFiles: true })) {
      if (name === "run.sh" || name === "cwd") continue;
      files.set(name, readFileSync(join(job, name)));
    }
    const exit = files.get("exit");
    if (exit && !timedOut) code = Number(exit.toString().trim());
  } finally {
    rmSync(job, { recursive: true, force: true });
  }
  return { code, console: text, files, timedOut, bootMs, totalMs: Math.round(performance.now() - started) };
}
