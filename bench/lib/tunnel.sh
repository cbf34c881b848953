#!/usr/bin/env bash
# bench/lib/tunnel.sh: the blind-tunnel phase of bench/run on its own
# (issue 13), to compare builds quickly without the whole bench.
#
#   bench/lib/tunnel.sh BIN [BIN2]
#
# Starts what bench/lib/https.sh starts for that phase (a test PKI, nginx
# with TLS on 127.0.0.1 serving a sparse /big, lib/tlsload.c), one
# scopeproxy per BIN with --no-intercept and --resolve blind.bench.test to
# nginx, then RUNS rounds of: direct download, then one through each BIN,
# the order within a round rotating (interleaved: A B A B ..., so a busy
# neighbour hits every side alike). Prints per run MB/s and the proxy's
# CPU seconds (utime+stime from /proc/PID/stat), then per side the median
# MB/s, min..max, and the median proxy CPU s/GiB.
#
# Env: TUNNEL_MB [256] download size; RUNS [5]; KEEP=1 keeps the work dir.
# Needs nginx, openssl, cc, pkg-config openssl, python3.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
TUNNEL_MB=${TUNNEL_MB:-256}
RUNS=${RUNS:-5}
(($# >= 1)) || { echo "usage: $0 BIN [BIN2]" >&2; exit 2; }
BINS=("$@")
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d /tmp/sp-tunnel.XXXXXX)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [[ ${KEEP:-0} == 1 ]] || rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# PKI: a CA and a leaf for blind.bench.test (as make_test_pki in https.sh)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -days 2 -subj "/CN=tunnel bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$WORK/leaf.key" -out "$WORK/leaf.csr" -subj "/CN=blind.bench.test" 2>/dev/null
printf 'subjectAltName=DNS:blind.bench.test\nextendedKeyUsage=serverAuth\n' >"$WORK/leaf.ext"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -set_serial 1 -days 2 -extfile "$WORK/leaf.ext" -out "$WORK/leaf.pem" 2>/dev/null
chmod a+r "$WORK/leaf.key"

mkdir -p "$WORK/www" "$WORK/tmp"
chmod 755 "$WORK" && chmod 777 "$WORK/tmp"
truncate -s "${TUNNEL_MB}M" "$WORK/www/big"
cat "$WORK/www/big" >/dev/null   # fault the zero pages in once (see https.sh)
chmod -R a+rX "$WORK/www"
TLS_PORT=$(python3 "$HERE/probe.py" freeport)
user=""
[[ $(id -u) == 0 ]] && user="user nobody nogroup;"
cat >"$WORK/nginx.conf" <<EOF
daemon off;
$user
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/tmp/body;
    proxy_temp_path $WORK/tmp/proxy;
    fastcgi_temp_path $WORK/tmp/fastcgi;
    uwsgi_temp_path $WORK/tmp/uwsgi;
    scgi_temp_path $WORK/tmp/scgi;
    server {
        listen 127.0.0.1:$TLS_PORT ssl;
        ssl_certificate $WORK/leaf.pem;
        ssl_certificate_key $WORK/leaf.key;
        root $WORK/www;
        location = /big { default_type application/octet-stream; }
    }
}
EOF
"$NGINX" -p "$WORK" -e "$WORK/error.log" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 &
PIDS+=($!)
python3 "$HERE/probe.py" wait-port "$TLS_PORT" 10

# shellcheck disable=SC2046
cc -O2 -Wall -Wno-format-truncation -o "$WORK/tlsload" "$HERE/tlsload.c" \
    $(pkg-config --cflags --libs openssl) -pthread

SP_PID=() SP_PORT=()
for i in "${!BINS[@]}"; do
    "${BINS[$i]}" --listen 127.0.0.1:0 --server-info "$WORK/si.$i.json" --log-level warn \
        --no-intercept --resolve "blind.bench.test:443:127.0.0.1:$TLS_PORT" \
        >"$WORK/sp.$i.out" 2>"$WORK/sp.$i.err" </dev/null &
    SP_PID[i]=$!
    PIDS+=($!)
    SP_PORT[i]=$(python3 "$HERE/probe.py" server-info "$WORK/si.$i.json" "${SP_PID[$i]}" 15)
done

ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
big=(--target blind.bench.test:443 --path /big --expect-bytes $((TUNNEL_MB * 1048576)) --io-timeout 30)
# one: SIDE -> prints "SIDE MBPS CPU_S"
one() {
    local side=$1 t0=0 t1=0 out
    if [[ $side == direct ]]; then
        out=$("$WORK/tlsload" --mode download --addr "127.0.0.1:$TLS_PORT" --ca "$WORK/ca.pem" "${big[@]}")
    else
        t0=$(ticks "${SP_PID[$side]}")
        out=$("$WORK/tlsload" --mode download --proxy "127.0.0.1:${SP_PORT[$side]}" --ca "$WORK/ca.pem" "${big[@]}")
        t1=$(ticks "${SP_PID[$side]}")
    fi
    [[ $out == *'"ok":true'* ]] || { echo "run failed ($side): $out" >&2; return 1; }
    local mbps=${out#*\"mb_per_s\":}
    echo "$side ${mbps%%[,\}]*} $(awk -v a="$t0" -v b="$t1" -v hz="$HZ" 'BEGIN { printf "%.3f", (b - a) / hz }')"
}

sides=(direct "${!BINS[@]}")
: >"$WORK/runs"
for ((r = 0; r < RUNS; r++)); do
    n=${#sides[@]}
    for ((k = 0; k < n; k++)); do
        s=${sides[$(((k + r) % n))]}
        one "$s" | tee -a "$WORK/runs"
    done
done
echo "--- $RUNS runs, $TUNNEL_MB MiB each; median MB/s (min..max), proxy CPU s/GiB (median)"
for s in "${sides[@]}"; do
    name=$s
    [[ $s == direct ]] || name="${BINS[$s]}"
    awk -v s="$s" -v name="$name" -v mb="$TUNNEL_MB" 'BEGIN { n = 0 } $1 == s { v[n] = $2; c[n] = $3 * 1024 / mb; n++ }
        function med(a, n,   i, j, t) {
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
            return n % 2 ? a[(n - 1) / 2] : (a[n / 2 - 1] + a[n / 2]) / 2 }
        END { m = med(v, n)
              printf "%-40s %7.1f MB/s (%.1f..%.1f)", name, m, v[0], v[n - 1]
              if (s != "direct") printf "  %.2f s/GiB", med(c, n)
              printf "\n" }' "$WORK/runs"
done

# SYSCALLS=1: one more download per build under strace -c (slows it; its
# MB/s is not reported), printing the proxy's syscalls per MiB.
if [[ ${SYSCALLS:-0} == 1 ]]; then
    echo "--- syscalls per MiB (strace -c -f, one $TUNNEL_MB MiB download)"
    for i in "${!BINS[@]}"; do
        strace -c -f -qq -o "$WORK/strace.$i" -p "${SP_PID[$i]}" &
        st=$!
        sleep 1
        one "$i" >/dev/null
        kill -INT "$st"
        wait "$st" || true
        awk -v name="${BINS[$i]}" -v mb="$TUNNEL_MB" '
            $NF == "total" { printf "%-40s %7.1f syscalls/MiB:", name, $(NF - 2) / mb }
            $1 ~ /^[0-9.]+$/ && $NF != "total" && $4 + 0 >= 1000 { top = top sprintf(" %s %.1f", $NF, $4 / mb) }
            END { print top }' "$WORK/strace.$i"
    done
fi
