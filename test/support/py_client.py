#!/usr/bin/env python3
"""Real TLS client for kloak tests: CPython's ssl module (system libssl).

Sends a request, held in one immutable `bytes` object, with SSLSocket.sendall
(which hands that object's own memory to SSL_write_ex), then reports what the
application sees in that object afterwards, so a test can prove kloak
substituted only on the wire and put the placeholder back:

  APP_HAD=<sha256 hex>            once per buffer, before any send
  APP_HAD_PLACEHOLDER=yes|no      (only when the placeholder env var is set)
  APP_SAW=<sha256 hex>            after every sendall
  APP_SAW_PLACEHOLDER=yes|no      after every sendall (placeholder env var set)
  STATUS=<code>                   every HTTP response read (not with --no-wait)
  APP_SENDS=<n>                   once at the end: sendall calls completed
  APP_UNCHANGED=yes|no            once at the end: every APP_SAW == its APP_HAD

{{NAME}} in the request is replaced by env var NAME. The request is the bytes of --request-file, or else of the env var named by
--request-env (default KLOAK_TEST_REQUEST). It is sent as-is (build the full
HTTP request yourself; see buildHttpRequest in clients.ts).

Exit status: 0 when every connection and response succeeded (HTTP 2xx), 1 on
any error (details on stderr), 2 on bad usage. A changed buffer does not fail
the exit status; assert on APP_UNCHANGED / APP_SAW_PLACEHOLDER instead.
"""
import argparse
import hashlib
import os
import socket
import ssl
import sys
import threading

lock = threading.Lock()
state = {"unchanged": True, "failed": False, "sends": 0}


def out(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def read_response(sock, pending):
    """Reads one HTTP/1.1 response (skipping 1xx); returns (status, leftover)."""
    while True:
        while b"\r\n\r\n" not in pending:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed before a full response head")
            pending += data
        head, _, pending = pending.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(pending) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed inside a response body")
            pending += data
        pending = pending[length:]
        if status >= 200:
            return status, pending


def worker(args, ctx, request, placeholder, shared):
    # One bytes object per thread unless --shared-buffer: bytes(bytearray(x))
    # always allocates a new object.
    buf = request if shared else bytes(bytearray(request))
    had = hashlib.sha256(buf).hexdigest()
    out("APP_HAD=" + had)
    if placeholder is not None:
        out("APP_HAD_PLACEHOLDER=" + ("yes" if placeholder in buf else "no"))
    try:
        for _ in range(args.connections):
            raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
            with ctx.wrap_socket(raw, server_hostname=args.sni or args.host) as sock:
                pending = b""
                for _ in range(args.repeat):
                    sock.sendall(buf)
                    saw = hashlib.sha256(buf).hexdigest()
                    out("APP_SAW=" + saw)
                    if placeholder is not None:
                        out("APP_SAW_PLACEHOLDER=" + ("yes" if placeholder in buf else "no"))
                    with lock:
                        state["sends"] += 1
                        if saw != had:
                            state["unchanged"] = False
                    if not args.no_wait:
                        status, pending = read_response(sock, pending)
                        out("STATUS=%d" % status)
                        if not 200 <= status < 300:
                            raise RuntimeError("HTTP status %d" % status)
    except Exception as err:  # report, keep other threads going
        with lock:
            state["failed"] = True
            sys.stderr.write("py_client: %s: %s\n" % (type(err).__name__, err))
            sys.stderr.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to connect to (default 127.0.0.1)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True, help="CA certificate (PEM) to trust")
    p.add_argument("--sni", help="server_hostname: SNI sent and name verified (default: --host; IPs send no SNI)")
    p.add_argument("--request-file", help="file whose bytes are the request")
    p.add_argument("--request-env", default="KLOAK_TEST_REQUEST", help="env var holding the request (if no --request-file)")
    p.add_argument("--placeholder-env", default="KLOAK_TEST_PLACEHOLDER", help="env var holding the placeholder to look for")
    p.add_argument("--repeat", type=int, default=1, help="sendall calls per connection (default 1)")
    p.add_argument("--connections", type=int, default=1, help="sequential connections per thread (default 1)")
    p.add_argument("--threads", type=int, default=1, help="concurrent threads, each with its own connections (default 1)")
    p.add_argument("--shared-buffer", action="store_true", help="all threads send the very same bytes object")
    p.add_argument("--no-wait", action="store_true", help="do not read responses; close after the last send")
    p.add_argument("--timeout", type=float, default=30.0, help="socket timeout in seconds (default 30)")
    args = p.parse_args()

    if args.request_file is not None:
        with open(args.request_file, "rb") as f:
            request = f.read()
    else:
        request = os.environb.get(args.request_env.encode())
        if request is None:
            p.error("no --request-file and env var %s is not set" % args.request_env)
    # {{NAME}} in the request stands for env var NAME: tests name a secret whose
    # placeholder exists only inside the kloak run.
    import re
    request = re.sub(rb"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}", lambda m: os.environb.get(m.group(1), b""), request)
    placeholder = os.environb.get(args.placeholder_env.encode()) or None

    ctx = ssl.create_default_context(cafile=args.cafile)
    threads = [
        threading.Thread(target=worker, args=(args, ctx, request, placeholder, args.shared_buffer))
        for _ in range(args.threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out("APP_SENDS=%d" % state["sends"])
    out("APP_UNCHANGED=" + ("yes" if state["unchanged"] else "no"))
    return 1 if state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
