#!/usr/bin/python3
"""Start-up time and idle RSS of scopeproxy, for bench/run.

    startup.py BINARY WORKDIR RUNS [ARGS...]

Starts the daemon RUNS times with --listen 127.0.0.1:0 --server-info and
the given arguments, and measures the time from fork to the moment the
server-info file (written once the listener is open and the workers run)
appears, then the daemon's VmRSS half a second later, when it is idle,
and the part of it that is anonymous memory (RssAnon: heap, stacks; the
rest is pages of shared libraries, shared with every process mapping
them). Each daemon is stopped with SIGTERM and waited for. Prints one
JSON object: {"ms": [...], "rss_kib": [...], "anon_kib": [...]} or
{"error": "..."}.
"""
import json
import os
import signal
import subprocess
import sys
import time


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def one(binary, work, args):
    info = os.path.join(work, "startup-server-info.json")
    if os.path.exists(info):
        os.unlink(info)
    err = open(os.path.join(work, "startup.err"), "ab")
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "--listen", "127.0.0.1:0", "--server-info", info,
                          "--log-level", "warn"] + args,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    try:
        while not os.path.exists(info):
            if p.poll() is not None:
                raise RuntimeError(f"exited with status {p.returncode} before listening")
            if time.monotonic() - t0 > 10:
                raise RuntimeError("not listening after 10 s")
            time.sleep(0.0005)
        ms = (time.monotonic() - t0) * 1000
        time.sleep(0.5)
        return ms, status_kib(p.pid, "VmRSS"), status_kib(p.pid, "RssAnon")
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        err.close()


def main():
    binary, work, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = {"ms": [], "rss_kib": [], "anon_kib": []}
    try:
        for _ in range(runs):
            ms, rss, anon = one(binary, work, sys.argv[4:])
            out["ms"].append(round(ms, 1))
            out["rss_kib"].append(rss)
            out["anon_kib"].append(anon)
    except (OSError, RuntimeError) as e:
        out = {"error": str(e)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
