#!/usr/bin/python3
"""The request-head validator's share of the daemon's work (issue 12).

  headcost.py perf FILE --funcs F,G,... [--event E]
        FILE: `perf script -F comm,tid,ip,sym` of a `perf record
        --call-graph` on the daemon.  Prints one JSON object: samples in
        all, samples with any of the functions anywhere on their stack
        (inclusive) and as the leaf (self), the shares, and the share of
        samples taken in the kernel.
  headcost.py callgrind FILE... --funcs F,G,... [--inner H,...] [--requests N]
        FILEs: callgrind outputs of the daemon (one per process).  The
        validator's instructions are the inclusive cost of the calls into
        the functions from outside them (a call from one of them, or from
        an --inner helper of theirs, is already in its caller's), against
        every instruction collected: prints one JSON object.

Standard library only.
"""
import argparse
import json
import re
import sys


def perf_share(path, funcs):
    total = incl = leaf = kernel = 0
    frames = []
    addrs = []

    def flush():
        nonlocal total, incl, leaf, kernel
        if not frames:
            return
        total += 1
        if addrs[0].startswith("ffffffff"):
            kernel += 1
        if any(f in funcs for f in frames):
            incl += 1
        if frames[0] in funcs:
            leaf += 1
        frames.clear()
        addrs.clear()

    with open(path, errors="replace") as f:
        for line in f:
            if not line.strip():
                flush()
            elif line[0] in " \t":
                parts = line.split(None, 1)
                if len(parts) == 2:
                    # "sym+0xoff (dso)" or "sym (dso)"
                    sym = parts[1].rsplit(" (", 1)[0].strip()
                    frames.append(re.sub(r"\+0x[0-9a-f]+$", "", sym))
                    addrs.append(parts[0])
            else:
                flush()
    flush()
    return {"tool": "perf", "samples": total, "incl_samples": incl, "self_samples": leaf,
            "kernel_pct": 100.0 * kernel / total if total else None,
            "incl_pct": 100.0 * incl / total if total else None,
            "self_pct": 100.0 * leaf / total if total else None}


# callgrind's compressed names: "fn=(12) name" defines 12, "fn=(12)" reuses it
_NAME = re.compile(r"^(c?fn)=\((\d+)\)(?: (.*))?$")


def callgrind_share(paths, funcs, inner):
    total = 0
    outer = 0           # inclusive cost of calls into funcs from outside them
    for path in paths:
        names = {}
        fn = cfn = None
        in_call = False
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                m = _NAME.match(line)
                if m:
                    kind, num, name = m.groups()
                    if name is not None:
                        names[num] = name
                    name = names.get(num, "")
                    if kind == "fn":
                        fn = name
                    else:
                        cfn = name
                    continue
                if line.startswith("summary:") or line.startswith("totals:"):
                    if line.startswith("summary:"):
                        total += int(line.split()[1])
                    continue
                if line.startswith("calls="):
                    in_call = True
                    continue
                if in_call:
                    # the line after calls=: "<position> <inclusive cost>"
                    in_call = False
                    parts = line.split()
                    if len(parts) >= 2 and cfn in funcs and fn not in funcs and fn not in inner:
                        outer += int(parts[1])
    return {"tool": "callgrind", "instructions": total, "validator_instructions": outer,
            "incl_pct": 100.0 * outer / total if total else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("perf", "callgrind"))
    ap.add_argument("files", nargs="+")
    ap.add_argument("--funcs", required=True)
    ap.add_argument("--requests", type=int, default=0)
    ap.add_argument("--event", default="")
    ap.add_argument("--inner", default="")
    a = ap.parse_args()
    funcs = set(a.funcs.replace(",", " ").split())
    if a.mode == "perf":
        r = perf_share(a.files[0], funcs)
        r["event"] = a.event
    else:
        r = callgrind_share(a.files, funcs, set(a.inner.replace(",", " ").split()))
        if a.requests:
            r["requests"] = a.requests
            r["instructions_per_request"] = r["instructions"] / a.requests
            r["validator_instructions_per_request"] = r["validator_instructions"] / a.requests
    r["functions"] = sorted(funcs)
    json.dump(r, sys.stdout)
    print()


if __name__ == "__main__":
    main()
