/**
 * Benchmark of `dsr inspect` on the 163-shard DeepSeek-R1-shaped repo, printed as one JSON document.
 *
 *   npx tsx bench/inspect.ts [--latency 50] [--parallel 16] [--reps 3] [--cli dist/cli.mjs]
 *
 * Run under tsx, the script first bundles itself with esbuild (like `npm run build` bundles the CLI)
 * into .bench-out/inspect.mjs and re-runs that with plain node: tsx's module hooks cost time the
 * shipped CLI does not pay.
 *
 * Remote: the loopback hub (test/support/hub-server.ts, in a child process) serves the repo (real R1 tensor names,
 * shapes and dtypes; headers real, tensor bytes never materialised) with --latency ms added to every
 * request that reaches the hub. Measured from opening the repo (commit + listing) to the finished
 * report: wall time, HTTP requests (client and server counts), range requests on shards and the
 * bytes they carried, against Σ(8 + N) of the shard headers.
 * Baseline, same run, same parallelism: huggingface_hub's strategy — a fixed first range of
 * 100,001 bytes per shard, then the rest of the header if it did not fit.
 * Local: the same repo as sparse files on disk; in-process open + report (what inspect computes),
 * and the whole CLI as a child process next to `dsr --version` (Node start + module loading).
 */
import { execFileSync, fork, spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { buildInspectReport, openCheckpoint, openLocalSource, remoteSource } from "../src/engine/checkpoint/index.js";
import { openRemoteRepo, parseRepoSpec } from "../src/engine/hub/index.js";
import { gpuProfile } from "../src/engine/plan/index.js";
import { readHeader } from "../src/engine/tensors/read.js";
import { r1ShapedRepo, writeSparseRepo } from "../test/support/fixtures.js";
import { startHubServer } from "../test/support/hub-server.js";

if (import.meta.url.endsWith(".ts")) {
  const { build } = await import("esbuild");
  const out = resolve(".bench-out/inspect.mjs");
  await build({ entryPoints: [fileURLToPath(import.meta.url)], outfile: out, bundle: true, platform: "node", format: "esm", target: "node20", packages: "external", logLevel: "error" });
  const r = spawnSync(process.execPath, [out, ...process.argv.slice(2)], { stdio: "inherit" });
  process.exit(r.status ?? 1);
}

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const LATENCY = Number(opt("latency", "50"));
const PARALLEL = Number(opt("parallel", "16"));
const REPS = Number(opt("reps", "3"));
const CLI = resolve(opt("cli", "dist/cli.mjs"));
const log = (s: string) => process.stderr.write(`[bench inspect] ${s}\n`);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const ms = (t0: number) => Math.round(performance.now() - t0);

const loadavgAtStart = loadavg().map((x) => +x.toFixed(2));
const repo = r1ShapedRepo();
const shardNames = new Set(repo.shards.map((s) => s.file));

// The loopback hub runs in a child process (this same script with --serve), as a real hub would be
// elsewhere: its CPU does not count against the client's. Stats come back over IPC.
if (args.includes("--serve")) {
  const hub = await startHubServer({ repos: [{ id: "deepseek-ai/DeepSeek-R1", files: repo.files, sha256: () => "0".repeat(64) }], latencyMs: LATENCY });
  process.on("message", (m: { cmd: string }) => {
    if (m.cmd === "reset") hub.resetStats();
    const byPath = Object.fromEntries(hub.stats.byPath);
    process.send!({ requests: hub.stats.requests, rangeRequests: hub.stats.rangeRequests, byPath });
    if (m.cmd === "close") void hub.close().then(() => process.exit(0));
  });
  process.send!({ hfEndpoint: hub.hfEndpoint });
  await new Promise(() => {});
}
const child = fork(fileURLToPath(import.meta.url), [...args, "--serve"], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
type HubStats = { requests: number; rangeRequests: number; byPath: Record<string, number> };
/** Sends a command to the hub process and waits for its stats reply. */
const ask = (cmd: string) => {
  const reply = new Promise<HubStats>((res) => child.once("message", (m) => res(m as HubStats)));
  child.send({ cmd });
  return reply;
};
const ready = (await new Promise((res) => child.once("message", res))) as { hfEndpoint: string };
const hub = {
  hfEndpoint: ready.hfEndpoint,
  stats: { requests: 0, byPath: {} as Record<string, number> },
  async resetStats() {
    await ask("reset");
  },
  async refresh() {
    const r = await ask("stats");
    this.stats = { requests: r.requests, byPath: r.byPath };
  },
  async close() {
    child.send({ cmd: "close" });
    await new Promise((res) => child.once("exit", res));
  },
};
const shardStats = () => {
  let bytes = 0;
  for (const [p, n] of Object.entries(hub.stats.byPath)) if (shardNames.has(p)) bytes += n;
  return bytes;
};

async function remoteDsr() {
  await hub.resetStats();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const remote = await openRemoteRepo(parseRepoSpec("deepseek-ai/DeepSeek-R1"), { hfEndpoint: hub.hfEndpoint });
  const ck = await openCheckpoint(remoteSource(remote), { concurrency: PARALLEL });
  const report = buildInspectReport(ck, { gpu: gpuProfile("h200"), gpus: 8 });
  const wallMs = ms(t0);
  const cpu = process.cpuUsage(c0);
  await hub.refresh();
  if (!report.ok || ck.tensors.size !== repo.tensorCount) throw new Error("remote inspect of the R1-shaped repo was not clean");
  const client = remote.stats();
  return {
    wallMs,
    /** CPU of the client process (the hub is another process). */
    cpuMs: Math.round((cpu.user + cpu.system) / 1000),
    clientRequests: client.requests,
    clientBytes: client.bytes,
    serverRequests: hub.stats.requests,
    shardRangeRequests: ck.reads.headerReads,
    rangeRequestsPerShard: +(ck.reads.headerReads / repo.shards.length).toFixed(3),
    shardBytes: shardStats(),
    bytesOverHeaderBytes: +(shardStats() / repo.headerBytes).toFixed(3),
    verdict: report.plan?.verdict,
  };
}

/** huggingface_hub's parse_safetensors_file_metadata strategy, same listing and parallelism. */
async function remoteBaseline() {
  await hub.resetStats();
  const t0 = performance.now();
  const remote = await openRemoteRepo(parseRepoSpec("deepseek-ai/DeepSeek-R1"), { hfEndpoint: hub.hfEndpoint });
  const files = remote.files.filter((f) => shardNames.has(f.path)).map((f) => f.path);
  let next = 0;
  let reads = 0;
  await Promise.all(
    Array.from({ length: PARALLEL }, async () => {
      while (next < files.length) {
        const r = await readHeader(remote.fileSource(files[next++]), { speculativeBytes: 100_001 });
        reads += r.reads;
      }
    }),
  );
  const wallMs = ms(t0);
  await hub.refresh();
  return { wallMs, shardRangeRequests: reads, rangeRequestsPerShard: +(reads / files.length).toFixed(3), shardBytes: shardStats(), bytesOverHeaderBytes: +(shardStats() / repo.headerBytes).toFixed(3) };
}

log(`R1-shaped repo: ${repo.shards.length} shards, ${repo.tensorCount} tensors, ${repo.headerBytes} header bytes; latency ${LATENCY} ms; parallelism ${PARALLEL}`);
const remoteRuns: Awaited<ReturnType<typeof remoteDsr>>[] = [];
const baselineRuns: Awaited<ReturnType<typeof remoteBaseline>>[] = [];
for (let i = 0; i < REPS; i++) {
  baselineRuns.push(await remoteBaseline());
  remoteRuns.push(await remoteDsr());
  log(`rep ${i + 1}: dsr ${remoteRuns.at(-1)!.wallMs} ms, baseline ${baselineRuns.at(-1)!.wallMs} ms`);
}
await hub.close();

const dir = mkdtempSync(join(tmpdir(), "dsr-bench-inspect-"));
await writeSparseRepo(dir, repo);
const localRuns: number[] = [];
const localCpu: number[] = [];
for (let i = 0; i < REPS; i++) {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const ck = await openCheckpoint(await openLocalSource(dir));
  buildInspectReport(ck, { gpu: gpuProfile("h200"), gpus: 8 });
  localRuns.push(ms(t0));
  const c = process.cpuUsage(c0);
  localCpu.push(Math.round((c.user + c.system) / 1000));
}
const cliRuns: number[] = [];
const startupRuns: number[] = [];
for (let i = 0; i < REPS; i++) {
  let t0 = performance.now();
  execFileSync(process.execPath, [CLI, "--version"], { stdio: "ignore" });
  startupRuns.push(ms(t0));
  t0 = performance.now();
  execFileSync(process.execPath, [CLI, "--json", "inspect", dir, "--gpu", "h200", "--gpus", "8"], { stdio: "ignore", maxBuffer: 1 << 26 });
  cliRuns.push(ms(t0));
}
rmSync(dir, { recursive: true, force: true });

const pick = remoteRuns[remoteRuns.indexOf(remoteRuns.find((r) => r.wallMs === median(remoteRuns.map((x) => x.wallMs)))!)];
const result = {
  bench: "inspect",
  machine: { loadavgAtStart, loadavgAtEnd: loadavg().map((x) => +x.toFixed(2)), cpus: cpus().length, node: process.version },
  repo: { shards: repo.shards.length, tensors: repo.tensorCount, headerBytes: repo.headerBytes, tensorBytes: repo.tensorBytes },
  remote: {
    latencyMs: LATENCY,
    parallelism: PARALLEL,
    dsr: { ...pick, wallMsRuns: remoteRuns.map((r) => r.wallMs) },
    baselineHfHub100k: { ...baselineRuns[0], wallMsRuns: baselineRuns.map((r) => r.wallMs) },
    targets: { rangeRequestsPerShard: "<= 1.1", bytesOverHeaderBytes: "<= 1.3", wallMs: "< 3000" },
    met: pick.rangeRequestsPerShard <= 1.1 && pick.bytesOverHeaderBytes <= 1.3 && pick.wallMs < 3000,
  },
  local: {
    sparseFiles: true,
    inProcessMs: median(localRuns),
    inProcessMsRuns: localRuns,
    inProcessCpuMsRuns: localCpu,
    cliMs: median(cliRuns),
    cliMsRuns: cliRuns,
    cliStartupMs: median(startupRuns),
    target: "< 1000 ms",
    met: median(localRuns) < 1000,
  },
};
process.stdout.write(JSON.stringify(result, null, 2) + "\n");
