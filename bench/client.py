#!/usr/bin/env python3
"""Benchmark TLS client for `bun bench/run.ts` (CPython ssl over the system libssl).

One blocking TLS connection to 127.0.0.1:PORT (or --connections N of them),
then one of two workloads:

  --workload request   keep-alive HTTP/1.1 loop: each request is ONE sendall of
                       exactly --size bytes (head + body), then the small
                       response is read. Latency = sendall start .. response read.
  --workload bulk      --size-byte records sent back to back with sendall (one
                       SSL_write per record). Byte 0 of each record is b"D"; a
                       final record starting with b"E" makes the server answer
                       "done <bytes>\\n", which stops the clock (so the
                       throughput counts bytes the server really read).
                       Latency = time of each sendall.

With --placeholder-env NAME the value of env var NAME (kloak's placeholder) is
put once into every request / record; otherwise filler of the same length is,
so every variant sends the same number of bytes. In a bulk record it sits at
--token-offset (default: the middle of the record).

With --connections N (request workload) the client opens N keep-alive TLS
connections first, sends one request on each (so every connection has had its
first write, and read the server's session tickets, before anything is
measured), then sends the requests round-robin across them. The handshakes and
that first round are timed (connect_s, prime_s) and not measured.

Each write reuses one prebuilt immutable bytes object (the app's memory is
patched and restored by kloak in place); at the end the client checks that the
object still holds the placeholder (RESTORED=yes|no).

A --warmup period (not measured) runs first, on the same connection. The run
stops after --duration seconds or --max-count writes, whichever comes first.

Output: a line {"event": "measure"} when the measured window starts, then
one JSON result line on stdout. With --hold the client then blocks until a
line (or EOF) arrives on stdin, so the harness can read /proc of the processes
around it while they are still alive. Exit status 0 on success, 1 on error.
"""
import argparse
import json
import os
import resource
import socket
import ssl
import sys
import time

RESPONSE_MAX = 1 << 16


def percentiles(samples):
    if not samples:
        return {}
    s = sorted(samples)
    n = len(s)

    def pct(p):
        # nearest-rank
        k = max(0, min(n - 1, int(round(p / 100.0 * n + 0.5)) - 1))
        return s[k]

    return {
        "n": n,
        "mean_ns": sum(s) // n,
        "min_ns": s[0],
        "p50_ns": pct(50),
        "p90_ns": pct(90),
        "p99_ns": pct(99),
        "p999_ns": pct(99.9),
        "max_ns": s[-1],
    }


def build_request(size, token):
    head_fmt = (
        "POST /bench/echo HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "User-Agent: kloak-bench/1\r\n"
        "Accept: */*\r\n"
        "Content-Type: application/octet-stream\r\n"
        "Authorization: Bearer %s\r\n"
        "Content-Length: %d\r\n"
        "\r\n"
    )
    # Content-Length's digits depend on the body length; two passes settle it.
    body_len = 0
    for _ in range(3):
        head = (head_fmt % (token.decode("latin1"), body_len)).encode("latin1")
        body_len = max(0, size - len(head))
    head = (head_fmt % (token.decode("latin1"), body_len)).encode("latin1")
    req = head + (b"b" * body_len)
    return req


def build_record(size, token, kind=b"D", off=None):
    rec = bytearray(b"d" * size)
    rec[0:1] = kind
    if off is None:
        off = size // 2
    if not 1 <= off <= size - len(token):
        raise ValueError("token offset %d does not fit a %d-byte record" % (off, size))
    rec[off : off + len(token)] = token
    return bytes(rec)


def read_response(sock, pending):
    """Reads one HTTP/1.1 response; returns leftover bytes."""
    while True:
        i = pending.find(b"\r\n\r\n")
        if i >= 0:
            break
        data = sock.recv(RESPONSE_MAX)
        if not data:
            raise ConnectionError("server closed before a full response head")
        pending += data
    head = pending[:i]
    rest = pending[i + 4 :]
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError("unexpected response %r" % head[:40])
    j = head.find(b"Content-Length: ")
    length = int(head[j + 16 :].split(b"\r\n", 1)[0]) if j >= 0 else 0
    while len(rest) < length:
        data = sock.recv(RESPONSE_MAX)
        if not data:
            raise ConnectionError("server closed inside a response body")
        rest += data
    return rest[length:]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--workload", choices=["request", "bulk"], required=True)
    p.add_argument("--size", type=int, required=True, help="bytes per write")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=0.3, help="unmeasured seconds first")
    p.add_argument("--max-count", type=int, default=1_000_000, help="bound on measured writes")
    p.add_argument("--placeholder-env", help="env var whose value goes into every write")
    p.add_argument("--token-len", type=int, required=True, help="placeholder/filler length")
    p.add_argument("--token-offset", type=int, help="bulk: where the placeholder/filler sits in a record")
    p.add_argument("--connections", type=int, default=1, help="request: keep-alive connections, used round-robin")
    p.add_argument("--hold", action="store_true", help="after the result, wait for stdin")
    args = p.parse_args()
    if args.connections < 1 or (args.connections > 1 and args.workload != "request"):
        sys.stderr.write("client: --connections N > 1 is for the request workload\n")
        return 2

    t_start = time.time_ns()  # wall clock: the harness compares with its own
    placeholder = None
    if args.placeholder_env:
        v = os.environb.get(args.placeholder_env.encode())
        if v is None:
            sys.stderr.write("client: env %s not set\n" % args.placeholder_env)
            return 1
        if len(v) != args.token_len:
            sys.stderr.write("client: env %s has %d bytes, expected %d\n" % (args.placeholder_env, len(v), args.token_len))
            return 1
        placeholder = v
    token = placeholder if placeholder is not None else b"f" * args.token_len

    if args.workload == "request":
        buf = build_request(args.size, token)
    else:
        buf = build_record(args.size, token, off=args.token_offset)
    assert len(buf) == args.size, (len(buf), args.size)

    if args.connections > 1:
        # One descriptor per connection, plus the interpreter's own.
        need = args.connections + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard if hard == resource.RLIM_INFINITY or hard >= need else need))
            except (ValueError, OSError) as err:
                sys.stderr.write("client: cannot raise RLIMIT_NOFILE to %d (soft %d, hard %d): %s\n" % (need, soft, hard, err))
                return 1

    ctx = ssl.create_default_context(cafile=args.cafile)
    c0 = time.perf_counter_ns()
    socks = []
    for _ in range(args.connections):
        raw = socket.create_connection((args.host, args.port), timeout=30)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(ctx.wrap_socket(raw, server_hostname=args.host))
    sock = socks[0]
    t_connected = time.time_ns()
    connect_s = (time.perf_counter_ns() - c0) / 1e9

    def mark():
        # Tells the harness the measured window starts (it samples /proc then).
        sys.stdout.write('{"event": "measure"}\n')
        sys.stdout.flush()

    clock = time.perf_counter_ns
    sendall = sock.sendall
    lat = []
    append = lat.append
    writes = 0
    pending = b""
    r0 = os.times()
    prime_s = 0.0

    # Several connections get their own loop: the one-connection loop below stays as it was (no
    # indexing per request), so its figures compare with earlier runs.
    if args.workload == "request" and len(socks) > 1:
        pendings = [b""] * len(socks)
        p0 = clock()
        for i, s in enumerate(socks):
            s.sendall(buf)
            pendings[i] = read_response(s, pendings[i])
            writes += 1
        prime_s = (clock() - p0) / 1e9
        nsock = len(socks)
        # warmup, round-robin from where priming left off
        k = 0
        end = clock() + int(args.warmup * 1e9)
        while clock() < end:
            s = socks[k]
            s.sendall(buf)
            pendings[k] = read_response(s, pendings[k])
            writes += 1
            k = (k + 1) % nsock
        warm_writes = writes
        mark()
        r0 = os.times()
        t0 = clock()
        end = t0 + int(args.duration * 1e9)
        n = 0
        while n < args.max_count:
            s = socks[k]
            a = clock()
            s.sendall(buf)
            pendings[k] = read_response(s, pendings[k])
            b = clock()
            append(b - a)
            n += 1
            k = (k + 1) % nsock
            if b >= end:
                break
        t1 = clock()
        writes += n
        measured_bytes = n * len(buf)
    elif args.workload == "request":
        # warmup
        end = clock() + int(args.warmup * 1e9)
        while clock() < end:
            sendall(buf)
            pending = read_response(sock, pending)
            writes += 1
        warm_writes = writes
        mark()
        r0 = os.times()
        t0 = clock()
        end = t0 + int(args.duration * 1e9)
        n = 0
        while n < args.max_count:
            a = clock()
            sendall(buf)
            pending = read_response(sock, pending)
            b = clock()
            append(b - a)
            n += 1
            if b >= end:
                break
        t1 = clock()
        writes += n
        measured_bytes = n * len(buf)
    else:
        end = clock() + int(args.warmup * 1e9)
        while clock() < end:
            sendall(buf)
            writes += 1
        warm_writes = writes
        mark()
        r0 = os.times()
        t0 = clock()
        end = t0 + int(args.duration * 1e9)
        n = 0
        while n < args.max_count:
            a = clock()
            sendall(buf)
            b = clock()
            append(b - a)
            n += 1
            if b >= end:
                break
        # End record: the server answers once it has read everything before it.
        fin = build_record(args.size, token, b"E", off=args.token_offset)
        sendall(fin)
        writes += n + 1
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(256)
            if not data:
                raise ConnectionError("server closed before acknowledging the end record")
            reply += data
        t1 = clock()
        server_bytes = int(reply.split()[1])
        expected = (warm_writes + n + 1) * len(buf)
        if server_bytes != expected:
            raise RuntimeError("server read %d bytes, client sent %d" % (server_bytes, expected))
        measured_bytes = n * len(buf)
    r1 = os.times()

    restored = None
    if placeholder is not None:
        restored = placeholder in buf
    elapsed = t1 - t0
    result = {
        "workload": args.workload,
        "size": len(buf),
        "measured": n,
        "warmup_writes": warm_writes,
        "writes_total": writes,
        "elapsed_ns": elapsed,
        "bytes": measured_bytes,
        "ops_per_s": n / (elapsed / 1e9),
        "mib_per_s": measured_bytes / (elapsed / 1e9) / (1 << 20),
        "latency": percentiles(lat),
        "cpu_user_s": r1.user - r0.user,
        "cpu_sys_s": r1.system - r0.system,
        "t_start_wall_ns": t_start,
        "t_connected_wall_ns": t_connected,
        "connections": len(socks),
        "connect_s": connect_s,
        "prime_s": prime_s,
        "placeholder_sent": placeholder is not None,
        "restored": restored,
        "tls_version": sock.version(),
        "cipher": sock.cipher()[0],
        "openssl": ssl.OPENSSL_VERSION,
        "python": sys.version.split()[0],
    }
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if args.hold:
        sys.stdin.readline()
    for s in socks:
        try:
            s.close()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as err:
        sys.stderr.write("client: %s: %s\n" % (type(err).__name__, err))
        sys.exit(1)
