# bench/lib/syscalls.sh: syscalls per request (sourced by bench/run).
#
# For each target in BENCH_SYSCALL_TARGETS, BENCH_SYSCALL_ROUNDS times:
#   1. strace -c -f attached to every process of the target (the proxy's
#      threads; nginx's master and workers), a fixed number of requests
#      (BENCH_SYSCALL_REQUESTS, wrk -c BENCH_SYSCALL_CONNECTIONS), detach:
#      calls and errors per syscall, divided by the requests completed.
#   2. the same count of requests under `perf stat -e raw_syscalls:sys_enter`
#      (when perf can count that tracepoint): the total without ptrace's
#      slow-down, which changes how many events each epoll_wait returns.
# One line per run goes to $SYSCALLS_TSV; report.py prints the medians.

SYSCALLS_TSV=$WORK/syscalls.tsv
SYSCALLS_NOTE=""

# (not target_*: bench/run calls every target_* function as a target)
# The processes of a target: its pid and that pid's children (nginx workers).
syscall_pids() {
    local pid=$1
    printf '%s\n' "$pid"
    pgrep -P "$pid" 2>/dev/null || true
}

# wrk with a fixed request count; prints the requests completed.
fixed_wrk() {  # fixed_wrk TARGET N OUT
    local t=$1 n=$2 out=$3 done_file=$3.done
    : >"$done_file"
    BENCH_WRK_PATH=${TGT_PATH[$t]} BENCH_WRK_HOST=${TGT_HOST[$t]} \
        BENCH_WRK_HEADERS=${TGT_HEADERS[$t]} BENCH_WRK_METHOD=${TGT_METHOD[$t]:-GET} \
        BENCH_WRK_BODY=${TGT_BODY[$t]:-} BENCH_WRK_MAX_REQUESTS=$n \
        BENCH_WRK_THREADS_N=$WRK_THREADS BENCH_WRK_DONE_FILE=$done_file \
        run_fg "$out" "$out.err" timeout -k 5 200 "$WRK" -t"$WRK_THREADS" \
        -c"$SYSCALL_CONNS" -d180s --timeout 5s -s "$LIB/wrk-report.lua" \
        "http://127.0.0.1:${TGT_PORT[$t]}/" || true
    grep '^BENCH_RESULT ' "$out" | tail -n 1 | sed -n 's/.* requests=\([0-9]*\).*/\1/p'
}

run_syscalls() {
    local t r pid pids p args req st_pid pf_pid out errs
    : >"$SYSCALLS_TSV"
    if ! command -v strace >/dev/null; then
        SYSCALLS_NOTE="strace not found (apt-get install -y strace): no syscall figures"
        log "$SYSCALLS_NOTE"
        return 0
    fi
    local have_perf=0
    if command -v perf >/dev/null &&
        perf stat -x, -e raw_syscalls:sys_enter -- true >/dev/null 2>&1; then
        have_perf=1
    else
        SYSCALLS_NOTE="perf cannot count raw_syscalls:sys_enter here: strace figures only"
    fi
    mkdir -p "$WORK/syscalls"
    for ((r = 1; r <= SYSCALL_ROUNDS; r++)); do
        for t in $SYSCALL_TARGETS; do
            [[ -n ${TGT_KIND[$t]:-} && -z ${TGT_FAIL[$t]:-} ]] || continue
            [[ " ${TARGETS[*]} " == *" $t "* ]] || continue   # BENCH_TARGETS
            pid=${TGT_PID[$t]:-}
            [[ -n $pid ]] && proc_alive "$pid" || continue
            mapfile -t pids < <(syscall_pids "$pid")
            out=$WORK/syscalls/$t.$r
            # strace: the breakdown
            args=()
            for p in "${pids[@]}"; do args+=(-p "$p"); done
            strace -c -f -qq -o "$out.strace" "${args[@]}" 2>"$out.strace.err" &
            st_pid=$!
            sleep 1   # attached to every thread
            req=$(fixed_wrk "$t" "$SYSCALL_REQUESTS" "$out.wrk-strace")
            sleep 0.3
            kill -INT "$st_pid" 2>/dev/null || true
            wait "$st_pid" 2>/dev/null || true
            if [[ -n $req && $req -gt 0 && -s $out.strace ]]; then
                printf 'target=%s round=%d tool=strace requests=%d %s\n' "$t" "$r" "$req" \
                    "$(awk '$NF == "total" { printf "total=%d", $4; next }
                            /^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ {
                                e = (NF == 6) ? $5 : 0
                                s = s sprintf("%s:%d:%d,", $NF, $4, e) }
                            END { printf " calls=%s", s }' "$out.strace" |
                        sed 's/total=\([0-9]*\) calls=\(.*\),$/total=\1 calls=\2/')" >>"$SYSCALLS_TSV"
            else
                log "syscalls $t round $r (strace): no result"
            fi
            # perf: the undisturbed total
            if ((have_perf)); then
                perf stat -x, -e raw_syscalls:sys_enter,task-clock -p "$(IFS=,; echo "${pids[*]}")" \
                    -o "$out.perf" 2>/dev/null &
                pf_pid=$!
                sleep 0.5
                req=$(fixed_wrk "$t" "$SYSCALL_REQUESTS" "$out.wrk-perf")
                kill -INT "$pf_pid" 2>/dev/null || true
                wait "$pf_pid" 2>/dev/null || true
                if [[ -n $req && $req -gt 0 && -s $out.perf ]]; then
                    printf 'target=%s round=%d tool=perf requests=%d %s\n' "$t" "$r" "$req" \
                        "$(awk -F, '/raw_syscalls:sys_enter/ { printf "total=%d ", $1 }
                                    /task-clock/ { printf "task_clock_ms=%s ", $1 }' "$out.perf")" >>"$SYSCALLS_TSV"
                fi
            fi
            errs=$(grep -c '' "$out.strace.err" 2>/dev/null || echo 0)
            log "$(printf '%-12s syscalls round %d: %s' "$t" "$r" \
                "$(grep "^target=$t round=$r " "$SYSCALLS_TSV" | awk '{for(i=1;i<=NF;i++){split($i,a,"=");v[a[1]]=a[2]}
                    printf "%s %.2f/req  ", v["tool"], v["total"]/v["requests"]}')")"
            sleep 0.5
        done
    done
}
