#!/usr/bin/env bash
# The `dsr pull` benchmark (bench/pull.ts) for a machine without Node or node_modules.
#
#   bench/pull-device.sh build [BASE_COMMIT]   # here: writes .carry/pull/ (< 4 MB)
#   .carry/pull/run.sh [bench args]             # there: OUT=<dir>; needs .carry/node.xz and curl
#
# build: esbuild bundles of bench/pull.ts (hub server and resume-state reader inlined) and of the
# CLI (every dependency inlined, minified, split per subcommand like dist/ so start-up loads only
# what `pull` needs; one .tgz), plus this script as run.sh. With BASE_COMMIT, the CLI of that commit
# is bundled too and run as `dsrCompare` (same-run A/B).
# run: unpacks node to /tmp/node, then runs the bench with the files under /tmp (disk) and under
# /dev/shm (tmpfs), writing $OUT/pull-disk.json and $OUT/pull-tmpfs.json (progress in *.log);
# arguments go to the bench (e.g. --gib 0.25 for a quick check).
set -euo pipefail

bundle() { # entry esbuild-args…
  npx esbuild "$1" --bundle --platform=node --format=esm --target=node20 --log-level=warning \
    "--banner:js=import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" "${@:2}"
}
cli_bundle() { # source-root out.tgz
  local version tmp
  version=$(node -p "require('$1/package.json').version")
  tmp=$(mktemp -d)
  (cd "$1" && bundle src/cli.ts --outdir="$tmp" --splitting --chunk-names=chunk-[hash] --out-extension:.js=.mjs \
    --minify --external:onnxruntime-node "--define:__DSR_VERSION__=\"$version\"")
  tar -czf "$2" -C "$tmp" .
  rm -rf "$tmp"
}

if [[ "${1:-}" == "build" ]]; then
  cd "$(dirname "$0")/.."
  out="$PWD/.carry/pull"
  rm -rf "$out" && mkdir -p "$out"
  bundle bench/pull.ts --outfile="$out/bench-pull.mjs"
  cli_bundle "$PWD" "$out/dsr.tgz"
  if [[ -n "${2:-}" ]]; then
    base=$(mktemp -d)
    git archive "$2" | tar -x -C "$base"
    ln -s "$PWD/node_modules" "$base/node_modules"
    cli_bundle "$base" "$out/dsr-base.tgz"
    git rev-parse --short "$2" > "$out/base-commit.txt"
    rm -rf "$base"
  fi
  cp bench/pull-device.sh "$out/run.sh"
  chmod +x "$out/run.sh"
  du -sh "$out"
  exit 0
fi

here="$(cd "$(dirname "$0")" && pwd)"
: "${OUT:?set OUT to the results folder}"
mkdir -p "$OUT"
if [[ ! -x /tmp/node ]]; then xz -dc "$here/../node.xz" > /tmp/node && chmod +x /tmp/node; fi
export PATH="/tmp:$PATH"
command -v curl > /dev/null || { echo "curl not found: the bench needs it for its baselines" >&2; exit 1; }
work=$(mktemp -d)
mkdir -p "$work/dsr" "$work/base"
tar -xzf "$here/dsr.tgz" -C "$work/dsr"
compare=()
if [[ -f "$here/dsr-base.tgz" ]]; then
  tar -xzf "$here/dsr-base.tgz" -C "$work/base"
  compare=(--compare "$work/base/cli.mjs")
fi
node --version
for target in disk:/tmp tmpfs:/dev/shm; do
  name=${target%%:*}
  dir=${target#*:}
  echo "== $name ($dir), load: $(cut -d' ' -f1-3 /proc/loadavg)"
  node "$here/bench-pull.mjs" --dir "$dir" --cli "$work/dsr/cli.mjs" ${compare[@]+"${compare[@]}"} "$@" > "$OUT/pull-$name.json" 2> "$OUT/pull-$name.log" || { cat "$OUT/pull-$name.log" >&2; exit 1; }
  tail -n 12 "$OUT/pull-$name.log"
done
rm -rf "$work"
