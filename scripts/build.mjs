// Bundles the CLI into dist/ with esbuild. Dependencies stay external (resolved from node_modules)
// unless --standalone is given, which inlines everything except native addons so the bundle plus
// the `node` binary can travel to a machine without node_modules (the GPU machine).
import { build } from "esbuild";
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, renameSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";

const pkg = JSON.parse(readFileSync("package.json", "utf8"));

const standalone = process.argv.includes("--standalone");
const outdir = standalone ? "dist-standalone" : "dist";
rmSync(outdir, { recursive: true, force: true });
await build({
  // convert-worker: the worker_threads entry of `dsr convert` (loaded by URL next to cli.mjs).
  // embedded-worker: the embedded engine's session + scheduler thread (src/engine/runtime/embedded).
  entryPoints: { cli: "src/cli.ts", "convert-worker": "src/engine/transform/worker.ts", "embedded-worker": "src/engine/runtime/embedded/worker.ts" },
  outdir,
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  // One chunk per lazily loaded subcommand (src/commands/index.ts); chunks sit beside the workers so
  // `new URL("./x-worker.mjs", import.meta.url)` resolves the same from any chunk.
  splitting: true,
  chunkNames: "chunk-[hash]",
  outExtension: { ".js": ".mjs" },
  sourcemap: true,
  packages: standalone ? undefined : "external",
  external: ["onnxruntime-node"],
  banner: standalone
    ? { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" }
    : undefined,
  define: { __DSR_VERSION__: JSON.stringify(pkg.version) },
  logLevel: "warning",
});

// The gateway's native relay (src/engine/serve/relay-native.c), beside the bundle as dsr-relay.node.
// Optional: without a C compiler or Node's headers, `dsr serve` relays every stream in JS (same
// bytes, more CPU per stream), and the build says so. Compiled straight with cc rather than through
// node-gyp, which would fetch Node's headers over the network: the ones installed with Node suffice.
const include = [process.env.DSR_NODE_INCLUDE, resolve(dirname(process.execPath), "../include/node")].find((p) => p && existsSync(join(p, "node_api.h")));
const addon = join(outdir, "dsr-relay.node");
if (include === undefined) {
  console.warn("build: Node's headers (include/node/node_api.h) not found: dsr serve will relay streams in JS (set DSR_NODE_INCLUDE)");
} else {
  const cc = process.env.CC || "cc";
  const r = spawnSync(cc, ["-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-I", include, "-o", `${addon}.part`, "src/engine/serve/relay-native.c"], { stdio: "inherit" });
  if (r.status === 0) renameSync(`${addon}.part`, addon);
  else {
    rmSync(`${addon}.part`, { force: true });
    console.warn(`build: ${cc} could not build the native relay (${r.error?.message ?? `exit ${r.status}`}): dsr serve will relay streams in JS`);
  }
}
