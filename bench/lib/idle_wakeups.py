#!/usr/bin/python3
"""How often an idle scopeproxy wakes up with N idle SSE streams open.

  idle_wakeups.py --bin PATH [--streams N] [--threads T] [--settle S]
                  [--window S] [--strace]

Starts lib/sse_upstream.py and one scopeproxy (gateway mode, --threads T,
--idle-timeout 300) on free loopback ports, opens N streams through it
(each counted once its first event arrived), waits --settle seconds (libcurl
fires its connect-timeout timer once per transfer ~10 s after it started,
see PERF.md), then over --window seconds counts per thread: voluntary
context switches (/proc/PID/task/TID/status) and times scheduled
(/proc/PID/task/TID/schedstat, 3rd field). With --strace it then attaches
`strace -c -f` for another window and prints its summary. Prints one JSON
object. Every process it starts it stops by its pid.
"""
import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def freeport():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def threads(pid):
    """{tid: (name, voluntary switches, times scheduled)}"""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{tid}"
        try:
            with open(base + "/comm") as f:
                name = f.read().strip()
            with open(base + "/status") as f:
                vol = next(int(line.split()[1]) for line in f
                           if line.startswith("voluntary_ctxt_switches:"))
            with open(base + "/schedstat") as f:
                runs = int(f.read().split()[2])
        except (OSError, StopIteration):
            continue
        out[tid] = (name, vol, runs)
    return out


async def open_streams(port, n):
    req = (b"GET /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
           b"Accept: text/event-stream\r\n\r\n" % port)
    conns = []
    sem = asyncio.Semaphore(64)

    async def one():
        async with sem:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(req)
            await w.drain()
            buf = b""
            while b"\n\n" not in buf.split(b"\r\n\r\n", 1)[-1]:
                if b"\r\n\r\n" in buf and not buf.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError("not a stream: %r" % buf[:300])
                data = await asyncio.wait_for(r.read(4096), 30)
                if not data:
                    raise RuntimeError("stream closed before its first event")
                buf += data
            conns.append(w)
    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def measure(a, pid, port):
    conns = await open_streams(port, a.streams)
    await asyncio.sleep(a.settle)
    t0 = threads(pid)
    await asyncio.sleep(a.window)
    t1 = threads(pid)
    per = []
    for tid, (name, vol, runs) in sorted(t1.items(), key=lambda kv: int(kv[0])):
        if tid in t0:
            per.append({"tid": int(tid), "name": name,
                        "voluntary_switches": vol - t0[tid][1],
                        "scheduled": runs - t0[tid][2]})
    res = {"streams": len(conns), "window_s": a.window, "settle_s": a.settle,
           "threads": per}
    if a.strace:
        p = await asyncio.create_subprocess_exec(
            "timeout", "-s", "INT", str(a.window), "strace", "-c", "-f",
            "-p", str(pid), stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        _, err = await p.communicate()
        res["strace_c"] = err.decode(errors="replace")
    for w in conns:
        w.close()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--settle", type=float, default=12.0)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--strace", action="store_true")
    a = ap.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp(prefix="idle-wakeups-")
    os.mkdir(tmp + "/codex-home")
    up_port = freeport()
    procs = []
    try:
        up = subprocess.Popen([sys.executable, HERE + "/sse_upstream.py",
                               "--port", str(up_port), "--status",
                               tmp + "/up.status", "--max-seconds", "600"])
        procs.append(up)
        if not wait_for(lambda: listening(up_port), 10):
            sys.exit("sse_upstream.py did not start")
        info = tmp + "/info.json"
        env = dict(os.environ, CODEX_HOME=tmp + "/codex-home")
        sp = subprocess.Popen([a.bin, "--listen", "127.0.0.1:0",
                               "--server-info", info, "--log-level", "warn",
                               "--threads", str(a.threads),
                               "--idle-timeout", "300",
                               "--max-connections", str(a.streams + 64),
                               "--gateway",
                               "/v1/=http://127.0.0.1:%d/v1/" % up_port],
                              env=env)
        procs.append(sp)
        if not wait_for(lambda: os.path.exists(info) and
                        os.path.getsize(info) > 0, 15):
            sys.exit("scopeproxy did not start")
        time.sleep(0.2)
        with open(info) as f:
            port = json.load(f)["port"]
        res = asyncio.run(measure(a, sp.pid, port))
        res["bin"] = a.bin
        print(json.dumps(res, indent=1))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
