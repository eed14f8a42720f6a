#!/usr/bin/env python3
"""A TLS client that drives libssl directly (ctypes), for the attacks of test/security/.

It does what code inside a protected process could do with the library's own
API: set the fd, then swap the BIO; set the SNI after the handshake; write from
a buffer in shared memory; make the buffer read-only or move it from inside the
write call (a BIO of its own); share its fd table with another process. The
steps come as a JSON list in argv[1]:

  {"op": "tcp", "id": "t", "host": "127.0.0.1", "port": 8443}     a connected TCP socket
  {"op": "ssl", "id": "c"}                                         SSL_new (certificate check off)
  {"op": "set_fd", "id": "c", "sock": "t"}                         SSL_set_fd
  {"op": "sni", "id": "c", "name": "api.kloak.test"}               SSL_set_tlsext_host_name
  {"op": "connect", "id": "c"}                                     SSL_connect (the handshake)
  {"op": "buffer", "id": "b", "kind": "heap|shared|file|page"}     the request (env KLOAK_TEST_REQUEST,
                                                                   {{VAR}} expanded; or "data") in memory of
                                                                   that kind (page: an mmap of its own);
                                                                   "h2": true: an HTTP/2 preface, SETTINGS and
                                                                   a HEADERS frame whose header fields are the
                                                                   request's "Name: value" lines, Huffman-coded
                                                                   "template": its text with {{VAR}} expanded
                                                                   instead of the request; "repeat": n: the
                                                                   data n times over (a buffer larger than argv
                                                                   may carry)
  {"op": "write", "id": "c", "buf": "b", "n": 1}                   SSL_write of the buffer, n times; prints WROTE=<n>
                                                                   (the last return); "ex": true: SSL_write_ex,
                                                                   WROTE=<bytes written>; a return <= 0 also
                                                                   prints WRITE_ERROR=<SSL_get_error>
  {"op": "check", "buf": "b"}                                      BUF_<B>=placeholder|changed (after a write;
                                                                   "unchanged" for a buffer made without the
                                                                   placeholder), BUF_<B>_PLACEHOLDERS=<n>
                                                                   (occurrences of the placeholder in it)
  {"op": "mem_bio", "id": "c"}                                     SSL_set_bio(memory BIOs)
  {"op": "relay", "id": "c", "sock": "t"}                          what the memory BIO holds, sent to socket t
  {"op": "mem_handshake", "id": "c", "sock": "t", "decoy": "d", "split": true}
                                                                   SSL_connect over the memory BIOs, relayed
                                                                   to and from socket t (the ClientHello sent
                                                                   to socket d first, when given; to t in two
                                                                   sends, 1 byte and the rest, with split)
  {"op": "socket_bio", "id": "c", "sock": "t"}                     SSL_set_bio(a socket BIO on t)
  {"op": "app_bio", "id": "c", "sock": "t", "during_write": "mprotect:b|mremap:b|sleep:2|none"}
                                                                   SSL_set_bio(a BIO of this script that
                                                                   sends to t, doing that first)
  {"op": "flood_sni", "n": 40000}                                  n SSL objects, each given an SNI
  {"op": "share_fds"}                                              a second process that shares this
                                                                   fd table (clone CLONE_FILES) for 1.5 s
  {"op": "read", "id": "c"}                                        SSL_read once (a response)
  {"op": "sleep", "s": 0.2}
  {"op": "say", "text": "READY"}                                   prints READY=1 (a test waits for it)

Prints DONE at the end. Exit 1 on an error (the message on stderr). Values
are never printed: buffers are compared with the placeholder in the env var
named by KLOAK_TEST_PLACEHOLDER_ENV (default API_KEY).
"""
import ctypes
import ctypes.util
import json
import mmap
import os
import re
import signal
import socket
import sys
import tempfile

ssl = ctypes.CDLL("libssl.so.3")
crypto = ctypes.CDLL("libcrypto.so.3")
libc = ctypes.CDLL(None, use_errno=True)
pylibc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL across clone()

P = ctypes.c_void_p
for name, res, args in [
    ("TLS_client_method", P, []),
    ("SSL_CTX_new", P, [P]),
    ("SSL_CTX_set_verify", None, [P, ctypes.c_int, P]),
    ("SSL_new", P, [P]),
    ("SSL_free", None, [P]),
    ("SSL_set_fd", ctypes.c_int, [P, ctypes.c_int]),
    ("SSL_ctrl", ctypes.c_long, [P, ctypes.c_int, ctypes.c_long, P]),
    ("SSL_connect", ctypes.c_int, [P]),
    ("SSL_write", ctypes.c_int, [P, P, ctypes.c_int]),
    ("SSL_write_ex", ctypes.c_int, [P, P, ctypes.c_size_t, P]),
    ("SSL_read", ctypes.c_int, [P, P, ctypes.c_int]),
    ("SSL_get_error", ctypes.c_int, [P, ctypes.c_int]),
    ("SSL_set_bio", None, [P, P, P]),
]:
    f = getattr(ssl, name)
    f.restype, f.argtypes = res, args
for name, res, args in [
    ("BIO_s_mem", P, []),
    ("BIO_new", P, [P]),
    ("BIO_new_socket", P, [ctypes.c_int, ctypes.c_int]),
    ("BIO_read", ctypes.c_int, [P, P, ctypes.c_int]),
    ("BIO_write", ctypes.c_int, [P, P, ctypes.c_int]),
    ("BIO_ctrl_pending", ctypes.c_size_t, [P]),
    ("BIO_meth_new", P, [ctypes.c_int, ctypes.c_char_p]),
    ("BIO_meth_set_write", ctypes.c_int, [P, P]),
    ("BIO_meth_set_read", ctypes.c_int, [P, P]),
    ("BIO_meth_set_ctrl", ctypes.c_int, [P, P]),
    ("BIO_set_init", None, [P, ctypes.c_int]),
]:
    f = getattr(crypto, name)
    f.restype, f.argtypes = res, args
libc.mprotect.argtypes = [P, ctypes.c_size_t, ctypes.c_int]
libc.mremap.restype = P
libc.mremap.argtypes = [P, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, P]
libc.mmap.restype = P
libc.mmap.argtypes = [P, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
pylibc.syscall.restype = ctypes.c_long

SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
PAGE = mmap.PAGESIZE

ctx = ssl.SSL_CTX_new(ssl.TLS_client_method())
ssl.SSL_CTX_set_verify(ctx, 0, None)  # the attacks are about where bytes go, not who answers
socks = {}
conns = {}
bufs = {}  # id -> (address, length, keep-alive object)
originals = {}  # id -> the bytes the buffer was made with
callbacks = []  # ctypes callbacks must outlive their use
in_write = [False]  # an app BIO's "during_write" acts only inside SSL_write


def openssl_error():
    crypto.ERR_get_error.restype = ctypes.c_ulong
    crypto.ERR_error_string.restype = ctypes.c_char_p
    crypto.ERR_error_string.argtypes = [ctypes.c_ulong, P]
    return crypto.ERR_error_string(crypto.ERR_get_error(), None).decode()


def out(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def expand(text):
    """{{VAR}} replaced by env var VAR (a placeholder exists only inside the kloak run)."""
    return re.sub(r"\{\{(\w+)\}\}", lambda m: os.environ.get(m.group(1), ""), text).encode("latin1")


def request():
    return expand(os.environ["KLOAK_TEST_REQUEST"])


def huffman_table():
    here = os.path.dirname(os.path.abspath(__file__))
    text = open(os.path.join(here, "h2_huffman.mjs")).read()
    return [(int(c, 16), int(b)) for c, b in re.findall(r"\[(0x[0-9a-f]+), (\d+)\]", text)]


def huffman(data):
    table = huffman_table()
    acc, n, out = 0, 0, bytearray()
    for byte in data:
        code, bits = table[byte]
        acc, n = (acc << bits) | code, n + bits
        while n >= 8:
            out.append((acc >> (n - 8)) & 0xFF)
            n -= 8
            acc &= (1 << n) - 1
    if n:
        out.append(((acc << (8 - n)) | ((1 << (8 - n)) - 1)) & 0xFF)
    return bytes(out)


def hpack_int(value, prefix_bits, first):
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out, value = bytearray([first | top]), value - top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def h2_request():
    """Preface, SETTINGS, and HEADERS (stream 1, END_HEADERS | END_STREAM) with the
    request's header lines as literals without indexing, Huffman-coded."""
    fields = bytearray()
    for line in request().split(b"\r\n")[1:]:
        if b": " not in line:
            continue
        name, value = line.split(b": ", 1)
        for s in (name.lower(), value):
            h = huffman(s)
            fields += (b"\x00" if s is not value else b"") + hpack_int(len(h), 7, 0x80) + h

    def frame(ftype, flags, stream, payload):
        return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + stream.to_bytes(4, "big") + payload

    return b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 0x5, 1, bytes(fields))


def make_buffer(kind, data):
    n = len(data)
    if kind == "heap":
        b = ctypes.create_string_buffer(data, n)
        return ctypes.addressof(b), n, b
    size = (n + PAGE - 1) // PAGE * PAGE
    if kind == "shared":
        m = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    elif kind == "file":
        f = tempfile.TemporaryFile()
        f.truncate(size)
        m = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE)
    elif kind == "page":  # a page of its own (anonymous, private): may be protected or moved
        addr = libc.mmap(None, size, 3, 0x22, -1, 0)  # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
        ctypes.memmove(addr, data, n)
        return addr, n, ("page", size)
    else:
        raise ValueError("buffer kind " + kind)
    m.write(data)
    obj = ctypes.c_char.from_buffer(m)
    return ctypes.addressof(obj), n, (m, obj)


def app_bio(sock, during):
    """A BIO whose write callback first does `during` to a buffer, then sends to sock."""
    WRITE = ctypes.CFUNCTYPE(ctypes.c_int, P, P, ctypes.c_int)
    READ = ctypes.CFUNCTYPE(ctypes.c_int, P, P, ctypes.c_int)
    CTRL = ctypes.CFUNCTYPE(ctypes.c_long, P, ctypes.c_int, ctypes.c_long, P)
    fd = socks[sock].fileno()
    state = {"done": False}

    def bwrite(bio, data, n):
        if in_write[0] and during and not state["done"] and during != "none":
            what, _, bid = during.partition(":")
            if what == "sleep":  # the value is in the buffer now: say so, and take time
                out("IN_WRITE=1")
                import time

                time.sleep(float(bid))
                state["done"] = True
                return os.write(fd, ctypes.string_at(data, n))
            addr, length, keep = bufs[bid]
            page = addr - addr % PAGE
            if what == "mprotect":
                libc.mprotect(page, keep[1] if isinstance(keep, tuple) and keep[0] == "page" else PAGE, 1)  # PROT_READ
            elif what == "mremap":
                size = keep[1]
                new = libc.mmap(None, size, 0, 0x22, -1, 0)  # a place to move to
                libc.mremap(page, size, size, 3, new)  # MREMAP_MAYMOVE|MREMAP_FIXED
            state["done"] = True
        return os.write(fd, ctypes.string_at(data, n))

    def bread(bio, data, n):
        got = os.read(fd, n)
        ctypes.memmove(data, got, len(got))
        return len(got)

    def bctrl(bio, cmd, num, ptr):
        return 1 if cmd in (11, 12) else 0  # BIO_CTRL_FLUSH, BIO_CTRL_DUP

    w, r, c = WRITE(bwrite), READ(bread), CTRL(bctrl)
    callbacks.extend([w, r, c])
    meth = crypto.BIO_meth_new(0x400 | 100, b"kloak-test")
    crypto.BIO_meth_set_write(meth, ctypes.cast(w, P))
    crypto.BIO_meth_set_read(meth, ctypes.cast(r, P))
    crypto.BIO_meth_set_ctrl(meth, ctypes.cast(c, P))
    bio = crypto.BIO_new(meth)
    crypto.BIO_set_init(bio, 1)
    return bio


def run(steps):
    for st in steps:
        op = st["op"]
        if op == "tcp":
            family = socket.AF_INET6 if ":" in st["host"] else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.connect((st["host"], st["port"]))
            socks[st["id"]] = s
        elif op == "ssl":
            conns[st["id"]] = ssl.SSL_new(ctx)
        elif op == "set_fd":
            if ssl.SSL_set_fd(conns[st["id"]], socks[st["sock"]].fileno()) != 1:
                raise RuntimeError("SSL_set_fd failed")
        elif op == "sni":
            ssl.SSL_ctrl(conns[st["id"]], SSL_CTRL_SET_TLSEXT_HOSTNAME, 0, st["name"].encode())
        elif op == "connect":
            rc = ssl.SSL_connect(conns[st["id"]])
            if rc != 1:
                raise RuntimeError("SSL_connect failed: %d" % ssl.SSL_get_error(conns[st["id"]], rc))
        elif op == "buffer":
            if "template" in st:
                data = expand(st["template"])
            else:
                data = st["data"].encode("latin1") if "data" in st else h2_request() if st.get("h2") else request()
            data *= st.get("repeat", 1)
            bufs[st["id"]] = make_buffer(st.get("kind", "heap"), data)
            originals[st["id"]] = data
        elif op == "write":
            addr, n, _ = bufs[st["buf"]]
            in_write[0] = True
            for _ in range(st.get("n", 1)):
                if st.get("ex"):
                    written = ctypes.c_size_t(0)
                    rc = ssl.SSL_write_ex(conns[st["id"]], addr, n, ctypes.byref(written))
                else:
                    rc = ssl.SSL_write(conns[st["id"]], addr, n)
            in_write[0] = False
            out("WROTE=%d" % (written.value if st.get("ex") else rc))
            if rc <= 0:
                out("WRITE_ERROR=%d" % ssl.SSL_get_error(conns[st["id"]], rc))
        elif op == "check":
            addr, n, _ = bufs[st["buf"]]
            data = ctypes.string_at(addr, n)
            ph = os.environ[os.environ.get("KLOAK_TEST_PLACEHOLDER_ENV", "API_KEY")].encode()
            # An HTTP/2 buffer holds the placeholder Huffman-coded: compare with the original bytes.
            kept = data == originals[st["buf"]] and (ph in data or st.get("h2", False))
            same = "placeholder" if kept else "unchanged" if data == originals[st["buf"]] else "changed"
            out("BUF_%s=%s" % (st["buf"].upper(), same))
            out("BUF_%s_PLACEHOLDERS=%d" % (st["buf"].upper(), data.count(ph)))
        elif op == "mem_bio":
            r = crypto.BIO_new(crypto.BIO_s_mem())
            w = crypto.BIO_new(crypto.BIO_s_mem())
            ssl.SSL_set_bio(conns[st["id"]], r, w)
            conns[st["id"] + ".wbio"] = w
            conns[st["id"] + ".rbio"] = r
        elif op == "mem_handshake":
            c, sock = conns[st["id"]], socks[st["sock"]]
            w, r = conns[st["id"] + ".wbio"], conns[st["id"] + ".rbio"]
            for _ in range(100):
                rc = ssl.SSL_connect(c)
                n = crypto.BIO_ctrl_pending(w)
                if n:
                    b = ctypes.create_string_buffer(n)
                    got = crypto.BIO_read(w, b, n)
                    data = b.raw[: got]
                    if "decoy" in st:
                        # the first flight to another socket first, then where the handshake runs
                        socks[st.pop("decoy")].sendall(data)
                    if st.pop("split", False):
                        # one byte, then the rest: no send starts with a whole record header
                        sock.sendall(data[:1])
                        data = data[1:]
                    sock.sendall(data)
                if rc == 1:
                    break
                if ssl.SSL_get_error(c, rc) != 2:  # SSL_ERROR_WANT_READ
                    raise RuntimeError("memory-BIO handshake failed: " + openssl_error())
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("peer closed during the handshake")
                crypto.BIO_write(r, data, len(data))
            else:
                raise RuntimeError("memory-BIO handshake did not finish")
        elif op == "relay":
            w = conns[st["id"] + ".wbio"]
            n = crypto.BIO_ctrl_pending(w)
            b = ctypes.create_string_buffer(max(n, 1))
            got = crypto.BIO_read(w, b, n)
            socks[st["sock"]].sendall(b.raw[: max(got, 0)])
            out("RELAYED=%d" % max(got, 0))
        elif op == "socket_bio":
            bio = crypto.BIO_new_socket(socks[st["sock"]].fileno(), 0)
            ssl.SSL_set_bio(conns[st["id"]], bio, bio)
        elif op == "app_bio":
            bio = app_bio(st["sock"], st.get("during_write"))
            ssl.SSL_set_bio(conns[st["id"]], bio, bio)
        elif op == "flood_sni":
            for _ in range(st["n"]):
                x = ssl.SSL_new(ctx)
                ssl.SSL_ctrl(x, SSL_CTRL_SET_TLSEXT_HOSTNAME, 0, b"flood.kloak.test")
            out("FLOODED=%d" % st["n"])
        elif op == "share_fds":
            # clone(CLONE_FILES | SIGCHLD) with no new stack: a fork that shares the fd table.
            pid = pylibc.syscall(56, 0x400 | signal.SIGCHLD, 0, 0, 0, 0)
            if pid == 0:
                import time

                time.sleep(1.5)  # long enough to share the table during the writes
                os._exit(0)
            if pid < 0:
                raise OSError(ctypes.get_errno(), "clone(CLONE_FILES)")
            out("SHARED_WITH=%d" % pid)
        elif op == "read":
            b = ctypes.create_string_buffer(65536)
            out("READ=%d" % ssl.SSL_read(conns[st["id"]], b, 65536))
        elif op == "say":
            out("%s=1" % st["text"])
        elif op == "sleep":
            import time

            time.sleep(st["s"])
        else:
            raise ValueError("unknown op " + op)


try:
    run(json.loads(sys.argv[1]))
    out("DONE")
except Exception as e:  # noqa: BLE001
    sys.stderr.write("ossl_client: %s\n" % e)
    sys.exit(1)
