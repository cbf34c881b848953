#!/usr/bin/python3
"""Small loopback helpers for bench/run (stdlib only).

  probe.py freeport [N]                 print N free TCP ports on 127.0.0.1
  probe.py wait-port PORT SECONDS       wait until 127.0.0.1:PORT accepts
  probe.py server-info FILE PID SECONDS wait for FILE (JSON with "port"),
                                        print the port; fail if PID dies
  probe.py get PORT TARGET [options]    one raw HTTP/1.1 request to
                                        127.0.0.1:PORT, check the answer
      --host H          Host header (default 127.0.0.1:PORT)
      --header 'N: v'   extra header (repeatable)
      --status N        expected status (default 200)
      --body-file F     expected body, byte for byte
      --method M        request method (default GET)
      --data S          request body (sent with Content-Length)
  probe.py proc PID                     print "rss_kib=N threads=N fds=N ticks=N"
  probe.py pgcpu PGID                   print the utime+stime clock ticks of the
                                        live processes in process group PGID
  probe.py cpu PID PGID...              print "total=N ours=N": busy clock ticks of
                                        the whole machine (/proc/stat) and of the
                                        processes in these process groups plus
                                        PID's reaped children
"""
import json
import os
import socket
import sys
import time


def freeport(n=1):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    print(" ".join(str(p) for p in ports))


def wait_port(port, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return 0
        except OSError:
            time.sleep(0.05)
    print(f"nothing listening on 127.0.0.1:{port} after {secs}s", file=sys.stderr)
    return 1


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def server_info(path, pid, secs):
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                info = json.load(f)
            port = int(info["port"])
            print(port)
            return 0
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if not alive(pid):
            print(f"process {pid} exited before writing {path}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"{path} not written (with a \"port\") within {secs}s", file=sys.stderr)
    return 1


def read_response(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError(f"connection closed before end of headers: {buf[:200]!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    status = int(parts[1])
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    hmap = {n.lower(): v for n, v in headers}

    def more():
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("connection closed inside body")
        return chunk

    if "content-length" in hmap:
        n = int(hmap["content-length"])
        while len(rest) < n:
            rest += more()
        body = rest[:n]
    elif "chunked" in hmap.get("transfer-encoding", "").lower():
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += more()
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += more()
            body += rest[:size]
            rest = rest[size + 2:]
            if size == 0:
                break
    else:
        body = rest
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return lines[0], headers, body


def get(argv):
    port, target = int(argv[0]), argv[1]
    host, status_want, body_file, extra = f"127.0.0.1:{port}", 200, None, []
    method, data = "GET", None
    i = 2
    while i < len(argv):
        opt, val = argv[i], argv[i + 1]
        if opt == "--host":
            host = val
        elif opt == "--header":
            extra.append(val)
        elif opt == "--status":
            status_want = int(val)
        elif opt == "--body-file":
            body_file = val
        elif opt == "--method":
            method = val
        elif opt == "--data":
            data = val.encode()
        else:
            print(f"unknown option {opt}", file=sys.stderr)
            return 2
        i += 2
    req = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
    for h in extra:
        req += h + "\r\n"
    if data is not None:
        req += f"Content-Length: {len(data)}\r\n"
    req += "\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(req.encode("latin-1") + (data or b""))
            status_line, headers, body = read_response(s)
    except (OSError, ValueError) as e:
        print(f"{method} {target} via 127.0.0.1:{port}: {e}", file=sys.stderr)
        return 1
    ok = True
    msg = [f"{method} {target} via 127.0.0.1:{port}: {status_line}"]
    if int(status_line.split(" ", 2)[1]) != status_want:
        ok = False
        msg.append(f"expected status {status_want}")
    if body_file is not None:
        with open(body_file, "rb") as f:
            want = f.read()
        if body != want:
            ok = False
            msg.append(f"body differs: got {len(body)} bytes {body[:120]!r}, "
                       f"want {len(want)} bytes")
    if not ok:
        for n, v in headers:
            msg.append(f"  {n}: {v}")
        if body_file is None:
            msg.append(f"  body: {body[:300]!r}")
        print("\n".join(msg), file=sys.stderr)
        return 1
    return 0


def proc(pid):
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime/stime are fields 14/15
    ticks = int(fields[11]) + int(fields[12])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    print(f"rss_kib={rss} threads={threads} fds={fds} ticks={ticks}")
    return 0


def cpu(argv):
    # argv: PARENT_PID PGID...; the parent's reaped children (cutime+cstime)
    # count as ours too: a wrk that has exited lives on only there.
    parent, want = int(argv[0]), set(int(p) for p in argv[1:])
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    total = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)
    ours = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) in want:  # field 5: pgrp
            ours += int(fields[11]) + int(fields[12])  # utime, stime
        if int(d) == parent:
            ours += int(fields[13]) + int(fields[14])  # cutime, cstime
    print(f"total={total} ours={ours}")
    return 0


def pgcpu(pgid):
    ticks = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    print(ticks)
    return 0


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, argv = sys.argv[1], sys.argv[2:]
    if cmd == "freeport":
        freeport(int(argv[0]) if argv else 1)
        return 0
    if cmd == "wait-port":
        return wait_port(int(argv[0]), float(argv[1]))
    if cmd == "server-info":
        return server_info(argv[0], int(argv[1]), float(argv[2]))
    if cmd == "get":
        return get(argv)
    if cmd == "proc":
        return proc(int(argv[0]))
    if cmd == "cpu":
        return cpu(argv)
    if cmd == "pgcpu":
        return pgcpu(int(argv[0]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
