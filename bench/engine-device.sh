#!/usr/bin/env bash
# The embedded-engine benchmark (bench/engine.ts) for a machine without node_modules (the GPU
# machine's CPU: more cores than this one).
#
#   bench/engine-device.sh build     # here: writes .carry/engine/ (~13 MB, most of it onnxruntime-node)
#   .carry/engine/run.sh             # there: OUT=<dir>; needs .carry/node.xz beside it
#
# build: an esbuild bundle of bench/engine.ts (everything but the native onnxruntime-node inlined)
# and a tarball of node_modules/onnxruntime-node (linux x64 binaries only) + onnxruntime-common.
# run: unpacks node to /tmp/node, builds the 1.5B-shaped int4 model once under /tmp, then runs the
# bench with every core (--threads $(nproc)) and pinned to 2 cores (taskset -c 0,1 --threads 2),
# writing $OUT/engine-<threads>.json (progress in .log). Arguments go to both bench runs.
set -euo pipefail

if [[ "${1:-}" == "build" ]]; then
  cd "$(dirname "$0")/.."
  out="$PWD/.carry/engine"
  rm -rf "$out" && mkdir -p "$out"
  npx esbuild bench/engine.ts --bundle --platform=node --format=esm --target=node20 --log-level=warning \
    --external:onnxruntime-node --outfile="$out/bench-engine.mjs" \
    "--banner:js=import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);"
  tar -cJf "$out/ort.tar.xz" --exclude='bin/napi-v*/darwin' --exclude='bin/napi-v*/win32' --exclude='bin/napi-v*/linux/arm64' \
    node_modules/onnxruntime-node node_modules/onnxruntime-common
  cp bench/engine-device.sh "$out/run.sh"
  chmod +x "$out/run.sh"
  du -sh "$out"
  exit 0
fi

here="$(cd "$(dirname "$0")" && pwd)"
: "${OUT:?set OUT to the results folder}"
mkdir -p "$OUT"
if [[ ! -x /tmp/node ]]; then xz -dc "$here/../node.xz" > /tmp/node && chmod +x /tmp/node; fi
export PATH="/tmp:$PATH"
work=/tmp/dsr-bench-engine-device
mkdir -p "$work"
tar -xJf "$here/ort.tar.xz" -C "$work"
cp "$here/bench-engine.mjs" "$work/"
cd "$work"
# The first run builds the model and keeps it; the second reuses it.
node bench-engine.mjs --threads "$(nproc)" --keep --dir "$work" "$@" > "$OUT/engine-$(nproc).json" 2> "$OUT/engine-$(nproc).log"
model=$(ls -d "$work"/dsr-bench-engine-*/onnx | head -1)
taskset -c 0,1 node bench-engine.mjs --threads 2 --model "$model" "$@" > "$OUT/engine-2.json" 2> "$OUT/engine-2.log"
tail -n 3 "$OUT"/engine-*.log
