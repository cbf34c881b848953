# shellcheck shell=bash
# bench/lib/https.sh: the HTTPS_PROXY part of bench/run (issue 4), sourced
# by bench/run and using its helpers (start_bg, stop_bg, start_scopeproxy,
# run_fg, freeport, cpu_snapshot, log, $WORK, $PY, $LIB, $SECS, $ROUNDS).
#
# Parts, all on loopback:
#   - a test PKI made with openssl in $WORK/https: a P-256 CA and one leaf
#     for api.openai.com, *.api.openai.com and blind.bench.test;
#   - "tls_upstream": nginx, 1 worker, TLS on 127.0.0.1:TLS_PORT with that
#     leaf; /v1/models is the same static body as the plain upstream, /big a
#     sparse file of BENCH_TUNNEL_MB MiB;
#   - "sp_tls": scopeproxy with a fresh --ca-dir, --upstream-ca = the test CA
#     and --resolve for every name used here, so api.openai.com:443 (and the
#     cold names) are intercepted and reach tls_upstream, and
#     blind.bench.test:443 (not first-party) is tunnelled blind to it;
#   - "mitm": mitmdump with its own confdir, trusting the test CA upstream, and
#     a three-line addon that sends every server connection to tls_upstream
#     (mitmproxy has no --resolve; SNI and certificate checks stay on the
#     CONNECT name);
#   - lib/tlsload.c, compiled here: the load client (wrk cannot CONNECT).
# Results: one JSON object per line in $HTTPS_JSONL, read by lib/report.py.
#
# SP_PORT_x / PID_x are set through printf -v; the *_ep arrays are used
# through a nameref:
# shellcheck disable=SC2154,SC2034

HTTPS_JSONL=$WORK/https.jsonl
HTTPS_NOTES=$WORK/https-notes.txt
TLS_CONNS=${BENCH_TLS_CONNECTIONS:-$CONNS}
TLS_SECS=${BENCH_TLS_SECONDS:-$SECS}
COLD_HOSTS=${BENCH_COLD_HOSTS:-50}
TUNNEL_MB=${BENCH_TUNNEL_MB:-1024}
MITM_INSTALL_HINT="apt-get install -y mitmproxy"

https_note() { printf '%s\n' "$*" >>"$HTTPS_NOTES"; log "https: $*"; }

# make_test_pki DIR [SAN]: CA + one server leaf, EC P-256, valid for 2 days.
# SAN defaults to the names the HTTPS part uses.
make_test_pki() {
    local d=$1 san=${2:-DNS:api.openai.com,DNS:*.api.openai.com,DNS:blind.bench.test}
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$d/testca.key" -out "$d/testca.pem" -days 2 \
        -subj "/CN=scopeproxy bench test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>"$d/openssl.err" &&
        openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$d/upstream.key" -out "$d/upstream.csr" \
            -subj "/CN=api.openai.com" 2>>"$d/openssl.err" &&
        printf '%s\n' \
            "subjectAltName=$san" \
            "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature" \
            "extendedKeyUsage=serverAuth" \
            "subjectKeyIdentifier=hash" \
            "authorityKeyIdentifier=keyid" >"$d/upstream.ext" &&
        openssl x509 -req -in "$d/upstream.csr" -CA "$d/testca.pem" -CAkey "$d/testca.key" \
            -set_serial "0x$(openssl rand -hex 8)" -days 2 -sha256 \
            -extfile "$d/upstream.ext" -out "$d/upstream.pem" 2>>"$d/openssl.err"
}

start_tls_upstream() {
    local d=$1
    mkdir -p "$d/www/v1"
    cp "$BODY_FILE" "$d/www/v1/models"
    truncate -s "${TUNNEL_MB}M" "$d/www/big"   # sparse: no disk, reads are zeros
    # The first read of a hole fills the page cache with zeroed pages, at
    # about 0.5 GB/s here: that would slow whichever download comes first.
    cat "$d/www/big" >/dev/null
    chmod -R a+rX "$d/www"
    chmod a+r "$d/upstream.key"   # a throwaway test key; nginx workers run as nobody
    TLS_PORT=$(freeport)
    cat >"$d/nginx.conf" <<EOF
daemon off;
$NGINX_USER
worker_processes 1;
worker_rlimit_nofile $NOFILE_HARD;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
$(nginx_temp_paths "$d/tmp")
    server {
        listen 127.0.0.1:$TLS_PORT ssl backlog=4096;
        ssl_certificate $d/upstream.pem;
        ssl_certificate_key $d/upstream.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root $d/www;
        location = /v1/models { default_type application/json; }
        location = /big { default_type application/octet-stream; }
        location / { return 404; }
    }
}
EOF
    start_bg tls_upstream "$NGINX" -p "$d" -e "$d/error.log" -c "$d/nginx.conf"
    "$PY" "$LIB/probe.py" wait-port "$TLS_PORT" 10 ||
        { cat "$WORK/tls_upstream.err" "$d/error.log" >&2 2>/dev/null; return 1; }
    log "TLS upstream nginx on 127.0.0.1:$TLS_PORT (1 worker; /v1/models, /big = $TUNNEL_MB MiB)"
}

start_mitm() {
    local d=$1
    MITM_PORT=$(freeport)
    mkdir -p "$d/mitm"
    cat >"$d/mitm_addon.py" <<EOF
# bench/run: every upstream connection goes to the local TLS upstream
# (mitmproxy has no --resolve); SNI and the certificate check stay on the
# CONNECT name.
class Remap:
    def server_connect(self, data):
        data.server.address = ("127.0.0.1", $TLS_PORT)

addons = [Remap()]
EOF
    start_bg mitm "$MITMDUMP" --listen-host 127.0.0.1 --listen-port "$MITM_PORT" \
        --set confdir="$d/mitm" --set ssl_verify_upstream_trusted_ca="$d/testca.pem" \
        --set flow_detail=0 --set termlog_verbosity=warn -s "$d/mitm_addon.py"
    "$PY" "$LIB/probe.py" wait-port "$MITM_PORT" 30 || { tail -n 20 "$WORK/mitm.err" >&2; return 1; }
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $d/mitm/mitmproxy-ca-cert.pem ]] && break
        sleep 0.1
    done
    [[ -s $d/mitm/mitmproxy-ca-cert.pem ]] || return 1
    log "mitmdump ($("$MITMDUMP" --version 2>/dev/null | head -n 1)) on 127.0.0.1:$MITM_PORT"
}

# tls_run NAME ROUND MODE ARGS...: one tlsload run (ARGS: --proxy or --addr,
# --ca, ...).  Appends {"proxy":NAME,"round":R,...,"other_cpu_pct":X,
# "proxy_cpu_s":Y} to HTTPS_JSONL: others' share of the machine during the
# run, and the CPU time the proxy process itself used (PID_NAME, if any).
tls_run() {
    local name=$1 r=$2 mode=$3 out c0 c1 t0 t1 other line pid p0="" p1="" pcpu=null
    shift 3
    out=$WORK/https/run.$name.$mode.$r
    pid=PID_$name
    pid=${!pid:-}
    [[ -n $pid ]] && p0=$("$PY" "$LIB/probe.py" proc "$pid" 2>/dev/null | sed -n 's/.*ticks=\([0-9]*\).*/\1/p')
    c0=$(cpu_snapshot)
    t0=$(date +%s.%N)
    run_fg "$out.json" "$out.err" timeout -k 5 $((TLS_SECS + 120)) "$TLSLOAD" --mode "$mode" "$@" || true
    c1=$(cpu_snapshot)
    t1=$(date +%s.%N)
    [[ -n $pid ]] && p1=$("$PY" "$LIB/probe.py" proc "$pid" 2>/dev/null | sed -n 's/.*ticks=\([0-9]*\).*/\1/p')
    [[ -n $p0 && -n $p1 ]] && pcpu=$(awk -v a="$p0" -v b="$p1" -v hz="$CLK_TCK" 'BEGIN { printf "%.2f", (b - a) / hz }')
    other=$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" -v n="$NCPU" -v t0="$t0" -v t1="$t1" 'BEGIN {
        split(a, x, " "); split(b, y, " ");
        o = (y[1] - x[1]) - (y[2] - x[2]); if (o < 0) o = 0;
        printf "%.1f", 100 * o / ((t1 - t0) * hz * n) }')
    line=$(tail -n 1 "$out.json" 2>/dev/null || true)
    if [[ $line != \{* ]]; then
        log "https $name $mode round $r: no result: $(tail -n 3 "$out.err" | tr '\n' ' ')"
        line="{\"mode\":\"$mode\",\"failed\":true}"
    fi
    if [[ -n $pid ]] && ! proc_alive "$pid"; then
        https_note "$name DIED during $mode round $r"
        line="${line%\}},\"crashed\":true}"
    fi
    printf '{"proxy":"%s","round":%d,"other_cpu_pct":%s,"proxy_cpu_s":%s,%s\n' \
        "$name" "$r" "$other" "$pcpu" "${line#\{}" >>"$HTTPS_JSONL"
    log "https $(printf '%-8s %-9s round %d' "$name" "$mode" "$r"): $line"
}

run_https() {
    local d=$WORK/https r i name resolve=() sp_ca mitm_ca="" order
    mkdir -p "$d"
    : >"$HTTPS_JSONL"
    : >"$HTTPS_NOTES"
    command -v openssl >/dev/null || { https_note "skipped: openssl not found (apt-get install -y openssl)"; return 1; }
    if ! command -v cc >/dev/null || ! pkg-config --exists openssl 2>/dev/null; then
        https_note "skipped: needs cc and OpenSSL headers (apt-get install -y gcc libssl-dev pkg-config)"
        return 1
    fi
    TLSLOAD=$d/tlsload
    # shellcheck disable=SC2046
    cc -O2 -Wall -Wno-format-truncation -o "$TLSLOAD" "$LIB/tlsload.c" \
        $(pkg-config --cflags --libs openssl) -pthread 2>"$d/cc.err" ||
        { cat "$d/cc.err" >&2; https_note "skipped: lib/tlsload.c did not compile"; return 1; }
    make_test_pki "$d" || { cat "$d/openssl.err" >&2; https_note "skipped: test PKI"; return 1; }
    start_tls_upstream "$d" || { https_note "skipped: TLS upstream nginx did not start"; return 1; }

    # Names: api.openai.com (warm, keep-alive, handshakes), per round
    # COLD_HOSTS names under *.api.openai.com seen once each, blind.bench.test.
    resolve=(--resolve "api.openai.com:443:127.0.0.1:$TLS_PORT"
        --resolve "blind.bench.test:443:127.0.0.1:$TLS_PORT")
    for ((r = 1; r <= ROUNDS; r++)); do
        : >"$d/cold.$r"
        for ((i = 1; i <= COLD_HOSTS; i++)); do
            printf 'r%dh%d.api.openai.com:443\n' "$r" "$i" >>"$d/cold.$r"
            resolve+=(--resolve "r${r}h${i}.api.openai.com:443:127.0.0.1:$TLS_PORT")
        done
    done
    start_scopeproxy sp_tls --ca-dir "$d/ca" --upstream-ca "$d/testca.pem" "${resolve[@]}" ||
        { https_note "skipped: scopeproxy (sp_tls) did not start"; return 1; }
    sp_ca=$d/sp-ca.pem
    if ! CODEX_HOME=${BENCH_CODEX_HOME:-$WORK/codex-home} timeout 10 "$SP_RUN" ca export \
        --ca-dir "$d/ca" >"$sp_ca" 2>"$d/ca-export.err" || [[ ! -s $sp_ca ]]; then
        cat "$d/ca-export.err" >&2
        https_note "skipped: scopeproxy ca export failed"
        return 1
    fi

    if [[ ${BENCH_MITMDUMP:-} == none ]]; then
        https_note "mitmproxy column skipped (BENCH_MITMDUMP=none)"
    elif [[ -z ${MITMDUMP:-} ]]; then
        https_note "mitmproxy column skipped: mitmdump not installed (install with: $MITM_INSTALL_HINT)"
    elif start_mitm "$d"; then
        mitm_ca=$d/mitm/mitmproxy-ca-cert.pem
    else
        https_note "mitmproxy column skipped: mitmdump did not start ($(tail -n 2 "$WORK/mitm.err" | tr '\n' ' '))"
    fi

    # Check requests: one intercepted GET /v1/models each (200, 200-byte body).
    local probe_args=(--mode download --target api.openai.com:443 --path /v1/models
        --expect-bytes "$BODY_BYTES" --io-timeout 10)
    local ok_sp=1 ok_mitm=0
    if ! timeout 20 "$TLSLOAD" "${probe_args[@]}" --proxy "127.0.0.1:$SP_PORT_sp_tls" --ca "$sp_ca" \
        >"$d/probe.sp.json" 2>&1 || ! grep -q '"ok":true' "$d/probe.sp.json"; then
        ok_sp=0
        https_note "scopeproxy intercept check failed: $(head -c 400 "$d/probe.sp.json")"
    fi
    if [[ -n $mitm_ca ]]; then
        if timeout 20 "$TLSLOAD" "${probe_args[@]}" --proxy "127.0.0.1:$MITM_PORT" --ca "$mitm_ca" \
            >"$d/probe.mitm.json" 2>&1 && grep -q '"ok":true' "$d/probe.mitm.json"; then
            ok_mitm=1
        else
            https_note "mitmproxy check failed: $(head -c 400 "$d/probe.mitm.json")"
        fi
    fi
    {
        echo "https: scopeproxy $([[ $ok_sp == 1 ]] && echo "intercepting" || echo "CHECK FAILED") (--ca-dir, --upstream-ca test CA, ${#resolve[@]} --resolve args)"
        if [[ -n ${MITMDUMP:-} ]]; then
            echo "https: mitmproxy: $("$MITMDUMP" --version 2>/dev/null | head -n 1)$([[ $ok_mitm == 1 ]] || echo " (not measured)")"
        else
            echo "https: mitmproxy: not used$([[ ${BENCH_MITMDUMP:-} == none ]] || echo ", not installed ($MITM_INSTALL_HINT)")"
        fi
        echo "https: tlsload -c$TLS_CONNS ${TLS_SECS}s per run; $COLD_HOSTS cold names per round; $TUNNEL_MB MiB download"
    } >>"$META"

    local direct_ep=(--addr "127.0.0.1:$TLS_PORT" --ca "$d/testca.pem")
    local sp_ep=(--proxy "127.0.0.1:$SP_PORT_sp_tls" --ca "$sp_ca")
    local mitm_ep=(--proxy "127.0.0.1:${MITM_PORT:-0}" --ca "$mitm_ca")
    local req=(--target api.openai.com:443 --path /v1/models --expect-bytes "$BODY_BYTES")
    local big=(--target blind.bench.test:443 --path /big --expect-bytes $((TUNNEL_MB * 1048576)) --io-timeout 30)
    for ((r = 1; r <= ROUNDS; r++)); do
        # direct (TLS straight to the upstream, the baseline), then the
        # proxies; their order alternates between rounds.
        order=(direct)
        if ((r % 2)); then
            [[ $ok_sp == 1 ]] && order+=(sp_tls)
            [[ $ok_mitm == 1 ]] && order+=(mitm)
        else
            [[ $ok_mitm == 1 ]] && order+=(mitm)
            [[ $ok_sp == 1 ]] && order+=(sp_tls)
        fi
        for name in "${order[@]}"; do
            local -n ep=${name/sp_tls/sp}_ep
            tls_run "$name" "$r" keepalive "${ep[@]}" "${req[@]}" --conns "$TLS_CONNS" --seconds "$TLS_SECS"
            sleep 1
            tls_run "$name" "$r" newconn "${ep[@]}" "${req[@]}" --conns "$TLS_CONNS" --seconds "$TLS_SECS"
            sleep 1
            if [[ $name != direct ]]; then
                tls_run "$name" "$r" cold "${ep[@]}" "${req[@]}" --cold-file "$d/cold.$r"
                sleep 1
            fi
            unset -n ep
        done
        if [[ $ok_sp == 1 ]]; then
            # Blind tunnel vs direct, alternating which goes first.  The
            # client checks the upstream's own certificate (test CA), which
            # scopeproxy's CA did not sign: the tunnel really is blind.
            ((r % 2)) && tls_run direct "$r" download "${direct_ep[@]}" "${big[@]}"
            tls_run sp_tls "$r" download --proxy "127.0.0.1:$SP_PORT_sp_tls" --ca "$d/testca.pem" "${big[@]}"
            ((r % 2)) || tls_run direct "$r" download "${direct_ep[@]}" "${big[@]}"
        fi
    done
    stop_bg mitm
    stop_bg sp_tls
    stop_bg tls_upstream
    [[ $ok_sp == 1 ]]
}
