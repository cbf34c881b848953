# bench/lib/headcost.sh: the request-head validator's share of the
# daemon's CPU on the forward keep-alive load (issue 12: at most 5 %),
# sourced by bench/run. The validator stays in the measured build; this
# only looks at where the daemon spends its time.
#
#   1. perf: `perf record --call-graph dwarf` on the running sp instance
#      (every thread) during a BENCH_HEADCOST_SECONDS wrk run of
#      sp-forward: the share of its samples with a validator function
#      anywhere on the stack (inclusive), and as the leaf (self).
#   2. callgrind (when valgrind is installed): a fresh instance with one
#      worker under `valgrind --tool=callgrind --toggle-collect=worker_main`
#      (the worker's whole life: everything a request costs), a fixed
#      BENCH_HEADCOST_REQUESTS forward requests: the validator's inclusive
#      instructions against all collected. Deterministic, unlike 1.
# Each part that cannot run says why in HEADCOST_NOTE; report.py prints
# the figures and the Issue 12 verdict.

HEADCOST_JSONL=$WORK/headcost.jsonl
HEADCOST_NOTE=""
HEADCOST_SECONDS=${BENCH_HEADCOST_SECONDS:-5}
HEADCOST_REQUESTS=${BENCH_HEADCOST_REQUESTS:-2000}
# The validator, by its entry points, each counted with everything it
# calls: the gate's raw scan of every head, first and later (headgate_scan:
# scan_one, head_scan, chunked_scan and their line checks) and the parsed
# headers' check before anything goes upstream (request_check:
# hdr_name_valid, hdr_value_valid, ...). The helpers are not listed on
# their own: response-head parsing calls hdr_name_valid too.
HEADCOST_FUNCS="headgate_scan head_scan head_validate chunked_scan request_check"
# Their helpers that call one of them (callgrind counts a call from one
# of these as already in its caller's cost).
HEADCOST_INNER="scan_one"

headcost_note() {
    HEADCOST_NOTE="${HEADCOST_NOTE:+$HEADCOST_NOTE; }$*"
    log "validator cost: $*"
}

headcost_perf() {
    local t=sp-forward pid d=$WORK/headcost rc=0 req
    pid=${TGT_PID[$t]:-}
    if ! command -v perf >/dev/null; then
        headcost_note "perf not found (apt-get install -y linux-perf): no sampled figure"
        return 0
    fi
    if ! perf record -q -o "$d/perf.probe" -- true >"$d/perf.probe.err" 2>&1; then
        headcost_note "perf cannot record here (kernel.perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid 2>/dev/null || echo '?'): $(head -c 200 "$d/perf.probe.err" | tr '\n' ' ')): no sampled figure"
        return 0
    fi
    perf record -q -F 999 --call-graph dwarf,16384 -p "$pid" -o "$d/perf.data" \
        -- sleep $((HEADCOST_SECONDS + 1)) >"$d/perf.err" 2>&1 &
    local pf=$!
    sleep 0.5
    BENCH_WRK_PATH=${TGT_PATH[$t]} BENCH_WRK_HOST=${TGT_HOST[$t]} BENCH_WRK_HEADERS=${TGT_HEADERS[$t]} \
        run_fg "$d/wrk-perf.txt" "$d/wrk-perf.err" timeout -k 5 $((HEADCOST_SECONDS + 30)) "$WRK" \
        -t"$WRK_THREADS" -c"$CONNS" -d"${HEADCOST_SECONDS}s" --timeout 5s -s "$LIB/wrk-report.lua" \
        "http://127.0.0.1:${TGT_PORT[$t]}/" || true
    wait "$pf" || rc=$?
    req=$(grep '^BENCH_RESULT ' "$d/wrk-perf.txt" | tail -n 1 | sed -n 's/.* requests=\([0-9]*\).*/\1/p')
    if ((rc != 0)) || [[ ! -s $d/perf.data ]]; then
        headcost_note "perf record failed (rc $rc): $(head -c 200 "$d/perf.err" | tr '\n' ' ')"
        return 0
    fi
    perf script -i "$d/perf.data" -F comm,tid,ip,sym --no-inline >"$d/perf.txt" 2>"$d/perf-script.err" ||
        { headcost_note "perf script failed: $(head -c 200 "$d/perf-script.err" | tr '\n' ' ')"; return 0; }
    "$PY" "$LIB/headcost.py" perf "$d/perf.txt" --funcs "$HEADCOST_FUNCS" \
        --event "$(perf evlist -i "$d/perf.data" 2>/dev/null | head -n 1)" |
        sed "s/}\$/, \"requests\": ${req:-0}, \"seconds\": $HEADCOST_SECONDS, \"connections\": $CONNS}/" \
        >>"$HEADCOST_JSONL"
}

headcost_callgrind() {
    local d=$WORK/headcost cg=$WORK/headcost/cg name=sp_cg t=hc-cg port req asuser=() f files=()
    if ! command -v valgrind >/dev/null; then
        headcost_note "valgrind not found (apt-get install -y valgrind): no callgrind figure"
        return 0
    fi
    mkdir -p "$cg/home"
    # Started as root the daemon would serve as nobody and callgrind could
    # not write its output: run it as nobody from the start instead.
    if [[ $(id -u) == 0 ]]; then
        command -v setpriv >/dev/null ||
            { headcost_note "setpriv not found (util-linux): no callgrind figure"; return 0; }
        if ! chown nobody "$cg" "$cg/home" 2>/dev/null || ! chmod 700 "$cg/home"; then
            headcost_note "cannot prepare a directory for nobody: no callgrind figure"
            return 0
        fi
        asuser=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
    fi
    # Under valgrind on a busy machine the signer may miss the daemon's
    # 2 s start-up handshake: a few tries.
    local var="PID_$name" try
    for try in 1 2 3; do
        rm -f "$cg"/callgrind.* "$cg/server-info.json"
        HOME=$cg/home CODEX_HOME=$cg/home start_bg "$name" "${asuser[@]}" valgrind -q --tool=callgrind \
            --toggle-collect=worker_main --callgrind-out-file="$cg/callgrind.%p" \
            "$SP_RUN" --listen 127.0.0.1:0 --server-info "$cg/server-info.json" --log-level warn \
            --threads 1 "${SP_EXTRA[@]}"
        port=$("$PY" "$LIB/probe.py" server-info "$cg/server-info.json" "${!var}" 60 2>/dev/null) && break
        stop_bg "$name"
        port=""
    done
    if [[ -z $port ]]; then
        headcost_note "the daemon did not start under valgrind ($try tries), last error: $(grep -o '"level":"error","msg":"[^"]*' "$WORK/$name.err" | tail -n 1 | sed 's/.*"msg":"//' | tr ';' ',')"
        return 0
    fi
    TGT_PORT[$t]=$port TGT_PATH[$t]=${TGT_PATH[sp-forward]} TGT_HOST[$t]=${TGT_HOST[sp-forward]}
    TGT_HEADERS[$t]=""
    req=$(SYSCALL_CONNS=10 fixed_wrk "$t" "$HEADCOST_REQUESTS" "$d/wrk-cg.txt")
    stop_bg "$name"     # callgrind writes its output at exit
    for f in "$cg"/callgrind.*; do [[ -s $f ]] && files+=("$f"); done
    if [[ -z $req || $req -le 0 || ${#files[@]} -eq 0 ]]; then
        headcost_note "the callgrind run gave no result (requests '${req:-}', ${#files[@]} output files)"
        return 0
    fi
    "$PY" "$LIB/headcost.py" callgrind "${files[@]}" --funcs "$HEADCOST_FUNCS" \
        --inner "$HEADCOST_INNER" --requests "$req" \
        >>"$HEADCOST_JSONL"
}

run_headcost() {
    : >"$HEADCOST_JSONL"
    mkdir -p "$WORK/headcost"
    if [[ -z ${TGT_KIND[sp-forward]:-} || -n ${TGT_FAIL[sp-forward]:-} ]] ||
        ! proc_alive "${TGT_PID[sp-forward]:-0}"; then
        headcost_note "sp-forward is not running: no figures"
        return 0
    fi
    log "validator cost: perf record ${HEADCOST_SECONDS}s of sp-forward, then callgrind over $HEADCOST_REQUESTS requests"
    headcost_perf
    headcost_callgrind
    local l
    while IFS= read -r l; do log "validator cost: $l"; done <"$HEADCOST_JSONL"
}
