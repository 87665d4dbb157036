/**
 * The memory planner's verdicts on the sanity cases (R1 FP8 on 8×H200 / 8×H100 / 8×A100,
 * R1-Distill-Qwen-7B on one A10) and the invariants of its formula.
 */
import { describe, expect, it } from "vitest";
import { parseModelConfig, qwen2, deepseekV3, kvBytesPerToken } from "../../src/engine/arch/index.js";
import { gpuProfile, planMemory, rankWeights, GPU_PROFILES } from "../../src/engine/plan/index.js";
import { DsrError } from "../../src/engine/errors.js";
import { R1_CONFIG } from "../support/fixtures.js";

const GiB = 2 ** 30;
const r1cfg = parseModelConfig(R1_CONFIG);
const R1 = { arch: deepseekV3, cfg: r1cfg, tensors: deepseekV3.expectedTensors(r1cfg), quantMethod: "fp8-block" };
const q7cfg = parseModelConfig({ architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28, num_attention_heads: 28, num_key_value_heads: 4, vocab_size: 152064, max_position_embeddings: 131072, torch_dtype: "bfloat16" });
const Q7 = { arch: qwen2, cfg: q7cfg, tensors: qwen2.expectedTensors(q7cfg), quantMethod: "none" };

describe("DeepSeek-R1 FP8 (~642 GiB of weights)", () => {
  it("fits 8×H200 with a useful KV cache at the full 163,840-token context", () => {
    const p = planMemory(R1, { gpu: gpuProfile("h200"), gpus: 8 });
    expect(p.verdict).toBe("fits");
    expect(p.tp).toBe(8);
    expect(p.perGpu.weightsBytes / GiB).toBeGreaterThan(78);
    expect(p.perGpu.weightsBytes / GiB).toBeLessThan(82);
    expect(p.kvTokens).toBeGreaterThan(163840);
    expect(p.notes.join(" ")).toMatch(/MTP/);
  });

  it("does not fit 8×H100-80G; suggests 16 GPUs (TP 8 × PP 2) or 4-bit", () => {
    const p = planMemory(R1, { gpu: gpuProfile("h100-80g"), gpus: 8 });
    expect(p.verdict).toBe("does-not-fit");
    expect(p.reasons[0]).toMatch(/exceed/);
    expect(p.suggestions[0]).toMatchObject({ gpus: 16, tp: 8, pp: 2, weights: "as-is", verdict: "fits" });
    expect(p.suggestions.some((s) => s.weights === "awq-int4" && s.gpus <= 8)).toBe(true);
  });

  it("does not fit 8×A100-80G, and says FP8 runs weight-only there", () => {
    const p = planMemory(R1, { gpu: gpuProfile("a100-80g"), gpus: 8 });
    expect(p.verdict).toBe("does-not-fit");
    expect(p.notes.join(" ")).toMatch(/weight-only/);
  });
});

describe("R1-Distill-Qwen-7B BF16 on one A10-24G", () => {
  it("fits only with a reduced max-model-len, and names one that works", () => {
    const p = planMemory(Q7, { gpu: gpuProfile("a10-24g") });
    expect(p.verdict).toBe("fits-reduced");
    const m = /--max-model-len (\d+)/.exec(p.reasons[0]);
    expect(m).not.toBeNull();
    const again = planMemory(Q7, { gpu: gpuProfile("a10-24g"), maxModelLen: Number(m![1]) });
    expect(again.verdict).toBe("fits");
    expect(planMemory(Q7, { gpu: gpuProfile("a10-24g"), maxModelLen: 32768 }).verdict).toBe("fits");
    // Quantising or an FP8 KV cache makes the full context fit on the one GPU.
    expect(p.suggestions.some((s) => s.gpus === 1 && s.weights === "awq-int4")).toBe(true);
  });

  it("concurrency beyond the KV cache is reported", () => {
    const p = planMemory(Q7, { gpu: gpuProfile("a10-24g"), maxModelLen: 32768, concurrency: 8 });
    expect(p.verdict).toBe("fits-reduced");
    expect(p.maxConcurrency).toBeLessThan(8);
    expect(p.suggestions.length).toBeGreaterThan(0);
  });

  it("does not fit a T4 in 16-bit", () => {
    expect(planMemory(Q7, { gpu: gpuProfile("t4-16g") }).verdict).toBe("does-not-fit");
  });
});

describe("formula invariants", () => {
  for (const gpu of GPU_PROFILES) {
    it(`${gpu.id}: budget = weights + activations + graphs + other + KV, KV tokens within the KV bytes`, () => {
      const p = planMemory(Q7, { gpu, gpus: 4, maxModelLen: 8192, util: 0.85 });
      const g = p.perGpu;
      if (g.kvCacheBytes > 0) expect(g.weightsBytes + g.activationBytes + g.cudaGraphBytes + g.nonTorchBytes + g.kvCacheBytes).toBeCloseTo(g.budgetBytes, 0);
      expect(g.budgetBytes).toBeCloseTo(gpu.memoryGiB * GiB * 0.85, 0);
      expect(p.kvTokens * p.kvBytesPerToken).toBeLessThanOrEqual(g.kvCacheBytes);
      expect(p.kvBytesPerToken).toBe(kvBytesPerToken(qwen2, q7cfg, 2, 4));
    });
  }

  it("more utilization never means less KV; FP8 KV doubles the tokens", () => {
    const a = planMemory(Q7, { gpu: gpuProfile("h100-80g"), util: 0.8 });
    const b = planMemory(Q7, { gpu: gpuProfile("h100-80g"), util: 0.95 });
    expect(b.kvTokens).toBeGreaterThan(a.kvTokens);
    const f = planMemory(Q7, { gpu: gpuProfile("h100-80g"), util: 0.8, kvCacheDtype: "fp8" });
    expect(f.kvBytesPerToken * 2).toBe(a.kvBytesPerToken);
    expect(f.kvTokens / a.kvTokens).toBeGreaterThan(1.95);
  });

  it("TP splits sharded tensors, keeps replicated ones whole; PP puts embed first and head last", () => {
    const w1 = rankWeights(qwen2, q7cfg, Q7.tensors, 1, 1).maxBytes;
    const w2 = rankWeights(qwen2, q7cfg, Q7.tensors, 2, 1).maxBytes;
    expect(w2).toBeGreaterThan(w1 / 2);
    expect(w2).toBeLessThan(w1 / 2 + 0.01 * w1);
    const p2 = rankWeights(qwen2, q7cfg, Q7.tensors, 1, 2).maxBytes;
    const embed = 152064 * 3584 * 2;
    expect(p2).toBeGreaterThan((w1 - 2 * embed) / 2 + embed - 1);
  });

  it("rejects impossible flags as usage errors", () => {
    const bad = (o: object) => () => planMemory(Q7, { gpu: gpuProfile("h100-80g"), ...o });
    expect(bad({ util: 1.5 })).toThrow(DsrError);
    expect(bad({ tp: 3 })).toThrow(/does not divide/);
    expect(bad({ gpus: 4, tp: 2, pp: 1 })).toThrow(/does not equal/);
    expect(bad({ kvCacheDtype: "int3" })).toThrow(/kv-cache-dtype/);
    expect(() => gpuProfile("gtx-480")).toThrow(/unknown GPU/);
    expect(gpuProfile("H100").id).toBe("h100-80g");
  });
});
