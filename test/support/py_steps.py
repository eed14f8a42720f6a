#!/usr/bin/env python3
"""Scripted TLS client for kloak's destination-policy tests (CPython ssl, system libssl).

Runs a JSON list of steps (argv[1]) so one process can hold several
connections and interleave writes on them, from several threads:

  {"op": "open", "id": "a", "host": "127.0.0.2", "port": 443, "sni": "api.kloak.test" | null,
   "verify": true}             connect and handshake (sni null: no SNI; verify false: no cert check)
  {"op": "send", "id": "a", "n": 1}
                               n sendall()s of the request (env KLOAK_TEST_REQUEST, {{VAR}} expanded)
                               on connection a; each response is read (HTTP server)
  {"op": "close", "id": "a"}
  {"op": "sleep", "s": 1.5}
  {"op": "reuse_fd", "id": "a", "host": "127.0.0.3", "port": 9}
                               connect a plain TCP socket there and dup2 it onto a's fd
                               number: a's TLS object now writes into another socket
  {"op": "raw_send", "id": "a"}
                               one SSL write on a without reading a response
  {"op": "threads", "steps": [[...], [...]]}
                               run each list in its own thread, all started together

Prints SENT=<id> per completed send and DONE at the end. Exit 1 on any error.
"""
import json
import os
import re
import socket
import ssl
import sys
import threading

CA = os.environ["KLOAK_TEST_CA"]
conns = {}
lock = threading.Lock()
failed = []


def say(line):
    with lock:  # whole lines, even from several threads
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def request():
    raw = os.environ["KLOAK_TEST_REQUEST"]
    return re.sub(r"\{\{(\w+)\}\}", lambda m: os.environ.get(m.group(1), ""), raw).encode("latin1")


def read_response(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError("server closed before a response")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(rest) < need:
        rest += s.recv(65536)


def run(steps):
    for st in steps:
        op = st["op"]
        if op == "open":
            ctx = ssl.create_default_context(cafile=CA)
            if st.get("sni") is None:
                ctx.check_hostname = False  # no name to check; the CA still is
            if not st.get("verify", True):
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            family = socket.AF_INET6 if ":" in st["host"] else socket.AF_INET
            raw = socket.socket(family, socket.SOCK_STREAM)
            raw.connect((st["host"], st["port"]))
            s = ctx.wrap_socket(raw, server_hostname=st.get("sni"))
            with lock:
                conns[st["id"]] = s
        elif op == "send":
            s = conns[st["id"]]
            for _ in range(st.get("n", 1)):
                s.sendall(request())
                read_response(s)
                say(f"SENT={st['id']}")
        elif op == "raw_send":
            conns[st["id"]].sendall(request())
            say(f"SENT={st['id']}")
        elif op == "close":
            conns.pop(st["id"]).close()
        elif op == "sleep":
            threading.Event().wait(st["s"])
        elif op == "reuse_fd":
            s = conns[st["id"]]
            other = socket.create_connection((st["host"], st["port"]))
            os.dup2(other.fileno(), s.fileno())
            other.close()
        elif op == "threads":
            ts = [threading.Thread(target=guarded, args=(sub,)) for sub in st["steps"]]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        else:
            raise ValueError(f"unknown step {op}")


def guarded(steps):
    try:
        run(steps)
    except Exception as e:  # noqa: BLE001 - report and fail the run
        failed.append(e)
        print(f"ERROR={type(e).__name__}: {e}", file=sys.stderr, flush=True)


guarded(json.loads(sys.argv[1]))
say("DONE")
sys.exit(1 if failed else 0)
