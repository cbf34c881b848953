#!/usr/bin/python3
"""Idle SSE upstream for bench/run (stdlib asyncio).

Every request gets `200 text/event-stream` (chunked), one event, and then
silence: the connection stays open until the peer closes it.  The number of
open and total connections goes to --status FILE ("open=N total=N") about
every 0.2 s, so the bench can see what reached the upstream.

  sse_upstream.py --port N --status FILE [--max-seconds S]

Stops by itself after --max-seconds (default 1800) and on SIGTERM/SIGINT.
"""
import argparse
import asyncio
import os
import resource
import signal
import sys

EVENT = b'data: {"type":"response.created","bench":true}\n\n'
HEAD = (b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/event-stream\r\n"
        b"Cache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n"
        b"\r\n")
CHUNK = b"%x\r\n%s\r\n" % (len(EVENT), EVENT)

state = {"open": 0, "total": 0, "dirty": True}


async def handle(reader, writer):
    state["open"] += 1
    state["total"] += 1
    state["dirty"] = True
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + CHUNK)
        await writer.drain()
        # Silence until the peer goes away; discard anything it sends.
        while await reader.read(65536):
            pass
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        pass
    finally:
        state["open"] -= 1
        state["dirty"] = True
        writer.close()


async def status_writer(path):
    tmp = path + ".tmp"
    while True:
        if state["dirty"]:
            state["dirty"] = False
            with open(tmp, "w") as f:
                f.write(f"open={state['open']} total={state['total']}\n")
            os.replace(tmp, path)
        await asyncio.sleep(0.2)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--status", required=True)
    ap.add_argument("--max-seconds", type=float, default=1800)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(a.max_seconds, stop.set)

    server = await asyncio.start_server(handle, "127.0.0.1", a.port,
                                        backlog=4096, reuse_address=True)
    status = asyncio.create_task(status_writer(a.status))
    await stop.wait()
    status.cancel()
    server.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
