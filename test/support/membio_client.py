#!/usr/bin/env python3
"""Memory-BIO TLS client for kloak tests: Python's SSLObject (asyncio's
sslproto) encrypts into a memory BIO, and the transport sends the ciphertext
after SSL_write returned.

  python3 membio_client.py --kind streams|aiohttp|httpx|uvloop --ca CA.pem --url URL [--url URL]... [--concurrent N]

Each URL gets N requests (default 1), run at once on one event loop, each on
a connection of its own: POST with header X-Api-Key and body "k=<value>" from
$API_KEY (the placeholder kloak gave the process). Prints STATUS=<code> per
response; exit 1 when any failed.
"""
import argparse
import asyncio
import os
import ssl
import sys
from urllib.parse import urlsplit

KEY = os.environ.get("API_KEY", "")
BODY = ("k=" + KEY).encode()


async def via_streams(url, ctx):
    u = urlsplit(url)
    reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=ctx)
    req = (
        "POST %s HTTP/1.1\r\nHost: %s\r\nX-Api-Key: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % (u.path or "/", u.hostname, KEY, len(BODY))
    ).encode() + BODY
    writer.write(req)
    await writer.drain()
    status = (await reader.readline()).split()[1].decode()
    await reader.read()
    writer.close()
    return int(status)


async def via_aiohttp(url, ctx):
    import aiohttp

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, force_close=True)) as s:
        async with s.post(url, data=BODY, headers={"X-Api-Key": KEY}) as r:
            await r.read()
            return r.status


async def via_httpx(url, ctx):
    import httpx

    async with httpx.AsyncClient(verify=ctx) as c:
        r = await c.post(url, content=BODY, headers={"X-Api-Key": KEY})
        return r.status_code


async def main(o):
    ctx = ssl.create_default_context(cafile=o.ca)
    fn = {"streams": via_streams, "uvloop": via_streams, "aiohttp": via_aiohttp, "httpx": via_httpx}[o.kind]
    jobs = [fn(url, ctx) for url in o.url for _ in range(o.concurrent)]
    failed = 0
    for r in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(r, BaseException):
            failed += 1
            sys.stderr.write("membio_client: %r\n" % (r,))
        else:
            print("STATUS=%d" % r, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kind", default="streams")
    p.add_argument("--ca", required=True)
    p.add_argument("--url", action="append", default=[])
    p.add_argument("--concurrent", type=int, default=1)
    o = p.parse_args()
    if o.kind == "uvloop":
        import uvloop

        uvloop.install()
    sys.exit(asyncio.run(main(o)))
