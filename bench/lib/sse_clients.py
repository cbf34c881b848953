#!/usr/bin/python3
"""Open many idle SSE streams through a proxy and measure it (stdlib asyncio).

  sse_clients.py --port P --target T [--host H] --count N --pid PID
                 --upstream-status FILE [--idle S] [--settle S] [--concurrency C]
                 [--open-timeout S] [--out FILE]

Steps: one warm-up stream (opened, first event read, closed); proxy RSS
"before"; N streams opened (at most C connection attempts in flight), each
counted open once its headers and first event arrived; wait until the
upstream reports them; proxy RSS "after"; proxy CPU (utime+stime from
/proc/PID/stat) over S idle seconds right after opening, and with --settle
over S more seconds starting that long after the last stream opened (the
steady state: libcurl 7.88 keeps each transfer's connect-timeout timer
armed, and it fires once per stream ~timeouts.connect after the transfer
started); how many streams are still open and how
many got unexpected data while idle; then all are closed and we watch how
fast the upstream side is released.  Prints one JSON object (and writes it to
--out).  Every wait is bounded.
"""
import argparse
import asyncio
import json
import os
import resource
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def proc_threads(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def upstream_open(path):
    try:
        with open(path) as f:
            kv = dict(p.split("=") for p in f.read().split())
        return int(kv["open"]), int(kv["total"])
    except (OSError, ValueError, KeyError):
        return -1, -1


class Stream:
    __slots__ = ("reader", "writer", "closed", "extra", "task")

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.closed = False
        self.extra = 0
        self.task = None


async def open_stream(a, request, timeout):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", a.port, limit=65536), timeout)
    try:
        writer.write(request)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status = head.split(b" ", 2)[1]
        if status != b"200":
            first = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise ValueError(f"status {status.decode()} ({first})")
        buf = b""
        deadline = time.monotonic() + timeout
        while not (b"data:" in buf and b"\n\n" in buf[buf.index(b"data:"):]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError()
            chunk = await asyncio.wait_for(reader.read(4096), left)
            if not chunk:
                raise ValueError("closed before the first event")
            buf += chunk
    except BaseException:
        writer.close()
        raise
    return Stream(reader, writer)


async def watch(s):
    """Runs while the stream is idle: anything read is unexpected."""
    try:
        while True:
            chunk = await s.reader.read(4096)
            if not chunk:
                break
            s.extra += len(chunk)
    except (OSError, asyncio.CancelledError):
        pass
    s.closed = True


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--target", required=True)
    ap.add_argument("--host", default=None)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--upstream-status", required=True)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--settle", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--open-timeout", type=float, default=180.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < a.count + 64:
        print(f"sse_clients: RLIMIT_NOFILE hard limit {hard} < {a.count}+64",
              file=sys.stderr)
        return 2

    host = a.host or f"127.0.0.1:{a.port}"
    request = (f"GET {a.target} HTTP/1.1\r\nHost: {host}\r\n"
               f"Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
               ).encode("latin-1")
    res = {"requested": a.count, "target": a.target}

    # Warm-up: the first stream pays one-off allocations.
    try:
        s = await open_stream(a, request, 10)
        s.writer.close()
    except Exception as e:  # noqa: BLE001 - report any failure as text
        res["error"] = f"warm-up stream failed: {type(e).__name__}: {e}"
        print(json.dumps(res))
        return 1
    t_end = time.monotonic() + 5
    while time.monotonic() < t_end and upstream_open(a.upstream_status)[0] > 0:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)

    res["rss_before_kib"] = proc_rss_kib(a.pid)
    res["fds_before"] = proc_fds(a.pid)
    res["threads"] = proc_threads(a.pid)

    sem = asyncio.Semaphore(a.concurrency)
    streams, errors = [], {}
    deadline = time.monotonic() + a.open_timeout

    async def one():
        async with sem:
            left = deadline - time.monotonic()
            if left <= 0:
                errors["open-timeout"] = errors.get("open-timeout", 0) + 1
                return
            try:
                s = await open_stream(a, request, min(left, 30))
                streams.append(s)
            except Exception as e:  # noqa: BLE001
                key = f"{type(e).__name__}: {e}"[:120]
                errors[key] = errors.get(key, 0) + 1

    t0 = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(a.count)]
    await asyncio.wait(tasks, timeout=a.open_timeout + 35)
    for t in tasks:
        if not t.done():
            t.cancel()
    res["open_seconds"] = round(time.monotonic() - t0, 2)
    res["opened"] = len(streams)
    res["open_errors"] = errors
    for s in streams:
        s.task = asyncio.create_task(watch(s))

    # Wait (bounded) until the upstream has seen them all.
    t_end = time.monotonic() + 10
    while time.monotonic() < t_end:
        if upstream_open(a.upstream_status)[0] >= len(streams):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # let the proxy settle
    res["upstream_open"] = upstream_open(a.upstream_status)[0]

    res["rss_after_kib"] = proc_rss_kib(a.pid)
    res["fds_after"] = proc_fds(a.pid)
    n = max(len(streams), 1)
    res["kib_per_stream"] = round(
        (res["rss_after_kib"] - res["rss_before_kib"]) / n, 2)

    ticks0, w0 = proc_ticks(a.pid), time.monotonic()
    await asyncio.sleep(a.idle)
    ticks1, w1 = proc_ticks(a.pid), time.monotonic()
    res["idle_seconds"] = round(w1 - w0, 2)
    res["idle_cpu_ticks"] = ticks1 - ticks0
    res["idle_cpu_percent"] = round(
        100.0 * (ticks1 - ticks0) / CLK_TCK / (w1 - w0), 2)
    if a.settle > 0:
        await asyncio.sleep(max(0.0, a.settle - (time.monotonic() - w0)))
        ticks0, w0 = proc_ticks(a.pid), time.monotonic()
        await asyncio.sleep(a.idle)
        ticks1, w1 = proc_ticks(a.pid), time.monotonic()
        res["settle_seconds"] = a.settle
        res["steady_idle_seconds"] = round(w1 - w0, 2)
        res["steady_idle_cpu_ticks"] = ticks1 - ticks0
        res["steady_idle_cpu_percent"] = round(
            100.0 * (ticks1 - ticks0) / CLK_TCK / (w1 - w0), 2)
    res["rss_idle_end_kib"] = proc_rss_kib(a.pid)
    res["still_open"] = sum(1 for s in streams if not s.closed)
    res["unexpected_bytes"] = sum(s.extra for s in streams)
    res["upstream_open_after_idle"] = upstream_open(a.upstream_status)[0]

    # Close everything; how quickly does the proxy release the upstream side?
    t_close = time.monotonic()
    for s in streams:
        s.writer.close()
    for s in streams:
        s.task.cancel()
    # Two clocks: the upstream server seeing its last connection closed, and
    # the proxy's own descriptor count back to where it was before (this one
    # does not depend on how fast the Python upstream notices).
    released = fds_back = None
    t_end = t_close + 10
    while time.monotonic() < t_end and (released is None or fds_back is None):
        now = round(time.monotonic() - t_close, 2)
        if released is None and upstream_open(a.upstream_status)[0] == 0:
            released = now
        if fds_back is None and proc_fds(a.pid) <= res["fds_before"] + 2:
            fds_back = now
        await asyncio.sleep(0.05)
    res["upstream_released_seconds"] = released
    res["proxy_fds_released_seconds"] = fds_back
    res["upstream_open_10s_after_close"] = (
        upstream_open(a.upstream_status)[0] if released is None else 0)
    await asyncio.sleep(0.5)
    res["rss_after_close_kib"] = proc_rss_kib(a.pid)
    res["fds_after_close"] = proc_fds(a.pid)

    out = json.dumps(res)
    print(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(out + "\n")
    return 0


def run():
    try:
        return asyncio.run(main())
    except (FileNotFoundError, ProcessLookupError) as e:
        print(json.dumps({"error": f"proxy process vanished: {e}"}))
        return 1


if __name__ == "__main__":
    sys.exit(run())
