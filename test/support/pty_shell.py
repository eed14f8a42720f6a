#!/usr/bin/env python3
"""
Drive an interactive bash (job control on) on a pseudo-terminal, one command
at a time, and report what the terminal showed.

    pty_shell.py COMMANDS_JSON [PER_COMMAND_TIMEOUT_SECONDS]

COMMANDS_JSON is a JSON list of command lines (strings). The helper forks
`bash --norc --noprofile --noediting -i` on a new pty (pty.fork: a new session
whose controlling terminal is the pty, so bash turns job control on), waits
for the first prompt, and for each command i:

  1. types the command line and waits for the next prompt;
  2. types `echo "RC=$? (#i)"` and waits for that line and the next prompt.

If a prompt does not come within the timeout, it stops and reports which
command hung. At the end it types `exit` (twice if bash complains about
stopped jobs) and reaps bash.

It prints one line on stdout: "PTY_SHELL_RESULT " + JSON with
  job_control  bool: bash had the monitor option (`$-` contains m)
  results      [{"i", "cmd", "rc" (int or null), "output"}] (output: what the
               command printed, the echoed command line removed)
  transcript   the whole terminal transcript (\\r\\n turned into \\n)
  error        null, or a message (e.g. which command hung)
  bash_status  how bash ended: "exit N", "signal N" or null
Exit status: 0 if there was no error, 1 otherwise.
"""
import json
import os
import pty
import re
import select
import signal
import sys
import time

PROMPT = "__PTYSH_PROMPT__> "


class Shell:
    def __init__(self, timeout):
        self.timeout = timeout
        self.buf = ""  # everything read so far
        self.eof = False
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "TERM": "dumb",
            "PS1": PROMPT,
            "PS2": "",
            "HISTFILE": "/dev/null",
            "LANG": "C",
        }
        # Keep the variables the protected tree was given (API_KEY's placeholder etc.).
        for k, v in os.environ.items():
            if k not in env and k not in ("PROMPT_COMMAND", "BASH_ENV", "ENV"):
                env[k] = v
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execve("/bin/bash", ["bash", "--norc", "--noprofile", "--noediting", "-i"], env)
            finally:
                os._exit(127)
        self.pid = pid
        self.fd = fd
        self.status = None

    def _read_some(self, deadline):
        """Read what is available until deadline; False on timeout or EOF."""
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([self.fd], [], [], left)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the slave side is closed (bash is gone)
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data.decode("utf-8", "replace")
        return True

    def wait_for(self, pattern, start, timeout=None):
        """Wait until regex pattern matches in buf[start:]; return the match or None."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        rx = re.compile(pattern)
        while True:
            m = rx.search(self.buf, start)
            if m:
                return m
            if not self._read_some(deadline):
                m = rx.search(self.buf, start)
                return m

    def send(self, line):
        os.write(self.fd, (line + "\n").encode())

    def reap(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.status = st
                return True
            self._read_some(min(deadline, time.monotonic() + 0.1))
        return False

    def kill(self):
        for kill in (lambda: os.killpg(self.pid, signal.SIGKILL), lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                kill()
            except OSError:
                pass
        try:
            _, self.status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def main():
    commands = json.loads(sys.argv[1])
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    sh = Shell(timeout)
    results = []
    error = None
    job_control = False
    prompt = re.escape(PROMPT)
    try:
        if not sh.wait_for(prompt, 0):
            raise RuntimeError("bash printed no first prompt within %gs" % timeout)
        start = len(sh.buf)
        sh.send('case $- in *m*) echo "JOB""CONTROL=on";; *) echo "JOB""CONTROL=off";; esac')
        m = sh.wait_for(r"JOBCONTROL=(on|off)\r?\n[\s\S]*?" + prompt, start)
        if not m:
            raise RuntimeError("the job-control check hung (no prompt within %gs)" % timeout)
        job_control = m.group(1) == "on"
        for i, cmd in enumerate(commands):
            start = len(sh.buf)
            sh.send(cmd)
            m = sh.wait_for(prompt, start)
            if not m:
                results.append({"i": i, "cmd": cmd, "rc": None, "output": sh.buf[start:]})
                raise RuntimeError("command #%d hung (no prompt within %gs): %s" % (i, timeout, cmd))
            out = sh.buf[start : m.start()]
            # drop the echoed command line (the tty echoes what we typed)
            nl = out.find("\n")
            output = out[nl + 1 :] if nl >= 0 else ""
            start = len(sh.buf)
            sh.send('echo "RC=$? (#%d)"' % i)
            m = sh.wait_for(r"RC=(\d+) \(#%d\)\r?\n[\s\S]*?%s" % (i, prompt), start)
            if not m:
                results.append({"i": i, "cmd": cmd, "rc": None, "output": output.replace("\r\n", "\n")})
                raise RuntimeError("the exit-status echo after command #%d hung (no prompt within %gs): %s" % (i, timeout, cmd))
            results.append({"i": i, "cmd": cmd, "rc": int(m.group(1)), "output": output.replace("\r\n", "\n")})
    except Exception as e:  # noqa: BLE001 - report whatever went wrong
        error = str(e)
    finally:
        if not sh.eof:
            try:
                sh.send("exit")
                if not sh.reap(5):
                    sh.send("exit")  # "There are stopped jobs." asks for a second one
                    if not sh.reap(5):
                        sh.kill()
            except OSError:
                sh.kill()
        if sh.status is None:
            if not sh.reap(5):
                sh.kill()
        sh.wait_for(r"\Z.", len(sh.buf), timeout=0.2)  # drain what is left
    st = sh.status
    bash_status = None
    if st is not None:
        bash_status = "exit %d" % os.WEXITSTATUS(st) if os.WIFEXITED(st) else "signal %d" % os.WTERMSIG(st) if os.WIFSIGNALED(st) else "status %d" % st
    summary = {
        "job_control": job_control,
        "results": results,
        "transcript": sh.buf.replace("\r\n", "\n"),
        "error": error,
        "bash_status": bash_status,
    }
    sys.stdout.write("PTY_SHELL_RESULT " + json.dumps(summary) + "\n")
    sys.stdout.flush()
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
