#!/usr/bin/env python3
"""TLS client for upgrade tests: sends the same request (one immutable bytes
object, through CPython's ssl module and the system libssl) again and again
until the file --stop-file exists, one request every --interval seconds on a
keep-alive connection that is replaced every --per-connection requests (so
both running and new connections cross the upgrade).

Prints one line per request, flushed at once:
  OK <n> <unix time>                 response 2xx read
  ERR <n> <unix time> <error>        send or response failed (reconnects)
and at the end:
  APP_SENDS=<n>  APP_ERRORS=<n>  APP_UNCHANGED=yes|no  (the bytes object after every send == before)
"""
import argparse
import hashlib
import os
import socket
import ssl
import sys
import time


def read_response(sock, pending):
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
    return status, pending[length:]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--request-file", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--interval", type=float, default=0.03)
    p.add_argument("--per-connection", type=int, default=10)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    with open(args.request_file, "rb") as f:
        buf = f.read()
    had = hashlib.sha256(buf).hexdigest()
    ctx = ssl.create_default_context(cafile=args.cafile)
    sends = errors = 0
    unchanged = True
    sock = None
    pending = b""
    on_conn = 0
    while not os.path.exists(args.stop_file):
        try:
            if sock is None or on_conn >= args.per_connection:
                if sock is not None:
                    sock.close()
                raw = socket.create_connection((args.host, args.port), timeout=args.timeout)
                sock = ctx.wrap_socket(raw, server_hostname=args.host)
                pending = b""
                on_conn = 0
            sock.sendall(buf)
            sends += 1
            on_conn += 1
            if hashlib.sha256(buf).hexdigest() != had:
                unchanged = False
            status, pending = read_response(sock, pending)
            if not 200 <= status < 300:
                raise RuntimeError("HTTP status %d" % status)
            print("OK %d %.3f" % (sends, time.time()), flush=True)
        except Exception as err:
            errors += 1
            print("ERR %d %.3f %s: %s" % (sends, time.time(), type(err).__name__, err), flush=True)
            try:
                sock.close()
            except Exception:
                pass
            sock = None
        time.sleep(args.interval)
    if sock is not None:
        sock.close()
    print("APP_SENDS=%d" % sends, flush=True)
    print("APP_ERRORS=%d" % errors, flush=True)
    print("APP_UNCHANGED=" + ("yes" if unchanged else "no"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
