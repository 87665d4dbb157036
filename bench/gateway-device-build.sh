#!/bin/sh
# Builds the device bundle for bench/gateway (run from the repository root, on the development
# machine): the bench, the standalone CLI, the stand-in, bench/node-floor as single .mjs files with every JS
# dependency inlined, plus this machine's nginx with Debian 12's loader and libraries and a TLS
# certificate for --tls, xz-packed.
# BASELINE=DIR (a built checkout of another commit) adds that CLI as the bench's dsr_baseline.
# Writes .carry/gateway/ (files.tar.xz + run.sh, a copy of bench/gateway-device-run.sh, and the
# bench/loop-stats preload with its summariser; key-limits.mjs is bench/key-limits.ts); carry it with
# .carry/node.xz and run `sh .carry/gateway/run.sh --seconds 12 --rounds 3` there.
set -eu
OUT=.carry/gateway
mkdir -p "$OUT"
cp bench/gateway-device-run.sh "$OUT/run.sh"
cp bench/loop-stats.mjs bench/loop-stats-summary.mjs "$OUT/"
STAGE=$(mktemp -d)
VERSION=$(node -p 'require("./package.json").version')
bundle() { # entry outfile [root]
  (cd "${3:-.}" && node -e '
    const [entry, outfile, version] = process.argv.slice(1);
    require("esbuild").build({ entryPoints: [entry], outfile, bundle: true, platform: "node", target: "node20", format: "esm", minify: true,
      external: ["onnxruntime-node"], define: { __DSR_VERSION__: JSON.stringify(version) }, logLevel: "warning",
      banner: { js: "import { createRequire as __cr } from \"node:module\"; const require = __cr(import.meta.url);" } }).catch(() => process.exit(1));
  ' "$1" "$2" "$VERSION")
}
bundle bench/gateway.ts "$STAGE/gateway.mjs"
bundle src/cli.ts "$STAGE/dsr.mjs"
bundle test/support/standin-upstream.ts "$STAGE/standin.mjs"
bundle bench/node-floor.ts "$STAGE/node-floor.mjs"
bundle bench/key-limits.ts "$STAGE/key-limits.mjs"
cp bench/otlp-sink.mjs "$STAGE/otlp-sink.mjs" # a loopback OTLP/HTTP receiver: the cost of --otlp-traces-endpoint
if [ -n "${BASELINE:-}" ]; then bundle src/cli.ts "$STAGE/dsr-baseline.mjs" "$BASELINE"; fi
# the native relay beside dsr.mjs, where it looks for it (npm run build makes dist/dsr-relay.node);
# `--compare-cli /tmp/dsr-gateway/dsr.mjs --compare-env DSR_RELAY=js` then A/Bs it against the JS relay
if [ -f dist/dsr-relay.node ]; then cp dist/dsr-relay.node "$STAGE/dsr-relay.node"; else echo "gateway-device-build: no dist/dsr-relay.node (npm run build): dsr relays in JS" >&2; fi
# the baseline's own native relay (its addon's API may differ): run.sh points the baseline at it with DSR_NATIVE_RELAY
if [ -n "${BASELINE:-}" ] && [ -f "$BASELINE/dist/dsr-relay.node" ]; then cp "$BASELINE/dist/dsr-relay.node" "$STAGE/dsr-relay-baseline.node"; fi
# bench/gateway --tls: a certificate for 127.0.0.1 (the device may have no openssl)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$STAGE/tls.key" -out "$STAGE/tls.crt" \
  -days 30 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1 2>/dev/null
mkdir -p "$STAGE/lib"
cp /usr/sbin/nginx "$STAGE/nginx.bin"
for l in ld-linux-x86-64.so.2 libc.so.6 libcrypt.so.1 libpcre2-8.so.0 libssl.so.3 libcrypto.so.3 libz.so.1; do
  cp -L "/lib/x86_64-linux-gnu/$l" "$STAGE/lib/$l"
done
tar -C "$STAGE" -cf - . | xz -9e > "$OUT/files.tar.xz"
rm -rf "$STAGE"
ls -la "$OUT"
