/**
 * The interactive-shell check of test/security/stops.test.ts and
 * pod-stops.test.ts: an interactive bash with job control, on a
 * pseudo-terminal (test/support/pty_shell.py, run inside the protected tree),
 * runs 200 commands, curl among them with the placeholder in a header. bash
 * must never see one of its children stop (no "Stopped" job message) and
 * never get a wrong exit status (no 128+SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU =
 * 147..150), while the server receives the real value in every request.
 * Nothing here prints the value: assertions are on counts, and any text shown
 * is redacted.
 */
import { expect } from "bun:test";
import { join } from "node:path";
import { occurrences, placeholderCount } from "../support/kloak.ts";
import type { TlsServer } from "../support/tls-server.ts";

export const PTY_SHELL = join(import.meta.dir, "..", "support", "pty_shell.py");
export const COMMANDS = 200;
/** Seconds pty_shell.py waits for each prompt before it reports the command as hung. */
export const PER_COMMAND_TIMEOUT_S = 30;

export interface Expected {
  cmd: string;
  rc: number;
  /** A line the command must print, if any. */
  line?: string;
  curl?: boolean;
}

interface ShellResult {
  job_control: boolean;
  results: { i: number; cmd: string; rc: number | null; output: string }[];
  transcript: string;
  error: string | null;
  bash_status: string | null;
}

/** 200 commands: plain ones, and every 20th a curl to server with $API_KEY in a header. */
export function commandList(server: TlsServer, caFile: string): Expected[] {
  const curl = Bun.which("curl") ?? "curl";
  const basic: Expected[] = [
    { cmd: "/bin/true", rc: 0 },
    { cmd: "true && echo ok", rc: 0, line: "ok" },
    { cmd: "false || echo no", rc: 0, line: "no" },
    { cmd: "ls / >/dev/null", rc: 0 },
    { cmd: "sh -c 'exit 3'", rc: 3 },
    { cmd: "echo hi | cat", rc: 0, line: "hi" },
    { cmd: "sleep 0.01", rc: 0 },
  ];
  const tls: Expected = {
    cmd: `${curl} -sS --fail --cacert ${caFile} -H "X-Api-Key: $API_KEY" https://127.0.0.1:${server.port}/ -o /dev/null`,
    rc: 0,
    curl: true,
  };
  const list: Expected[] = [];
  let k = 0;
  for (let i = 0; i < COMMANDS; i++) list.push(i % 20 === 7 ? tls : basic[k++ % basic.length]!);
  return list;
}

/** pty_shell.py's arguments after the interpreter. */
export function shellArgs(expected: Expected[]): string[] {
  return [PTY_SHELL, JSON.stringify(expected.map((e) => e.cmd)), String(PER_COMMAND_TIMEOUT_S)];
}

/** Check what the shell saw and what the server got. */
export function checkShell(o: {
  stdout: string;
  /** where the shell ran, for failure messages (never holds the value unredacted) */
  context: string;
  expected: Expected[];
  secret: string;
  server: TlsServer;
}): void {
  const { expected, secret, server } = o;
  const redact = (s: string) => s.split(secret).join("[REDACTED]");
  const line = o.stdout.split("\n").find((l) => l.startsWith("PTY_SHELL_RESULT "));
  if (line === undefined) throw new Error(`pty_shell.py reported nothing (${redact(o.context)}); stdout tail:\n${redact(o.stdout.slice(-2000))}`);
  const r = JSON.parse(line.slice("PTY_SHELL_RESULT ".length)) as ShellResult;
  const context = redact(o.context);

  // The harness itself: bash did run with job control, and every command completed.
  expect(r.job_control, `bash had no job control (${context})`).toBe(true);
  expect(r.error === null ? null : redact(r.error), context).toBeNull();
  expect(r.results.length).toBe(COMMANDS);

  // Every command's exit status, and the lines the echo commands print.
  const wrong = r.results
    .map((res, i) => ({ i, cmd: expected[i]!, res }))
    .filter(({ cmd, res }) => res.rc !== cmd.rc || (cmd.line !== undefined && !res.output.split("\n").includes(cmd.line)))
    .map(({ i, cmd, res }) => redact(`#${i} ${cmd.cmd}: rc ${res.rc} (expected ${cmd.rc}) output ${JSON.stringify(res.output)}`));

  // No job-control stop notice, no exit status of a stopped job, anywhere in the transcript.
  const stopLines = r.transcript
    .split("\n")
    .filter((l) => /stopped/i.test(l) || /\bRC=(147|148|149|150)\b/.test(l))
    .map(redact);

  // Counts first, then the first few of each (the full lists can run to hundreds of lines).
  expect(
    { wrongStatus: wrong.length, stopNotices: stopLines.length, firstWrong: wrong.slice(0, 8), firstStopNotices: stopLines.slice(0, 8) },
    context,
  ).toEqual({ wrongStatus: 0, stopNotices: 0, firstWrong: [], firstStopNotices: [] });
  expect(r.bash_status).toBe("exit 0");

  // The placeholder still became the value in every request, and never went out as itself.
  const curls = expected.filter((e) => e.curl).length;
  const received = server.received();
  expect(server.requests.length).toBe(curls);
  expect(occurrences(received, secret)).toBe(curls);
  expect(placeholderCount(received)).toBe(0);
  // The tree only ever saw the placeholder: the value never reached the terminal.
  expect(occurrences(r.transcript, secret)).toBe(0);
}
