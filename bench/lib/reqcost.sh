#!/bin/bash
# bench/lib/reqcost.sh BIN MODE TOOL [N] [C]: what one keep-alive request
# costs the daemon, counted deterministically (bench/PERF.md).
#   MODE: forward | gateway; TOOL: strace | callgrind | perf | none
#   callgrind and perf leave their data in ./reqcost.TOOL.MODE for a closer look.
# One worker (--threads 1), a local nginx upstream (keepalive unbounded),
# warm-up 2000 requests, then exactly N keep-alive requests over C
# connections (kaload) while TOOL watches the daemon.
set -u
BIN=$1 MODE=$2 TOOL=$3 N=${4:-20000} C=${5:-10}
T=$(mktemp -d /tmp/reqcost-bin.XXXX)
cc -O2 -o $T/kaload "$(dirname "$0")/kaload.c" || exit 1
D=$(mktemp -d /tmp/perfreq-run.XXXX)
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
UP=$(freeport)
mkdir -p $D/www/v1 $D/tmp $D/codex; chmod 755 $D $D/www $D/www/v1
head -c 200 /dev/zero | tr '\0' x >$D/www/small
cp $D/www/small $D/www/v1/models
cat >$D/nginx.conf <<NG
daemon off; worker_processes 1; pid $D/nginx.pid; error_log $D/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
 client_body_temp_path $D/tmp; proxy_temp_path $D/tmp; fastcgi_temp_path $D/tmp; uwsgi_temp_path $D/tmp; scgi_temp_path $D/tmp;
 server { listen 127.0.0.1:$UP; root $D/www; location / { default_type text/plain; } } }
NG
nginx -p $D -c $D/nginx.conf 2>$D/nginx.err & NGX=$!
WRAP=()
[[ $TOOL == callgrind ]] && WRAP=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=$D/cg.out)
CODEX_HOME=$D/codex "${WRAP[@]}" $BIN --listen 127.0.0.1:0 --server-info $D/si.json --log-level warn --threads 1 \
    --gateway "/v1/=http://127.0.0.1:$UP/v1/" >$D/sp.out 2>$D/sp.err & SP=$!
for i in $(seq 100); do [[ -s $D/si.json ]] && break; sleep 0.1; done
PORT=$(python3 -c "import json;print(json.load(open('$D/si.json'))['port'])")
if [[ $MODE == forward ]]; then TGT="http://127.0.0.1:$UP/small"; HOST="127.0.0.1:$UP"; else TGT=/v1/models; HOST="127.0.0.1:$PORT"; fi
$T/kaload $PORT $C 2000 "$TGT" "$HOST" >/dev/null || { echo warmup failed; cat $D/sp.err; }
case $TOOL in
strace)
    strace -c -f -qq -o $D/strace.out -p $SP & ST=$!; sleep 1
    $T/kaload $PORT $C $N "$TGT" "$HOST"; sleep 0.3; kill -INT $ST; wait $ST
    awk -v n=$N '/^ *[0-9.]+ +[0-9.]+ +[0-9]+ +[0-9]+/ { e=(NF==6)?$5:0; printf "%-14s %7.3f  err %6.3f\n", $NF, $4/n, e/n }' $D/strace.out | sort -k2 -nr ;;
callgrind)
    callgrind_control -i on $SP >/dev/null
    $T/kaload $PORT $C $N "$TGT" "$HOST"
    callgrind_control -d $SP >/dev/null; sleep 1
    f=$(ls $D/cg.out* | tail -1)
    tot=$(callgrind_annotate $f 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}')
    echo "Ir total $tot  per request $((tot / N))"
    cp $f ./reqcost.callgrind.$MODE ;;
perf)
    perf record -q -F 1999 -g -o $D/perf.data -p $SP 2>/dev/null & PF=$!; sleep 0.5
    $T/kaload $PORT $C $N "$TGT" "$HOST"; kill -INT $PF; wait $PF
    perf report -i $D/perf.data --no-children --sort dso -g none --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -12
    cp $D/perf.data ./reqcost.perf.$MODE ;;
cpu)
    for r in 1 2 3; do
      a=$(awk '{print $14+$15}' /proc/$SP/stat)
      $T/kaload $PORT $C $N "$TGT" "$HOST" >/dev/null
      b=$(awk '{print $14+$15}' /proc/$SP/stat)
      echo "cpu_us_per_req $(( (b - a) * 10000 / N ))"
    done ;;
none)
    /usr/bin/time -f "%e s" $T/kaload $PORT $C $N "$TGT" "$HOST" ;;
esac
kill $SP; wait $SP 2>/dev/null; kill -QUIT $(cat $D/nginx.pid 2>/dev/null) 2>/dev/null; wait $NGX 2>/dev/null
[[ -n ${KEEP:-} ]] && echo "kept $D" || rm -rf $D
rm -rf $T
