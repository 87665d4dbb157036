// Bundles the CLI into dist/ with esbuild. Dependencies stay external (resolved from node_modules)
// unless --standalone is given, which inlines everything except native addons so the bundle plus
// the `node` binary can travel to a machine without node_modules (the GPU machine).
import { build } from "esbuild";
import { readFileSync, rmSync } from "node:fs";

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
