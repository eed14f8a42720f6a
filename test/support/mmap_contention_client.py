#!/usr/bin/env python3
"""TLS client whose memory map is busy while it writes (test/dataplane/mmap-contention.test.ts).

Usage: mmap_contention_client.py PORT CAFILE WRITES HAMMERS [private|shared]

HAMMERS threads map and unmap anonymous memory without pause (each mmap and
munmap takes the process's memory-map lock for writing; ctypes drops the GIL
around the calls), while the main thread sends WRITES requests on one TLS
connection, each with the placeholder in $API_KEY, and reads each response.
This is what a starting Go runtime or any allocator-heavy multi-threaded client
does to a TLS write: the kernel's lookup of the buffer's mapping (a trylock)
fails now and then. The request is written from private memory (default) or
from a MAP_SHARED mapping (where the value must never be written). Prints
WROTE=<n> and BUF=placeholder|changed at the end.
"""
import ctypes
import mmap
import os
import socket
import ssl
import sys
import threading

port, cafile, writes, hammers = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
where = sys.argv[5] if len(sys.argv) > 5 else "private"
token = os.environ["API_KEY"].encode()

libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
PROT_RW, MAP_PRIVATE_ANON, SIZE = 3, 0x22, 1 << 20
stop = threading.Event()


def hammer():
    while not stop.is_set():
        p = libc.mmap(None, SIZE, PROT_RW, MAP_PRIVATE_ANON, -1, 0)
        libc.munmap(p, SIZE)


threads = [threading.Thread(target=hammer, daemon=True) for _ in range(hammers)]
for t in threads:
    t.start()
ctx = ssl.create_default_context(cafile=cafile)
body = b"token=" + token
req = b"POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer " + token + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
if where == "shared":
    shared = mmap.mmap(-1, len(req), flags=mmap.MAP_SHARED)
    shared[:] = req
    buf = memoryview(shared)
else:
    buf = bytearray(req)  # one buffer, written again and again: kloak patches and restores it in place
with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
    n = 0
    for _ in range(writes):
        s.sendall(buf)
        n += 1
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("server closed")
            got += chunk
stop.set()
print(f"WROTE={n}")
print("BUF=" + ("placeholder" if bytes(buf) == req else "changed"))
