/**
 * Remote inspect against the loopback hub (HF and ModelScope protocols): the 163-shard R1-shaped
 * repo is inspected from headers only — ≤ 1.1 range requests per shard, ≤ 1.3 × the header bytes,
 * and no tensor data beyond the speculative margin — and a generated checkpoint gives the same
 * report remotely (CLI, HF_ENDPOINT) as locally, corrupt variants included.
 */
import { join } from "node:path";
import { mkdir, writeFile } from "node:fs/promises";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openCheckpoint, remoteSource, buildInspectReport } from "../../src/engine/checkpoint/index.js";
import { openRemoteRepo, parseRepoSpec } from "../../src/engine/hub/index.js";
import { runDsr as runDsrRaw } from "../support/cli.js";
import { CORRUPTIONS, r1ShapedRepo, writeTinyCheckpoint } from "../support/fixtures.js";
import { servedRepoFromDir, startHubServer, type HubServer } from "../support/hub-server.js";
import { tempDir } from "../support/tmp.js";

/** runDsr with string outputs (execa's result types are generic over its options). */
async function runDsr(args: string[], opts: Parameters<typeof runDsrRaw>[1] = {}) {
  const r = await runDsrRaw(args, opts);
  return { exitCode: r.exitCode, stdout: String(r.stdout ?? ""), stderr: String(r.stderr ?? "") };
}

const root = await tempDir("dsr-inspect-remote-");
const repo = r1ShapedRepo();
let hub: HubServer;

beforeAll(async () => {
  const good = await writeTinyCheckpoint(join(root, "good"), "deepseek-v3-fp8");
  // Repos keep other formats in subfolders; loaders (and inspect) look at the top level only.
  await mkdir(join(good.dir, "onnx"), { recursive: true });
  await writeFile(join(good.dir, "onnx", "model.safetensors"), "not a checkpoint shard");
  const bad = await writeTinyCheckpoint(join(root, "bad"), "qwen2");
  await CORRUPTIONS.find((c) => c.id === "truncated-shard")!.apply(bad);
  hub = await startHubServer({
    repos: [
      { id: "deepseek-ai/DeepSeek-R1", files: repo.files, sha256: (p) => "0".repeat(48) + p.length.toString(16).padStart(16, "0") },
      await servedRepoFromDir("org/tiny-dsv3", good.dir),
      await servedRepoFromDir("org/tiny-bad", bad.dir),
    ],
  });
});
afterAll(() => hub?.close());

describe("R1-shaped repo, headers only", () => {
  for (const spec of ["hf:deepseek-ai/DeepSeek-R1", "ms:deepseek-ai/DeepSeek-R1"]) {
    it(`${spec}: every tensor, no findings, ≤ 1.1 requests per shard, ≤ 1.3 × header bytes`, async () => {
      hub.resetStats();
      repo.dataReads.bytes = 0;
      const remote = await openRemoteRepo(parseRepoSpec(spec), { hfEndpoint: hub.hfEndpoint, msEndpoint: hub.msEndpoint });
      const ck = await openCheckpoint(remoteSource(remote), { concurrency: 16 });
      expect(ck.findings).toEqual([]);
      expect(ck.shards).toHaveLength(163);
      expect(ck.tensors.size).toBe(repo.tensorCount);
      expect(ck.reads.headerBytes).toBe(repo.headerBytes);
      // The client's view and the server's agree.
      const shardBytes = repo.shards.reduce((a, s) => a + (hub.stats.byPath.get(s.file) ?? 0), 0);
      expect(shardBytes).toBe(ck.reads.headerBytesRead);
      expect(ck.reads.headerReads / 163).toBeLessThanOrEqual(1.1);
      expect(hub.stats.rangeRequests - 4).toBe(ck.reads.headerReads); // config, generation_config, tokenizer_config, index
      expect(shardBytes / repo.headerBytes).toBeLessThanOrEqual(1.3);
      expect(repo.dataReads.bytes).toBeLessThanOrEqual(0.3 * repo.headerBytes);
      const report = buildInspectReport(ck, undefined);
      expect(report.params!.main / 1e9).toBeCloseTo(671, 0);
      expect(report.shards.tensorBytes).toBe(repo.tensorBytes);
    });
  }
});

describe("dsr inspect <repo> over HTTP", () => {
  const env = () => ({ HF_ENDPOINT: hub.hfEndpoint, DSR_MODELSCOPE_ENDPOINT: hub.msEndpoint, HF_HOME: root });

  it("gives the same report as the local directory", async () => {
    const local = JSON.parse((await runDsr(["--json", "inspect", join(root, "good"), "--gpu", "l4-24g"])).stdout);
    const r = await runDsr(["--json", "inspect", "org/tiny-dsv3", "--gpu", "l4-24g"], { env: env() });
    expect(r.exitCode, r.stderr).toBe(0);
    const remote = JSON.parse(r.stdout);
    expect(remote.source).toMatchObject({ kind: "remote", location: "hf:org/tiny-dsv3", revision: "main" });
    expect(remote.source.commit).toMatch(/^[0-9a-f]{40}$/);
    for (const k of ["model", "dtypes", "params", "layers", "embeddings", "quantization", "tokenizer", "generation", "findings", "plan"]) expect(remote[k]).toEqual(local[k]);
    expect(remote.findings.map((f: { code: string }) => f.code)).not.toContain("DSR_SHARD_UNREFERENCED");
    expect(remote.reads.requests).toBeGreaterThan(0);
    expect(remote.reads.bytes).toBeLessThan(local.shards.totalBytes);
  });

  it("ModelScope spelling works too", async () => {
    const r = await runDsr(["--json", "inspect", "ms:org/tiny-dsv3", "--no-plan"], { env: env() });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).source.location).toBe("ms:org/tiny-dsv3");
  });

  it("a truncated remote shard exits 3 naming file and tensor", async () => {
    const r = await runDsr(["inspect", "hf:org/tiny-bad", "--no-plan"], { env: env() });
    expect(r.exitCode).toBe(3);
    expect(r.stdout).toMatch(/model-00001-of-00002\.safetensors: data buffer is \d+ bytes .*truncated.*first tensor cut short: "model\./);
  });
});
