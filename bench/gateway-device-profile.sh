#!/bin/sh
# A perf profile of `dsr serve --workers 4` on the device machine (cores 0-3) under SSE load, with
# the native relay and with DSR_RELAY=js, one after the other. Needs the gateway bundle
# (sh bench/gateway-device-build.sh) and a tools bundle made on the development machine:
#   mkdir -p /tmp/tools-stage/lib && cp /usr/bin/perf /tmp/tools-stage/perf.bin
#   for l in $(ldd /usr/bin/perf | awk '{print $3}' | grep /) /lib64/ld-linux-x86-64.so.2; do cp -L $l /tmp/tools-stage/lib/; done
#   npx esbuild bench/sse-load.mjs --bundle --platform=node --format=esm --outfile=/tmp/tools-stage/load.mjs \
#     --banner:js='import { createRequire as __cr } from "node:module"; const require = __cr(import.meta.url);'
#   mkdir -p .carry/tools && tar -C /tmp/tools-stage -cf - . | xz -6 > .carry/tools/tools.tar.xz && cp bench/gateway-device-profile.sh .carry/tools/prof.sh
# (bench/sse-load.mjs: a closed loop of streaming /v1/completions requests on an undici Pool: PORT CONCURRENCY SECONDS.)
# On the device: carry .carry/node.xz, .carry/gateway and .carry/tools; run `OUT=$OUT sh .carry/tools/prof.sh`.
# PACE=50 profiles at a real token pace (default 1 ms); MODES=native profiles one side only.
# perf profile of dsr serve --workers 4 (cores 0-3) under SSE load: native relay vs DSR_RELAY=js
set -u
T=/tmp/tools; mkdir -p $T; xz -dc .carry/tools/tools.tar.xz | tar -C $T -xf -
PERF="$T/lib/ld-linux-x86-64.so.2 --library-path $T/lib $T/perf.bin"
W=/tmp/dsr-gateway; mkdir -p $W; xz -dc .carry/gateway/files.tar.xz | tar -C $W -xf -
[ -x /tmp/node ] || { xz -dc .carry/node.xz > /tmp/node; chmod +x /tmp/node; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
$PERF --version
cd $W
taskset -c 4-9 /tmp/node standin.mjs --port 18931 --tokens 64 --pace-ms ${PACE:-1} > /dev/null 2>&1 &
SP=$!
sleep 1
for mode in ${MODES:-native js}; do
  if [ $mode = js ]; then export DSR_RELAY=js; else unset DSR_RELAY; fi
  taskset -c 0-3 /tmp/node dsr.mjs serve --upstream http://127.0.0.1:18931 --port 18932 --workers 4 --max-concurrency 100000 --max-queue 100000 > $OUT/serve-$mode.log 2>&1 &
  GP=$!
  for i in $(seq 1 50); do grep -q serving $OUT/serve-$mode.log && break; sleep 0.2; done
  L=""
  for k in 1 2 3; do taskset -c 10-15 /tmp/node $T/load.mjs 18932 333 14 > $OUT/load-$mode-$k.json & L="$L $!"; done
  sleep 5
  cat /proc/loadavg
  $PERF record -C 0-3 -F 1999 -g -o /tmp/perf-$mode.data -- sleep 6 2> $OUT/perf-rec-$mode.err
  wait $L
  $PERF report -i /tmp/perf-$mode.data --no-children --sort dso,sym --stdio 2>/dev/null | grep -v "^#" | grep "%" | head -60 > $OUT/report-$mode.txt
  $PERF report -i /tmp/perf-$mode.data --no-children --sort comm,dso --stdio 2>/dev/null | grep -v "^#" | grep "%" | head -20 > $OUT/dso-$mode.txt
  kill $GP; sleep 1
done
kill $SP
cat $OUT/load-*.json; head -5 $OUT/dso-*.txt
