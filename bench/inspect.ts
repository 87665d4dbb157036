/**
 * Benchmark of `dsr inspect` on the 163-shard DeepSeek-R1-shaped repo, printed as one JSON document.
 *
 *   npx tsx bench/inspect.ts [--latency 50] [--parallel 16] [--reps 3] [--cli dist/cli.mjs]
 *
 * Remote: the loopback hub (test/support/hub-server.ts) serves the repo (real R1 tensor names,
 * shapes and dtypes; headers real, tensor bytes never materialised) with --latency ms added to every
 * request that reaches the hub. Measured from opening the repo (commit + listing) to the finished
 * report: wall time, HTTP requests (client and server counts), range requests on shards and the
 * bytes they carried, against Σ(8 + N) of the shard headers.
 * Baseline, same run, same parallelism: huggingface_hub's strategy — a fixed first range of
 * 100,001 bytes per shard, then the rest of the header if it did not fit.
 * Local: the same repo as sparse files on disk; in-process open + report (what inspect computes),
 * and the whole CLI as a child process next to `dsr --version` (Node start + module loading).
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { buildInspectReport, openCheckpoint, openLocalSource, remoteSource } from "../src/engine/checkpoint/index.js";
import { openRemoteRepo, parseRepoSpec } from "../src/engine/hub/index.js";
import { gpuProfile } from "../src/engine/plan/index.js";
import { readHeader } from "../src/engine/tensors/read.js";
import { r1ShapedRepo, writeSparseRepo } from "../test/support/fixtures.js";
import { startHubServer } from "../test/support/hub-server.js";

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

const repo = r1ShapedRepo();
const shardNames = new Set(repo.shards.map((s) => s.file));
const hub = await startHubServer({
  repos: [{ id: "deepseek-ai/DeepSeek-R1", files: repo.files, sha256: () => "0".repeat(64) }],
  latencyMs: LATENCY,
});
const shardStats = () => {
  let bytes = 0;
  for (const [p, n] of hub.stats.byPath) if (shardNames.has(p)) bytes += n;
  return bytes;
};

async function remoteDsr() {
  hub.resetStats();
  const t0 = performance.now();
  const remote = await openRemoteRepo(parseRepoSpec("deepseek-ai/DeepSeek-R1"), { hfEndpoint: hub.hfEndpoint });
  const ck = await openCheckpoint(remoteSource(remote), { concurrency: PARALLEL });
  const report = buildInspectReport(ck, { gpu: gpuProfile("h200"), gpus: 8 });
  const wallMs = ms(t0);
  if (!report.ok || ck.tensors.size !== repo.tensorCount) throw new Error("remote inspect of the R1-shaped repo was not clean");
  const client = remote.stats();
  return {
    wallMs,
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
  hub.resetStats();
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
for (let i = 0; i < REPS; i++) {
  const t0 = performance.now();
  const ck = await openCheckpoint(await openLocalSource(dir));
  buildInspectReport(ck, { gpu: gpuProfile("h200"), gpus: 8 });
  localRuns.push(ms(t0));
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
  machine: { loadavg: loadavg().map((x) => +x.toFixed(2)), node: process.version },
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
    cliMs: median(cliRuns),
    cliMsRuns: cliRuns,
    cliStartupMs: median(startupRuns),
    target: "< 1000 ms",
    met: median(localRuns) < 1000,
  },
};
process.stdout.write(JSON.stringify(result, null, 2) + "\n");
