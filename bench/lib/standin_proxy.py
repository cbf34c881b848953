#!/usr/bin/python3
"""Stand-in for scopeproxy, used only to test bench/run itself.

NOT a proxy to measure or use: a few-line asyncio relay that accepts the
command line bench/run gives scopeproxy (--listen ADDR:PORT, --server-info
FILE, --gateway PREFIX=URL (repeatable; http:// or https://), --resolve
HOST:PORT:ADDR:APORT (repeatable), --upstream-ca FILE, --log-level X) and
handles requests in forward (absolute-form) and gateway (origin-form,
prefix table) mode with client keep-alive and an upstream connection pool.
Bodies, both ways, are relayed as they arrive (Content-Length or chunked
framing passed through as is).  It mints no credential: the sp-assert
target fails its check through it.

    SCOPEPROXY_BIN=bench/lib/standin_proxy.py bench/run
"""
import asyncio
import json
import os
import resource
import ssl
import sys
from urllib.parse import urlsplit


def parse_args(argv):
    opts = {"listen": "127.0.0.1:0", "server_info": None, "gateway": [], "resolve": {},
            "upstream_ca": None}
    i = 0
    while i < len(argv):
        a = argv[i]
        val = argv[i + 1] if i + 1 < len(argv) else ""
        if a == "--listen":
            opts["listen"] = val
        elif a == "--server-info":
            opts["server_info"] = val
        elif a == "--gateway":
            prefix, _, url = val.partition("=")
            opts["gateway"].append((prefix, url))
        elif a == "--resolve":
            host, port, addr, aport = val.rsplit(":", 3)
            opts["resolve"][(host, int(port))] = (addr, int(aport))
        elif a == "--upstream-ca":
            opts["upstream_ca"] = val
        i += 2 if a.startswith("--") and not a.startswith("--no-") else 1
    opts["gateway"].sort(key=lambda p: -len(p[0]))
    return opts


POOL = {}


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    return lines[0], [tuple(x.split(":", 1)) for x in lines[1:] if ":" in x]


async def relay_body(reader, writer, headers):
    h = {k.strip().lower(): v.strip() for k, v in headers}
    if "content-length" in h:
        n = int(h["content-length"])
        while n > 0:
            chunk = await reader.read(min(n, 65536))
            if not chunk:
                raise ConnectionError("upstream closed in body")
            writer.write(chunk)
            n -= len(chunk)
        return True
    if "chunked" in h.get("transfer-encoding", "").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";")[0], 16)
            if size == 0:
                writer.write(await reader.readuntil(b"\r\n"))
                return True
            data = await reader.readexactly(size + 2)
            writer.write(data)
            await writer.drain()
    while True:  # close-delimited
        chunk = await reader.read(65536)
        if not chunk:
            return False
        writer.write(chunk)
        await writer.drain()


async def handle(creader, cwriter, opts):
    try:
        while True:
            try:
                reqline, headers = await read_head(creader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            method, target, _ = reqline.split(" ", 2)
            if target.startswith("http://"):
                u = urlsplit(target)
                host, port, tls = u.hostname, u.port or 80, False
                path = target[len(f"http://{u.netloc}"):] or "/"
            else:
                for prefix, url in opts["gateway"]:
                    if target.startswith(prefix):
                        u = urlsplit(url)
                        tls = u.scheme == "https"
                        host, port = u.hostname, u.port or (443 if tls else 80)
                        path = u.path + target[len(prefix):]
                        break
                else:
                    body = b'{"error":{"message":"no route","type":"invalid_request_error","code":"no_route","param":null}}'
                    cwriter.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                    await cwriter.drain()
                    continue
            key = (host, port)
            conns = POOL.setdefault(key, [])
            if conns:
                ureader, uwriter = conns.pop()
            else:
                addr, aport = opts["resolve"].get(key, key)
                ctx = None
                if tls:
                    ctx = ssl.create_default_context(cafile=opts["upstream_ca"])
                ureader, uwriter = await asyncio.open_connection(
                    addr, aport, ssl=ctx, server_hostname=host if tls else None)
            out = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
            for k, v in headers:
                if k.strip().lower() not in ("host", "connection", "proxy-connection", "keep-alive"):
                    out.append(f"{k}:{v}")
            uwriter.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
            names = {k.strip().lower() for k, _ in headers}
            if "content-length" in names or "transfer-encoding" in names:
                await relay_body(creader, uwriter, headers)   # a request body
            status, rheaders = await read_head(ureader)
            resp = [status] + [f"{k}:{v}" for k, v in rheaders
                               if k.strip().lower() not in ("connection", "keep-alive")]
            cwriter.write(("\r\n".join(resp) + "\r\n\r\n").encode("latin-1"))
            reusable = await relay_body(ureader, cwriter, rheaders)
            await cwriter.drain()
            if reusable and len(conns) < 64:
                conns.append((ureader, uwriter))
            else:
                uwriter.close()
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        pass
    finally:
        cwriter.close()


async def main():
    opts = parse_args(sys.argv[1:])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    addr, _, port = opts["listen"].rpartition(":")
    server = await asyncio.start_server(lambda r, w: handle(r, w, opts),
                                        addr, int(port), backlog=4096)
    real = server.sockets[0].getsockname()[1]
    if opts["server_info"]:
        tmp = opts["server_info"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"port": real, "pid": os.getpid(), "listen": f"{addr}:{real}"}, f)
        os.replace(tmp, opts["server_info"])
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
