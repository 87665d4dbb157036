/**
 * `dsr inspect` as a real child process (needs `npm run build`): the real fixtures and generated
 * checkpoints give exit 0 and figures computed independently from the files; every corrupt variant
 * exits 3 naming its file and tensor, in text and in --json; the --json schema keeps its keys;
 * bad targets and flags fail clearly.
 */
import { readdirSync } from "node:fs";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readHeaderFromFile } from "../../src/engine/tensors/read.js";
import { numel } from "../../src/engine/tensors/dtypes.js";
import { runDsr as runDsrRaw, TINY_DSV3_FP8, TINY_R1 } from "../support/cli.js";
import { CORRUPTIONS, writeTinyCheckpoint, type TinyKind } from "../support/fixtures.js";
import { startHubServer, type HubServer } from "../support/hub-server.js";
import { tempDir } from "../support/tmp.js";

/** runDsr with string outputs (execa's result types are generic over its options). */
async function runDsr(args: string[], opts: Parameters<typeof runDsrRaw>[1] = {}) {
  const r = await runDsrRaw(args, opts);
  return { exitCode: r.exitCode, stdout: String(r.stdout ?? ""), stderr: String(r.stderr ?? "") };
}

const root = await tempDir("dsr-inspect-cli-");

async function headerFacts(dir: string) {
  let tensors = 0;
  let elements = 0;
  const dtypes = new Map<string, number>();
  for (const f of readdirSync(dir).filter((x) => x.endsWith(".safetensors"))) {
    for (const t of (await readHeaderFromFile(join(dir, f))).tensors) {
      tensors++;
      elements += numel(t.shape);
      dtypes.set(t.dtype, (dtypes.get(t.dtype) ?? 0) + t.end - t.begin);
    }
  }
  return { tensors, elements, dtypes };
}

const json = async (args: string[]) => {
  const r = await runDsr(["--json", "inspect", ...args]);
  return { ...r, report: r.stdout ? JSON.parse(r.stdout) : undefined };
};

describe("good checkpoints", () => {
  it("tiny-r1 (qwen2 bf16): exit 0, figures match the file", async () => {
    const { exitCode, report, stderr } = await json([TINY_R1, "--gpu", "l4-24g"]);
    expect(exitCode, stderr).toBe(0);
    const facts = await headerFacts(TINY_R1);
    expect(report.ok).toBe(true);
    expect(report.model).toMatchObject({ arch: "qwen2", layers: 6, attention: "gqa", kvHeads: 2 });
    expect(report.params.tensors).toBe(facts.tensors);
    expect(report.params.total).toBe(facts.elements);
    expect(report.params.activePerToken).toBe(facts.elements);
    expect(report.dtypes).toEqual([{ dtype: "BF16", tensors: facts.tensors, params: facts.elements, bytes: facts.dtypes.get("BF16") }]);
    expect(report.quantization.method).toBe("none");
    expect(report.tokenizer.chatTemplate).toEqual({ source: "tokenizer_config.json", opensThink: true });
    expect(report.generation).toMatchObject({ temperature: 0.6, top_p: 0.95 });
    expect(report.layers).toEqual([expect.objectContaining({ from: 0, to: 5, count: 6, kind: "dense", tensorsPerLayer: 12 })]);
    expect(report.embeddings.tied).toBe(false);
    expect(report.plan).toMatchObject({ verdict: "fits", gpus: 1, gpu: { id: "l4-24g" }, maxModelLen: 2048 });
    expect(report.findings).toEqual([]);
  });

  it("tiny-deepseek-v3-fp8: FP8 blocks, MoE, MTP counted apart, warnings only", async () => {
    const { exitCode, report } = await json([TINY_DSV3_FP8, "--gpu", "h100-80g"]);
    expect(exitCode).toBe(0);
    const facts = await headerFacts(TINY_DSV3_FP8);
    expect(report.quantization).toMatchObject({ method: "fp8-block", blockSize: [128, 128], source: "config+tensors" });
    expect(report.model.moe).toMatchObject({ routedExperts: 8, sharedExperts: 1, expertsPerToken: 2, denseLayers: 1, mtpLayers: 1 });
    expect(report.layers.map((l: { from: number; to: number; kind: string }) => `${l.from}-${l.to}:${l.kind}`)).toEqual(["0-0:dense", "1-2:moe", "3-3:mtp"]);
    expect(report.params.mtp).toBeGreaterThan(0);
    expect(report.params.activePerToken).toBeLessThan(report.params.main);
    expect(report.shards.count).toBe(3);
    expect(report.shards.tensorBytes).toBe([...facts.dtypes.values()].reduce((a, b) => a + b, 0));
    expect(report.findings.every((f: { severity: string }) => f.severity === "warning")).toBe(true);
  });

  it("text output is aligned tables with the plan and findings", async () => {
    const r = await runDsr(["inspect", TINY_DSV3_FP8, "--gpu", "a10-24g", "--max-model-len", "4096"]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/Shards: 3/);
    expect(r.stdout).toMatch(/^F8_E4M3 +104 /m);
    expect(r.stdout).toMatch(/1–2 \(2×\) +moe/);
    expect(r.stdout).toMatch(/verdict: FITS/);
    expect(r.stdout).toMatch(/Integrity: 0 errors, 1 warning/);
  });

  for (const kind of ["qwen2", "llama"] as TinyKind[]) {
    it(`generated ${kind}: exit 0, tied embeddings reported for llama`, async () => {
      const ck = await writeTinyCheckpoint(join(root, `good-${kind}`), kind);
      const { exitCode, report } = await json([ck.dir]);
      expect(exitCode).toBe(0);
      expect(report.findings).toEqual([]);
      expect(report.embeddings.tied).toBe(kind === "llama");
      expect(report.shards.indexFile).toBe("model.safetensors.index.json");
    });
  }
});

describe("corrupt checkpoints exit 3 and name file and tensor", () => {
  // One kind per corruption keeps this file fast; test/checkpoint covers every kind at engine level.
  for (const c of CORRUPTIONS) {
    const kind = c.kinds.at(-1)!;
    it(`${kind} / ${c.id}`, async () => {
      const ck = await writeTinyCheckpoint(join(root, `bad-${kind}-${c.id}`), kind);
      const where = await c.apply(ck);
      const text = await runDsr(["inspect", ck.dir, "--no-plan"]);
      expect(text.exitCode).toBe(3);
      const line = text.stdout.split("\n").find((l) => l.includes("error") && (!where.tensor || l.includes(where.tensor)) && (!where.file || l.includes(where.file)));
      expect(line, text.stdout).toBeDefined();
      expect(text.stderr).toMatch(/integrity error/);
      const j = await json([ck.dir, "--no-plan"]);
      expect(j.exitCode).toBe(3);
      expect(j.report.ok).toBe(false);
      expect(j.report.findings).toContainEqual(expect.objectContaining({ severity: "error", code: c.code, ...(where.file ? { file: where.file } : {}), ...(where.tensor ? { tensor: where.tensor } : {}) }));
    });
  }
});

describe("--json schema", () => {
  it("has the documented top-level keys and version", async () => {
    const { report } = await json([TINY_R1]);
    expect(Object.keys(report).sort()).toEqual(
      ["schemaVersion", "source", "ok", "model", "shards", "dtypes", "params", "layers", "embeddings", "quantization", "tokenizer", "generation", "findings", "plan", "planSkipped", "reads"].sort(),
    );
    expect(report.schemaVersion).toBe(1);
    expect(Object.keys(report.plan).sort()).toEqual(
      ["gpus", "tp", "pp", "weights", "kvCacheDtype", "perGpu", "kvBytesPerToken", "kvTokens", "maxModelLen", "maxConcurrency", "verdict", "reasons", "gpu", "util", "concurrency", "suggestions", "notes"].sort(),
    );
  });
});

describe("bad targets and flags", () => {
  let hub: HubServer;
  beforeAll(async () => {
    hub = await startHubServer({ repos: [] });
  });
  afterAll(() => hub.close());

  it("an unknown repo is a clear one-line error", async () => {
    const r = await runDsr(["inspect", "nobody/no-such-model"], { env: { HF_ENDPOINT: hub.hfEndpoint, HF_HOME: root } });
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/nobody\/no-such-model/);
    expect(r.stderr).not.toMatch(/at .*\.ts:\d+/); // no stack trace without --verbose
  });

  it("a missing directory and bad plan flags exit 2", async () => {
    expect((await runDsr(["inspect", "./no/such/dir"])).exitCode).toBe(2);
    const g = await runDsr(["inspect", TINY_R1, "--gpu", "gtx-480"]);
    expect(g.exitCode).toBe(2);
    expect(g.stderr).toMatch(/unknown GPU "gtx-480"/);
    expect((await runDsr(["inspect", TINY_R1, "--gpu-memory-utilization", "1.2"])).exitCode).toBe(2);
    expect((await runDsr(["inspect", TINY_R1, "--tp", "3"])).exitCode).toBe(2);
    expect((await runDsr(["inspect", TINY_R1, "--kv-cache-dtype", "int2"])).exitCode).toBe(2);
  });

  it("a directory without safetensors is an integrity error", async () => {
    const dir = join(root, "empty");
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, "config.json"), "{}");
    await writeFile(join(dir, "pytorch_model.bin"), "x");
    const r = await runDsr(["inspect", dir]);
    expect(r.exitCode).toBe(3);
    expect(r.stdout + r.stderr).toMatch(/no \.safetensors files \(found pytorch_model\.bin\)/);
  });
});
