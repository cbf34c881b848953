#!/usr/bin/python3
"""Summary for bench/run: medians over rounds, ratios, idle streams, targets.

Reads the files bench/run writes in its work directory:
  --meta FILE        free text lines printed first
  --targets FILE     name<TAB>kind<TAB>description<TAB>failure<TAB>closes
                     (closes=1: the server closes each connection after
                     the response without "Connection: close"; wrk then
                     counts one read error per request, which is ignored)
  --results FILE     "target=N round=N key=value ..." one line per wrk run
  --streams FILE     JSON from sse_clients.py (may be missing)
  --streams-note S   why streams were skipped/clamped
  --scopeproxy-log F the daemon's stderr excerpt (line count reported)
  --https FILE       JSON lines from the HTTPS part (lib/https.sh, lib/tlsload.c)
  --https-notes FILE notes from the HTTPS part (skips, failures), one a line
  --startup FILE     JSON from startup.py: start-up ms and idle RSS per run
  --headcost FILE    JSON lines from headcost.py (perf, callgrind): the
                     request-head validator's share of the daemon's work
  --headcost-note S  why a part of it did not run
  --headcost-funcs S the functions counted as the validator
"""
import argparse
import json
import os
import statistics

# Targets from issue 2 ("Benchmark").
GOAL_VS_NGINX = 1.0
GOAL_VS_TINYPROXY = 3.0
GOAL_P99_ADDED_MS = 1.0
GOAL_KIB_PER_STREAM = 16.0
GOAL_IDLE_CPU_PCT = 1.0  # "idle CPU ~0": below 1 % of one core
NOISY_OTHER_PCT = 10.0   # others' share of the machine during a run
NOISY_SPREAD = 0.30      # (max - min) / median req/s across rounds
# Issue 3: the credentialed route against pass-through.
GOAL_ASSERT_VS_PASSTHROUGH = 0.9
# Issue 4: intercepted HTTPS against mitmproxy, cold host leaf.
GOAL_VS_MITM = 20.0
GOAL_COLD_LEAF_MS = 5.0
# Issue 13: the performance table.
GOAL13_ASSERT_VS_POST = 0.95
GOAL13_ICPT_VS_FORWARD = 0.8
GOAL13_NEWCONN_RPS = 1000.0
GOAL13_TUNNEL_VS_DIRECT = 0.9
GOAL13_TUNNEL_SPREAD = 0.2   # (max - min) / median MB/s: "stable"
GOAL13_STARTUP_MS = 50.0
GOAL13_IDLE_RSS_KIB = 8 * 1000 * 1000 / 1024   # 8 MB
# Issue 12: the request-head validator's share of CPU per request.
GOAL12_VALIDATOR_PCT = 5.0
PROXY_NAMES = {"sp_tls": "scopeproxy", "mitm": "mitmproxy", "direct": "direct"}


def load_results(path):
    runs = {}
    with open(path) as f:
        for line in f:
            kv = dict(p.split("=", 1) for p in line.split() if "=" in p)
            if "target" in kv:
                runs.setdefault(kv["target"], []).append(kv)
    return runs


def med(vals):
    return statistics.median(vals) if vals else None


def summarize(runs, closes=False):
    good = [r for r in runs if "rps" in r and "failed" not in r]
    if not good:
        return None
    f = lambda k: [float(r[k]) for r in good]  # noqa: E731
    kinds = ["err_connect", "err_write", "err_status", "err_timeout"]
    errs = sum(int(r.get(k, 0)) for r in good for k in kinds)
    reads = sum(int(r.get("err_read", 0)) for r in good)
    # A closing server costs one read error per connection, i.e. at most one
    # per request (plus the final ones); more than that is a real error.
    allowed = sum(int(r["requests"]) + 2 * 1024 for r in good) if closes else 0
    if reads > allowed:
        errs += reads
    status = sum(int(r.get("err_status", 0)) for r in good)
    return {
        "rounds": len(good),
        "rps": med(f("rps")),
        "rps_min": min(f("rps")),
        "rps_max": max(f("rps")),
        "p50_ms": med(f("p50_us")) / 1000,
        "p90_ms": med(f("p90_us")) / 1000,
        "p99_ms": med(f("p99_us")) / 1000,
        "p999_ms": med(f("p999_us")) / 1000,
        "errors": errs,
        "read_errors": reads,
        "status_errors": status,
        "requests": sum(int(r["requests"]) for r in good),
        "bytes_per_req": (sum(int(r["bytes"]) for r in good)
                          / max(1, sum(int(r["requests"]) for r in good))),
        "crashed": any(r.get("crashed") == "1" for r in runs),
        "other_cpu": max((float(r.get("other_cpu_pct", 0)) for r in good), default=0.0),
        "cpu_us_req": med([float(r["target_cpu_us"]) / int(r["requests"]) for r in good
                           if "target_cpu_us" in r and int(r["requests"]) > 0]),
        "cpu_us_all": [float(r["target_cpu_us"]) / int(r["requests"]) for r in good
                       if "target_cpu_us" in r and int(r["requests"]) > 0],
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta")
    ap.add_argument("--targets")
    ap.add_argument("--results")
    ap.add_argument("--streams")
    ap.add_argument("--streams-note", default="")
    ap.add_argument("--scopeproxy-log")
    ap.add_argument("--https")
    ap.add_argument("--https-notes")
    ap.add_argument("--syscalls")
    ap.add_argument("--syscalls-note", default="")
    ap.add_argument("--startup")
    ap.add_argument("--headcost")
    ap.add_argument("--headcost-note", default="")
    ap.add_argument("--headcost-funcs", default="")
    a = ap.parse_args()

    out = []
    p = out.append
    p("scopeproxy benchmark (bench/run)")
    p("=" * 78)
    with open(a.meta) as f:
        out.extend(line.rstrip("\n") for line in f)
    p("")

    targets = []
    with open(a.targets) as f:
        for line in f:
            name, kind, desc, fail, closes = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            targets.append((name, kind, desc, fail, closes == "1"))
    runs = load_results(a.results)
    stats = {name: summarize(runs.get(name, []), closes)
             for name, _, _, _, closes in targets}
    direct = stats.get("direct")

    p("Throughput and latency (median over rounds)")
    p("-" * 78)
    p(f"{'target':<14}{'req/s':>9}{'min..max':>15}{'p50 ms':>9}{'p99 ms':>9}"
      f"{'+p99 ms':>9}{'errors':>8}{'bytes/req':>10}{'CPU us/req':>11}{'others%':>8}")
    for name, kind, desc, fail, closes in targets:
        s = stats[name]
        if s is None:
            p(f"{name:<14}  {'no result' if not fail else 'FAILED'}: {fail or 'no wrk result'}")
            continue
        added = "" if direct is None or name == "direct" else f"{s['p99_ms'] - direct['p99_ms']:+.3f}"
        mark = "  CRASHED" if s["crashed"] else ""
        cpu = "-" if s["cpu_us_req"] is None else f"{s['cpu_us_req']:.0f}"
        p(f"{name:<14}{s['rps']:>9.0f}{s['rps_min']:>8.0f}..{s['rps_max']:<5.0f}"
          f"{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{added:>9}{s['errors']:>8}"
          f"{s['bytes_per_req']:>10.0f}{cpu:>11}{s['other_cpu']:>8.1f}{mark}")
    p("")
    busy = [n for n, *_ in targets if stats[n] and stats[n]["other_cpu"] > NOISY_OTHER_PCT]
    spread = [n for n, *_ in targets if stats[n] and stats[n]["rounds"] > 1
              and (stats[n]["rps_max"] - stats[n]["rps_min"]) / stats[n]["rps"] > NOISY_SPREAD]
    noisy = bool(busy or spread)
    if busy:
        p(f"  ! NOISY: other processes used more than {NOISY_OTHER_PCT:g} % of the machine during "
          f"runs of {', '.join(busy)} (others% = their highest share in any round).")
    if spread:
        p(f"  ! NOISY: req/s varied by more than {NOISY_SPREAD:.0%} across rounds for {', '.join(spread)}.")
    if noisy:
        p("    Rerun on a quiet machine before trusting ratios or added latency.")
        p("")
    for name, kind, desc, fail, closes in targets:
        p(f"  {name:<12} {desc}")
        if fail:
            p(f"  {'':<12} ! {fail}")
        s = stats[name]
        if s and closes and s["read_errors"] and not s["errors"]:
            p(f"  {'':<12}   closes every connection after the response: "
              f"{s['read_errors']} wrk read errors from that, not counted")
        if s and s["errors"]:
            p(f"  {'':<12} ! {s['errors']} wrk errors ({s['status_errors']} HTTP status >= 400)"
              " in all rounds: its figures do not count")
    p("")

    def usable(name):
        s = stats.get(name)
        return s is not None and not s["errors"] and not s["crashed"]

    checks = []
    checks3 = []
    sp_targets = [n for n, k, *_ in targets if k == "scopeproxy"]
    if sp_targets:
        p("Ratios (req/s medians) and p99 added over direct")
        p("-" * 78)
        for n in sp_targets:
            for peer in ("nginx", "tinyproxy"):
                if stats.get(n) and stats.get(peer):
                    ratio = stats[n]["rps"] / stats[peer]["rps"]
                    note = "" if usable(n) and usable(peer) else "   (errors: not valid)"
                    p(f"  {n} / {peer:<10} {ratio:6.2f}x{note}")
                    if n in ("sp-forward", "sp-gateway"):
                        goal = GOAL_VS_NGINX if peer == "nginx" else GOAL_VS_TINYPROXY
                        checks.append((f"{n} throughput >= {goal:g}x {peer}",
                                       f"{ratio:.2f}x", usable(n) and usable(peer) and ratio >= goal))
            if n == "sp-assert":
                for base in ("sp-gateway", "sp-post"):
                    if stats.get(n) and stats.get(base):
                        ratio = stats[n]["rps"] / stats[base]["rps"]
                        ok = usable(n) and usable(base)
                        note = "" if ok else "   (errors: not valid)"
                        p(f"  {n} / {base:<10} {ratio:6.2f}x{note}")
                        what = ("credentialed / pass-through GET" if base == "sp-gateway"
                                else "credentialed / same POST passed through")
                        checks3.append((f"{n} / {base} >= {GOAL_ASSERT_VS_PASSTHROUGH:g}x",
                                        f"{ratio:.2f}x  ({what})",
                                        ok and ratio >= GOAL_ASSERT_VS_PASSTHROUGH))
            if stats.get(n) and direct:
                added = stats[n]["p99_ms"] - direct["p99_ms"]
                p(f"  {n} p99 added vs direct  {added:+.3f} ms")
                if n in ("sp-forward", "sp-gateway"):
                    checks.append((f"{n} p99 added <= {GOAL_P99_ADDED_MS:g} ms",
                                   f"{added:+.3f} ms",
                                   None if added < -GOAL_P99_ADDED_MS else
                                   usable(n) and added <= GOAL_P99_ADDED_MS))
        p("")
    for peer in ("nginx", "tinyproxy"):
        if stats.get(peer) and direct:
            p(f"  (peer) {peer} p99 added vs direct  {stats[peer]['p99_ms'] - direct['p99_ms']:+.3f} ms")
    p("")

    p("Idle SSE streams through scopeproxy")
    p("-" * 78)
    st = None
    if a.streams and os.path.exists(a.streams) and os.path.getsize(a.streams):
        with open(a.streams) as f:
            st = json.load(f)
    if a.streams_note:
        p(f"  note: {a.streams_note}")
    if st and "error" not in st:
        opened, req = st["opened"], st["requested"]
        p(f"  streams open          {opened} of {req} requested "
          f"(opened in {st['open_seconds']} s; upstream saw {st['upstream_open']})")
        if st.get("open_errors"):
            for k, v in sorted(st["open_errors"].items(), key=lambda kv: -kv[1])[:5]:
                p(f"    ! {v} failed: {k}")
        p(f"  RSS before / after    {st['rss_before_kib']} KiB / {st['rss_after_kib']} KiB"
          f"  (threads {st['threads']}, fds {st['fds_before']} -> {st['fds_after']})")
        p(f"  RSS per open stream   {st['kib_per_stream']:.2f} KiB")
        p(f"  idle CPU              {st['idle_cpu_percent']:.2f} % of one core "
          f"({st['idle_cpu_ticks']} ticks in {st['idle_seconds']} s)")
        if "steady_idle_cpu_percent" in st:
            p(f"  idle CPU, steady      {st['steady_idle_cpu_percent']:.2f} % of one core "
              f"({st['steady_idle_cpu_ticks']} ticks in {st['steady_idle_seconds']} s, from "
              f"{st['settle_seconds']:g} s after opening: past libcurl's connect-timeout timer, "
              f"which fires once per stream)")
        p(f"  after idle            {st['still_open']} still open, "
          f"{st['unexpected_bytes']} unexpected bytes, upstream open {st['upstream_open_after_idle']}")
        rel = st.get("upstream_released_seconds")
        fdr = st.get("proxy_fds_released_seconds")
        p("  released after close  " +
          (f"proxy's fds back to before in {fdr} s; " if fdr is not None else
           "proxy's fds NOT back to before within 10 s; ") +
          (f"upstream saw all closed in {rel} s" if rel is not None else
           f"upstream NOT all closed within 10 s ({st['upstream_open_10s_after_close']} still open)"))
        p(f"  RSS after close       {st['rss_after_close_kib']} KiB, fds {st['fds_after_close']}")
        ok_open = opened == req and st["still_open"] == opened
        checks.append((f"RSS per stream <= {GOAL_KIB_PER_STREAM:g} KiB",
                       f"{st['kib_per_stream']:.2f} KiB", ok_open and st["kib_per_stream"] <= GOAL_KIB_PER_STREAM))
        idle, what = idle_cpu(st)
        checks.append((f"idle CPU ~0 (< {GOAL_IDLE_CPU_PCT:g} %){what}",
                       f"{idle:.2f} %", ok_open and idle < GOAL_IDLE_CPU_PCT))
        if not ok_open:
            p("  ! not every requested stream stayed open: the stream figures do not count")
    elif st:
        p(f"  ! {st['error']}")
    elif not a.streams_note:
        p("  no result")
    p("")

    if a.scopeproxy_log and os.path.exists(a.scopeproxy_log) and os.path.getsize(a.scopeproxy_log):
        with open(a.scopeproxy_log) as f:
            lines = [ln for ln in f if not ln.startswith("== ")]
        shown = os.path.relpath(a.scopeproxy_log)
        p(f"scopeproxy stderr at --log-level warn: {len(lines)} line(s) kept in "
          f"{shown if not shown.startswith('..') else a.scopeproxy_log}; first ones:")
        for ln in lines[:5]:
            p("  | " + ln.rstrip("\n")[:150])
        p("")

    syscalls_section(p, a.syscalls, a.syscalls_note, stats)

    tls = {}
    checks4 = https_section(p, a.https, a.https_notes, tls)
    startup = startup_section(p, a.startup)
    checks12 = headcost_section(p, a.headcost, a.headcost_note, a.headcost_funcs)

    def verdicts(title, cl, width=40):
        p(title)
        p("-" * 78)
        for what, val, ok in cl:
            verdict = (ok if ok in ("info", "skipped") else "noisy" if ok is None
                       else "met" if ok else "NOT met")
            p(f"  [{verdict:^7}] {what:<{width}} {val}")

    if checks:
        verdicts("Issue 2 targets", checks)
        if noisy:
            p("  (the throughput and latency verdicts above come from a NOISY run)")
        p("")
    if checks3:
        verdicts("Issue 3 targets (credentialed route)", checks3, 28)
        if noisy:
            p("  (from a NOISY run)")
        p("")
    if checks4:
        verdicts("Issue 4 targets (HTTPS_PROXY)", checks4, 44)
        p("")
    checks13 = issue13_checks(stats, usable, st, tls, startup)
    if checks13:
        verdicts("Issue 13 targets (performance)", checks13, 44)
        if noisy:
            p("  (req/s and latency verdicts come from a NOISY run; CPU us/req holds up better)")
        p("")
    if checks12:
        verdicts("Issue 12 targets (hostile input)", checks12, 44)
        p("")
    print("\n".join(out))


def spread_of(vals):
    m = statistics.median(vals)
    return (max(vals) - min(vals)) / m if m else 0.0


def idle_cpu(st):
    """The idle-CPU figure judged against "~0": the steady window when the
    run has one (a one-time timer per stream is not a periodic scan)."""
    if "steady_idle_cpu_percent" in st:
        return st["steady_idle_cpu_percent"], ", steady"
    return st["idle_cpu_percent"], ""


def startup_section(p, path):
    """Start-up to listening and idle RSS (startup.py); returns its JSON."""
    if not path or not os.path.exists(path) or not os.path.getsize(path):
        return None
    with open(path) as f:
        su = json.load(f)
    p("Start-up (fork to listening with workers up) and idle RSS")
    p("-" * 78)
    if "error" in su:
        p(f"  ! {su['error']}")
    else:
        ms, rss = su["ms"], [r for r in su["rss_kib"] if r]
        p(f"  start-up      median {statistics.median(ms):.1f} ms  ({min(ms):.1f}..{max(ms):.1f}, {len(ms)} runs)")
        if rss:
            p(f"  idle RSS      median {statistics.median(rss)} KiB  ({min(rss)}..{max(rss)})")
        anon = [r for r in su.get("anon_kib", []) if r]
        if anon:
            p(f"    anonymous   median {statistics.median(anon)} KiB  (the rest: shared library pages)")
    p("")
    return su


def headcost_section(p, path, note, funcs):
    """The request-head validator's share of the daemon's work on the
    forward keep-alive load (lib/headcost.sh); returns Issue 12's checks."""
    rows = {r.get("tool"): r for r in load_jsonl(path)}
    if not rows and not note:
        return []
    p("Request-head validator's share of the daemon's work (sp-forward, keep-alive)")
    p("-" * 78)
    if funcs:
        p(f"  validator: {', '.join(funcs.split())} (inclusive: with all they call)")
    pf, cg = rows.get("perf"), rows.get("callgrind")
    if pf and pf.get("incl_pct") is not None:
        kp = pf.get("kernel_pct")
        p(f"  perf ({pf.get('event') or '?'}, --call-graph dwarf, every thread): "
          f"{pf['incl_pct']:.2f} % of {pf['samples']} samples inclusive, {pf['self_pct']:.2f} % self")
        p(f"    ({pf.get('seconds', '?')} s, wrk -c{pf.get('connections', '?')}, "
          f"{pf.get('requests', '?')} requests; "
          f"{'?' if kp is None else f'{kp:.0f}'} % of the samples in the kernel)")
    if cg and cg.get("incl_pct") is not None:
        p(f"  callgrind (instructions, one worker, whole worker life): {cg['incl_pct']:.2f} % inclusive "
          f"({cg['validator_instructions_per_request']:.0f} of "
          f"{cg['instructions_per_request']:.0f} per request, {cg['requests']} requests)")
    for n in filter(None, (s.strip() for s in note.split(";"))):
        p(f"  ! {n}")
    p("")
    cl = []
    goal = f"validator <= {GOAL12_VALIDATOR_PCT:.0f} % of CPU per request"
    if pf and pf.get("incl_pct") is not None:
        cl.append((goal + " (perf)", f"{pf['incl_pct']:.2f} %", pf["incl_pct"] <= GOAL12_VALIDATOR_PCT))
    if cg and cg.get("incl_pct") is not None:
        cl.append((goal + " (callgrind)", f"{cg['incl_pct']:.2f} %", cg["incl_pct"] <= GOAL12_VALIDATOR_PCT))
    if not cl:
        cl.append((goal, "no figure (see above)", "skipped"))
    return cl


def issue13_checks(stats, usable, st, tls, su):
    """Issue 13's table, each figure against its goal."""
    cl = []
    fw, ng = stats.get("sp-forward"), stats.get("nginx")
    if fw and ng:
        ok = usable("sp-forward") and usable("nginx")
        cl.append(("forward throughput >= 1.0x nginx (same workers)",
                   f"{fw['rps'] / ng['rps']:.2f}x ({fw['rps']:.0f} vs {ng['rps']:.0f} req/s)",
                   ok and fw["rps"] >= ng["rps"]))
        if fw["cpu_us_req"] and ng["cpu_us_req"]:
            cl.append(("CPU per request <= nginx's",
                       f"{fw['cpu_us_req']:.0f} vs {ng['cpu_us_req']:.0f} us",
                       ok and fw["cpu_us_req"] <= ng["cpu_us_req"]))
        cl.append(("p99 <= nginx's", f"{fw['p99_ms']:.2f} vs {ng['p99_ms']:.2f} ms",
                   ok and fw["p99_ms"] <= ng["p99_ms"]))
    sa, sp = stats.get("sp-assert"), stats.get("sp-post")
    if sa and sp:
        ok = usable("sp-assert") and usable("sp-post")
        cpu = ""
        if sa["cpu_us_req"] and sp["cpu_us_req"]:
            cpu = f"; CPU/req {sp['cpu_us_req'] / sa['cpu_us_req']:.2f}x"
        cl.append((f"credentialed / pass-through POST >= {GOAL13_ASSERT_VS_POST:g}x",
                   f"{sa['rps'] / sp['rps']:.2f}x req/s{cpu}",
                   ok and sa["rps"] / sp["rps"] >= GOAL13_ASSERT_VS_POST))
    if st and "error" not in st:
        ok_open = st["opened"] == st["requested"] and st["still_open"] == st["opened"]
        cl.append(("RSS per open idle SSE stream <= 16 KiB", f"{st['kib_per_stream']:.2f} KiB",
                   ok_open and st["kib_per_stream"] <= GOAL_KIB_PER_STREAM))
        idle, what = idle_cpu(st)
        cl.append((f"idle CPU with {st['opened']} streams ~0 (< {GOAL_IDLE_CPU_PCT:g} %){what}",
                   f"{idle:.2f} %", ok_open and idle < GOAL_IDLE_CPU_PCT))
    ka = tls.get(("sp_tls", "keepalive"))
    if ka and fw:
        cl.append((f"intercepted keep-alive / plain forward >= {GOAL13_ICPT_VS_FORWARD:g}x",
                   f"{ka['rps'] / fw['rps']:.2f}x ({ka['rps']:.0f} vs {fw['rps']:.0f} req/s)",
                   not ka["errors"] and ka["rps"] / fw["rps"] >= GOAL13_ICPT_VS_FORWARD))
    nc, mi = tls.get(("sp_tls", "newconn")), tls.get(("mitm", "newconn"))
    if nc:
        cl.append((f"new intercepted TLS conns/s >= {GOAL13_NEWCONN_RPS:g}",
                   f"{nc['rps']:.0f}/s", not nc["errors"] and nc["rps"] >= GOAL13_NEWCONN_RPS))
        if mi:
            cl.append((f"new intercepted TLS conns/s >= {GOAL_VS_MITM:g}x mitmproxy",
                       f"{nc['rps'] / mi['rps']:.1f}x",
                       not nc["errors"] and nc["rps"] / mi["rps"] >= GOAL_VS_MITM))
    tun = tls.get("tunnel")
    if tun:
        ratio, spr = tun["ratio"], tun["spread"]
        cl.append((f"blind tunnel >= {GOAL13_TUNNEL_VS_DIRECT:g}x direct, stable",
                   f"{ratio:.2f}x, spread {spr:.0%} (stable: <= {GOAL13_TUNNEL_SPREAD:.0%})",
                   ratio >= GOAL13_TUNNEL_VS_DIRECT and spr <= GOAL13_TUNNEL_SPREAD))
    if su and "error" not in su:
        ms = statistics.median(su["ms"])
        cl.append((f"start-up to listening <= {GOAL13_STARTUP_MS:g} ms", f"{ms:.1f} ms",
                   ms <= GOAL13_STARTUP_MS))
        rss = [r for r in su["rss_kib"] if r]
        if rss:
            cl.append(("idle RSS <= 8 MB", f"{statistics.median(rss)} KiB",
                       statistics.median(rss) <= GOAL13_IDLE_RSS_KIB))
    return cl


def syscalls_section(p, path, note, stats):
    """CPU per request (all targets) and syscalls per request (strace -c -f
    for the breakdown, perf stat for the undisturbed total)."""
    p("CPU and syscalls per request (median, min..max over rounds)")
    p("-" * 78)
    p(f"{'target':<14}{'CPU us/req':>11}{'min..max':>13}")
    for name, s in stats.items():
        if s and s["cpu_us_all"]:
            v = s["cpu_us_all"]
            p(f"{name:<14}{med(v):>11.1f}{min(v):>7.1f}..{max(v):<6.1f}")
    runs = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                kv = dict(x.split("=", 1) for x in line.split() if "=" in x)
                if int(kv.get("requests", 0)) > 0 and "total" in kv:
                    runs.append(kv)
    if note:
        p(f"  note: {note}")
    if not runs:
        p("  syscalls: no figures")
        p("")
        return
    p("")
    p(f"{'target':<14}{'strace sys/req':>15}{'min..max':>14}{'perf sys/req':>13}{'min..max':>14}"
      f"{'perf CPU us/req':>16}")
    names = []
    for r in runs:
        if r["target"] not in names:
            names.append(r["target"])
    for name in names:
        cells = []
        for tool in ("strace", "perf"):
            v = [int(r["total"]) / int(r["requests"]) for r in runs
                 if r["target"] == name and r["tool"] == tool]
            cells.append(f"{med(v):>8.2f}{min(v):>8.2f}..{max(v):<5.2f}" if v else f"{'-':>8}{'':>15}")
        cpu = [float(r["task_clock_ms"]) * 1000 / int(r["requests"]) for r in runs
               if r["target"] == name and r["tool"] == "perf" and "task_clock_ms" in r]
        p(f"{name:<14}{cells[0]:>28} {cells[1]:>26}{(f'{med(cpu):.1f}' if cpu else '-'):>14}")
    p("  per syscall (strace, median calls/req; errors/req in brackets):")
    for name in names:
        per = {}
        st = [r for r in runs if r["target"] == name and r["tool"] == "strace"]
        for r in st:
            n = int(r["requests"])
            for item in filter(None, r.get("calls", "").split(",")):
                sc, calls, errs = (item.split(":") + ["0", "0"])[:3]
                per.setdefault(sc, ([], []))
                per[sc][0].append(int(calls) / n)
                per[sc][1].append(int(errs) / n)
        top = sorted(per.items(), key=lambda kv: -med(kv[1][0]))
        parts = [f"{sc} {med(c):.2f}" + (f" ({med(e):.2f})" if med(e) >= 0.01 else "")
                 for sc, (c, e) in top if med(c) >= 0.01]
        p(f"  {name:<12}" + ", ".join(parts))
    p("  (strace slows the traced process, so it batches fewer events per epoll_wait;")
    p("   the perf column counts the same requests without ptrace)")
    p("")


def load_jsonl(path):
    rows = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    return rows


def https_section(p, path, notes_path, figures):
    """The HTTPS_PROXY part: intercepted keep-alive and new-connection load
    through scopeproxy and mitmproxy, cold new-host handshakes, blind tunnel
    download vs direct.  Returns the issue 4 checks."""
    rows = load_jsonl(path)
    notes = []
    if notes_path and os.path.exists(notes_path):
        with open(notes_path) as f:
            notes = [ln.rstrip("\n") for ln in f if ln.strip()]
    p("HTTPS through CONNECT (issue 4): intercepted api.openai.com, GET /v1/models")
    p("-" * 78)
    for n in notes:
        p(f"  note: {n}")
    checks = []
    if not rows:
        p("  no result")
        p("")
        return checks

    def good(r):
        return not r.get("failed") and not r.get("crashed")

    def pick(proxy, mode):
        return [r for r in rows if r.get("proxy") == proxy and r.get("mode") == mode]

    load = {}
    p(f"{'proxy':<12}{'mode':<11}{'req/s':>9}{'min..max':>15}{'p50 ms':>9}{'p99 ms':>9}"
      f"{'errors':>7}{'CPU us/req':>11}{'others%':>8}")
    for mode, label in (("keepalive", "keep-alive"), ("newconn", "new conn")):
        for proxy in ("direct", "sp_tls", "mitm"):
            rs = pick(proxy, mode)
            if not rs:
                continue
            ok = [r for r in rs if good(r) and "rps" in r]
            errs = sum(int(r.get("errors", 0)) for r in ok)
            crashed = any(r.get("crashed") for r in rs)
            if not ok:
                p(f"{PROXY_NAMES[proxy]:<12}{label:<11}  FAILED{'  (CRASHED)' if crashed else ''}")
                continue
            rps = [float(r["rps"]) for r in ok]
            st = {"rps": statistics.median(rps), "errors": errs, "crashed": crashed,
                  "first_error": next((r["first_error"] for r in ok if r.get("first_error")), "")}
            load[(proxy, mode)] = st
            figures[(proxy, mode)] = st
            cpu = [1e6 * float(r["proxy_cpu_s"]) / r["requests"] for r in ok
                   if r.get("proxy_cpu_s") is not None and r.get("requests")]
            st["cpu"] = statistics.median(cpu) if cpu else None
            p(f"{PROXY_NAMES[proxy]:<12}{label:<11}{st['rps']:>9.0f}{min(rps):>8.0f}..{max(rps):<5.0f}"
              f"{statistics.median(r['p50_us'] for r in ok) / 1000:>9.3f}"
              f"{statistics.median(r['p99_us'] for r in ok) / 1000:>9.3f}{errs:>7}"
              f"{(f'{statistics.median(cpu):.0f}' if cpu else '-'):>11}"
              f"{max(float(r.get('other_cpu_pct', 0)) for r in ok):>8.1f}"
              f"{'  CRASHED' if crashed else ''}")
    busy = sorted({PROXY_NAMES.get(r.get("proxy"), "?") for r in rows
                   if float(r.get("other_cpu_pct", 0)) > NOISY_OTHER_PCT})
    if busy:
        p(f"  ! NOISY: other processes used more than {NOISY_OTHER_PCT:g} % of the machine during "
          f"runs of {', '.join(busy)}: compare CPU us/req rather than req/s.")
    for (proxy, mode), st in load.items():
        if st["errors"]:
            p(f"  ! {PROXY_NAMES[proxy]} {mode}: {st['errors']} errors, e.g. {st['first_error'][:150]}")
    p("  keep-alive: each connection CONNECTs and handshakes once, then GETs in a loop;")
    p("  new conn: connect + CONNECT + full TLS handshake (no resumption) + one GET + close,")
    p("  req/s = such cycles per second, latency = the whole cycle.  direct = TLS straight to")
    p("  the upstream.  CPU us/req: the proxy process's own CPU time (utime+stime) per")
    p("  completed request, which depends much less on what else runs than req/s does.")
    for mode, label in (("keepalive", "keep-alive req/s"), ("newconn", "handshakes/s")):
        sp, mi = load.get(("sp_tls", mode)), load.get(("mitm", mode))
        if sp and mi:
            ratio = sp["rps"] / mi["rps"]
            valid = not sp["errors"] and not mi["errors"] and not sp["crashed"] and not mi["crashed"]
            cpu_note = ""
            if sp.get("cpu") and mi.get("cpu"):
                cpu_note = f"   (CPU per request: mitmproxy's / scopeproxy's = {mi['cpu'] / sp['cpu']:.1f}x)"
            p(f"  scopeproxy / mitmproxy, {label:<17} {ratio:7.1f}x"
              f"{'' if valid else '   (errors: not valid)'}{cpu_note}")
            if mode == "keepalive":
                checks.append((f"intercepted keep-alive >= {GOAL_VS_MITM:g}x mitmproxy",
                               f"{ratio:.1f}x", valid and ratio >= GOAL_VS_MITM))
            else:
                checks.append((f"new-connection handshakes >= {GOAL_VS_MITM:g}x mitmproxy", f"{ratio:.1f}x",
                               valid and ratio >= GOAL_VS_MITM))
        elif sp and mode == "keepalive":
            checks.append((f"intercepted keep-alive >= {GOAL_VS_MITM:g}x mitmproxy",
                           "no mitmproxy figure (see the notes above)", "skipped"))
    p("")

    colds = {}
    for proxy in ("sp_tls", "mitm"):
        rs = [r for r in pick(proxy, "cold") if good(r) and r.get("cold_ok", 0) > 0 and r.get("warm_ok", 0) > 0]
        if rs:
            colds[proxy] = rs
    if colds or pick("sp_tls", "cold"):
        p("Cold new host: one connection at a time; medians over the new names of each round,")
        p("each new name followed by one connection to api.openai.com (seen before: warm)")
        p(f"{'proxy':<12}{'':<6}{'CONNECT->2xx':>14}{'->TLS done':>12}{'->response':>12}{'hosts ok':>10}")
        for proxy, rs in colds.items():
            med_ = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
            for kind in ("cold", "warm"):
                okn = sum(r[f"{kind}_ok"] for r in rs)
                p(f"{PROXY_NAMES[proxy]:<12}{kind:<6}{med_(kind + '_established_ms'):>11.3f} ms"
                  f"{med_(kind + '_tls_ms'):>9.3f} ms{med_(kind + '_total_ms'):>9.3f} ms"
                  f"{okn:>6}/{sum(r['hosts'] for r in rs)}")
            leaf = statistics.median(r["cold_tls_ms"] - r["warm_tls_ms"] for r in rs)
            p(f"  {PROXY_NAMES[proxy]}: a new host costs {leaf:+.3f} ms until the TLS handshake is done "
              f"(cold - warm), {med_('cold_established_ms') - med_('warm_established_ms'):+.3f} ms of it "
              "before the 2xx")
            errs = sum(int(r.get("errors", 0)) for r in rs)
            if errs:
                p(f"  ! {PROXY_NAMES[proxy]} cold: {errs} errors, e.g. "
                  f"{next((r['first_error'] for r in rs if r.get('first_error')), '')[:150]}")
            if proxy == "sp_tls":
                checks.append((f"cold new-host leaf <= {GOAL_COLD_LEAF_MS:g} ms (TLS done, cold - warm)",
                               f"{leaf:.3f} ms (cold handshake {med_('cold_tls_ms'):.3f} ms)",
                               errs == 0 and leaf <= GOAL_COLD_LEAF_MS))
        if "sp_tls" in colds and "mitm" in colds:
            p("  (scopeproxy makes the leaf before it answers 2xx; mitmproxy answers 2xx once it has")
            p("   connected upstream and makes the leaf during the client's handshake)")
        if "sp_tls" not in colds:
            p("  scopeproxy: no cold result")
            checks.append((f"cold new-host leaf <= {GOAL_COLD_LEAF_MS:g} ms", "no result", False))
        p("")

    dl = {k: [r for r in rows if r.get("proxy") == k and r.get("mode") == "download"]
          for k in ("direct", "sp_tls")}
    if dl["direct"] or dl["sp_tls"]:
        p("Blind tunnel: one TLS download of /big from blind.bench.test (not first-party: not")
        p("intercepted, the client verifies the upstream's own certificate), direct vs CONNECT")
        med_mb = {}
        for k, rs in dl.items():
            ok = [r for r in rs if good(r) and r.get("ok")]
            if not ok:
                e = next((r.get("first_error") for r in rs if r.get("first_error")), "no result")
                p(f"  {('through scopeproxy' if k == 'sp_tls' else 'direct'):<20} FAILED: {e[:150]}")
                continue
            mb = [float(r["mb_per_s"]) for r in ok]
            med_mb[k] = statistics.median(mb)
            cpu = [float(r["proxy_cpu_s"]) / (r["bytes"] / 2 ** 30) for r in ok
                   if r.get("proxy_cpu_s") is not None and r.get("bytes")]
            p(f"  {('through scopeproxy' if k == 'sp_tls' else 'direct'):<20}{med_mb[k]:>9.1f} MB/s"
              f"  ({min(mb):.1f}..{max(mb):.1f}, {len(ok)} run(s) of {ok[0]['bytes'] / 1048576:.0f} MiB)"
              + (f"; proxy CPU {statistics.median(cpu):.2f} s per GiB" if cpu else ""))
        if "direct" in med_mb and "sp_tls" in med_mb:
            p(f"  tunnel / direct      {med_mb['sp_tls'] / med_mb['direct']:9.2f}x")
            sp_mb = [float(r["mb_per_s"]) for r in dl["sp_tls"] if good(r) and r.get("ok")]
            figures["tunnel"] = {"ratio": med_mb["sp_tls"] / med_mb["direct"],
                                 "spread": spread_of(sp_mb)}
            checks.append(("(blind tunnel throughput vs direct)",
                           f"{med_mb['sp_tls'] / med_mb['direct']:.2f}x "
                           f"({med_mb['sp_tls']:.0f} vs {med_mb['direct']:.0f} MB/s)", "info"))
        p("")
    return checks


if __name__ == "__main__":
    main()
