#!/bin/sh
# bench/gateway on the device machine (no Node, no nginx, no network there). Unpacks .carry/node.xz
# to /tmp/node and files.tar.xz (bench, standalone CLI, stand-in, nginx + Debian 12 libraries) to
# /tmp/dsr-gateway, then runs the bench at 1000 streams with fixed cores per side and writes
# gateway.json (and the bench's stderr) under "$OUT".
# Cores: PROXY_CPUS (dsr, dsr --workers N, nginx with worker_processes N; N = the count of these),
# UPSTREAM_CPUS (the stand-in, one process per core), LOADGEN_CPUS (the load generator, one thread
# per core). Extra arguments go to the bench and win over these (e.g. --seconds 12 --rounds 3).
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/out}
mkdir -p "$OUT"
command -v taskset >/dev/null || { echo "run.sh: taskset (util-linux) is needed to pin cores" >&2; exit 1; }
if [ ! -x /tmp/node ]; then xz -dc "$HERE/../node.xz" > /tmp/node.partial && chmod +x /tmp/node.partial && mv /tmp/node.partial /tmp/node; fi
W=/tmp/dsr-gateway
rm -rf "$W" && mkdir -p "$W"
xz -dc "$HERE/files.tar.xz" | tar -C "$W" -xf -
# nginx runs through the carried loader and libraries, whatever glibc this machine has
printf '#!/bin/sh\nexec %s/lib/ld-linux-x86-64.so.2 --library-path %s/lib %s/nginx.bin "$@"\n' "$W" "$W" "$W" > "$W/nginx"
chmod +x "$W/nginx"
"$W/nginx" -V 2>&1 | head -1 >&2
PROXY_CPUS=${PROXY_CPUS:-0-3}
UPSTREAM_CPUS=${UPSTREAM_CPUS:-4-9}
LOADGEN_CPUS=${LOADGEN_CPUS:-10-15}
BASE=""
[ -f "$W/dsr-baseline.mjs" ] && BASE="--compare-cli $W/dsr-baseline.mjs"
[ -f "$W/dsr-relay-baseline.node" ] && BASE="$BASE --compare-env DSR_NATIVE_RELAY=$W/dsr-relay-baseline.node"
# FLOOR=1 adds bench/node-floor (raw forwarding with --workers N) as a target
[ -n "${FLOOR:-}" ] && BASE="$BASE --floor $W/node-floor.mjs"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "load before: $(cat /proc/loadavg)" >&2
cd "$W"
# arguments given to run.sh come first: the bench takes the first occurrence of a flag
DSR_BENCH_ROOT="$W" /tmp/node "$W/gateway.mjs" "$@" --concurrency 1000 \
  --proxy-cpus "$PROXY_CPUS" --upstream-cpus "$UPSTREAM_CPUS" --loadgen-cpus "$LOADGEN_CPUS" \
  --dsr-cli "$W/dsr.mjs" --standin "$W/standin.mjs" --nginx "$W/nginx" $BASE \
  > "$OUT/gateway.json" 2> "$OUT/gateway.stderr"
echo "load after: $(cat /proc/loadavg)" >&2
cat "$OUT/gateway.json"
