#!/usr/bin/env bash
# The torch worker's device run: correctness on the GPU, throughput against transformers' generate(),
# and `dsr serve` choosing the torch engine on its own.
#
#   bench/torch-device.sh build     # here: writes .carry/torch/ (bundled bench + standalone CLI)
#   .carry/torch/run.sh             # there: OUT=<dir>; needs .carry/node.xz; repo root as cwd
#   .carry/torch/run.sh dp          # there, on a host with 2+ GPUs: one torch instance against one
#                                   # per GPU (`--instances 2`), the same load (bench/serve-load.ts)
#
# run: 1. bench/torch-engine.ts --reference tiny-r1 (fp32 must equal the transformers reference; then
#         32 questions plain and with response_format json_object)
#      2. a random-weight R1-Distill-Qwen-1.5B-shaped checkpoint (bench/make_qwen_checkpoint.py) under
#         /tmp, then bench/torch-engine.ts (plus --constrained: json_object's worst case) and
#         bench/hf_generate.py on it, same loads
#      3. `dsr serve tiny-r1` with no --engine (auto) and one chat request with curl
#         (torch-engine twice: CUDA graphs, then --eager)
# Results: $OUT/torch-reference.json, torch-engine.json, torch-engine-eager.json, hf-generate.json,
# serve.log, serve-chat.json.
set -euo pipefail

if [[ "${1:-}" == "build" ]]; then
  cd "$(dirname "$0")/.."
  out="$PWD/.carry/torch"
  rm -rf "$out" && mkdir -p "$out"
  for b in torch-engine:bench-torch serve-load:serve-load; do
    npx esbuild "bench/${b%%:*}.ts" --bundle --platform=node --format=esm --target=node20 --log-level=warning \
      --outfile="$out/${b##*:}.mjs" "--banner:js=import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"
  done
  node scripts/build.mjs --standalone && rm -rf "$out/cli" && cp -r dist-standalone "$out/cli"
  cp bench/torch-device.sh "$out/run.sh"
  chmod +x "$out/run.sh"
  du -sh "$out"
  exit 0
fi

: "${OUT:?set OUT}"
mkdir -p "$OUT" /tmp/node
[ -x /tmp/node/node ] || xz -dc .carry/node.xz > /tmp/node/node && chmod +x /tmp/node/node
NODE=/tmp/node/node
TINY=test/fixtures/models/tiny-r1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true

if [[ "${1:-}" == "dp" ]]; then
  [ -f /tmp/q15/model.safetensors ] || python3 bench/make_qwen_checkpoint.py /tmp/q15 "$TINY" > "$OUT/checkpoint.json"
  for n in 1 2; do
    PORT=$((8200 + n))
    $NODE .carry/torch/cli/cli.mjs serve /tmp/q15 --engine torch --instances $n --max-num-seqs 64 --max-model-len 1024 --port $PORT > "$OUT/dp$n.out" 2> "$OUT/dp$n.log" &
    pid=$!
    for _ in $(seq 1 240); do curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null && break; sleep 0.5; done
    nvidia-smi --query-compute-apps=pid,gpu_uuid,used_memory --format=csv > "$OUT/dp$n-gpus.csv"
    $NODE .carry/torch/serve-load.mjs --url "http://127.0.0.1:$PORT" --model q15 --concurrency 64 --requests 64 --max-tokens 32 > /dev/null  # warm-up
    $NODE .carry/torch/serve-load.mjs --url "http://127.0.0.1:$PORT" --model q15 --concurrency ${DP_CONCURRENCY:-128} --requests ${DP_REQUESTS:-1024} --max-tokens 128 > "$OUT/dp$n.json"
    kill -TERM $pid; wait $pid || true
  done
  exit 0
fi

$NODE .carry/torch/bench-torch.mjs --reference "$TINY" --device cuda > "$OUT/torch-reference.json" 2> "$OUT/torch-reference.log"

[ -f /tmp/q15/model.safetensors ] || python3 bench/make_qwen_checkpoint.py /tmp/q15 "$TINY" > "$OUT/checkpoint.json"
$NODE .carry/torch/bench-torch.mjs --model /tmp/q15 --device cuda --dtype bfloat16 --constrained ${BENCH_ARGS:-} > "$OUT/torch-engine.json" 2> "$OUT/torch-engine.log"
$NODE .carry/torch/bench-torch.mjs --model /tmp/q15 --device cuda --dtype bfloat16 --eager ${BENCH_ARGS:-} > "$OUT/torch-engine-eager.json" 2> "$OUT/torch-engine-eager.log"
python3 bench/hf_generate.py --model /tmp/q15 ${HF_ARGS:-} > "$OUT/hf-generate.json" 2> "$OUT/hf-generate.log"

PORT=8123
$NODE .carry/torch/cli/cli.mjs serve "$TINY" --port $PORT > "$OUT/serve.out" 2> "$OUT/serve.log" &
pid=$!
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/ready" > /dev/null && break; sleep 0.5; done
curl -s "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model":"tiny-r1","messages":[{"role":"user","content":"What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}."}],"temperature":0}' > "$OUT/serve-chat.json"
curl -s "http://127.0.0.1:$PORT/ready" > "$OUT/serve-ready.json"
kill -TERM $pid; wait $pid || true
