#!/bin/sh
# What rejecting costs the gateway: dsr serve --upstream with --max-concurrency 1 --max-queue 0 in front of a
# slow stand-in, so that nearly every request of a closed loop of 50 gets a 429; prints the load's JSON
# (errors = 429s) with the gateway's CPU over those 5 s, as one JSON document. Usage: sh bench/gateway-overload.sh [LABEL]
cd "$(dirname "$0")/.."
node --import tsx test/support/standin-upstream.ts --port 18961 --tokens 64 --pace-ms 50 > /dev/null 2>&1 &
SP=$!
sleep 2
node bin/dsr serve --upstream http://127.0.0.1:18961 --port 18962 --max-concurrency 1 --max-queue 0 > /tmp/gw7.log 2>&1 &
GP=$!
for i in $(seq 1 30); do curl -s localhost:18962/ready >/dev/null && break; sleep 0.3; done
node bench/sse-load.mjs 18962 50 2 > /dev/null
T0=$(awk '{print $14+$15}' /proc/$GP/stat)
R=$(node bench/sse-load.mjs 18962 50 5)
T1=$(awk '{print $14+$15}' /proc/$GP/stat)
echo "{\"label\":\"${1:-}\",\"load\":$R,\"gateway_cpu_s\":$(((T1-T0)/100)).$(printf %02d $(((T1-T0)%100)))}"
kill $GP $SP; wait $GP $SP 2>/dev/null
