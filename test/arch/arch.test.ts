/**
 * The architecture registry against real checkpoints (the two models in test/fixtures, written by
 * PyTorch) and against DeepSeek-R1's published figures (671B main + 14B MTP, 37B active, FP8 scale
 * shapes from README_WEIGHTS, index total_size ≈ 688.6 GB).
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  archById, countParams, deepseekV3, generic, kvBytesPerToken, llama, parseModelConfig, qwen2, resolveArch,
} from "../../src/engine/arch/index.js";
import { readHeaderFromFile } from "../../src/engine/tensors/read.js";
import { tensorByteSize } from "../../src/engine/tensors/dtypes.js";
import { readFileSync, readdirSync } from "node:fs";
import { TINY_DSV3_FP8, TINY_R1 } from "../support/cli.js";
import { R1_CONFIG, tinyConfig } from "../support/fixtures.js";

async function realTensors(dir: string) {
  const out = new Map<string, { dtype: string; shape: number[] }>();
  for (const f of readdirSync(dir).filter((f) => f.endsWith(".safetensors"))) {
    for (const t of (await readHeaderFromFile(join(dir, f))).tensors) out.set(t.name, { dtype: t.dtype, shape: t.shape });
  }
  return out;
}
const cfgOf = (dir: string) => parseModelConfig(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")));

describe("expectedTensors matches real checkpoints exactly", () => {
  for (const [label, dir, id] of [["tiny-r1 (qwen2, bf16)", TINY_R1, "qwen2"], ["tiny-deepseek-v3-fp8 (MLA, MoE, MTP, FP8 blocks)", TINY_DSV3_FP8, "deepseek_v3"]] as const) {
    it(label, async () => {
      const cfg = cfgOf(dir);
      const arch = resolveArch(cfg);
      expect(arch.id).toBe(id);
      const real = await realTensors(dir);
      const expected = arch.expectedTensors(cfg);
      expect(new Set(expected.map((e) => e.name))).toEqual(new Set(real.keys()));
      for (const e of expected) expect({ name: e.name, dtype: e.dtype, shape: e.shape }).toEqual({ name: e.name, ...real.get(e.name) });
    });
  }
});

describe("DeepSeek-R1 (config from README / transformers defaults)", () => {
  const cfg = parseModelConfig(R1_CONFIG);
  const tensors = deepseekV3.expectedTensors(cfg);
  const byName = new Map(tensors.map((t) => [t.name, t]));

  it("parameter totals match the published 671B + 14B MTP and 37B active", () => {
    const p = countParams(deepseekV3, cfg, tensors);
    expect(p.main / 1e9).toBeGreaterThan(670);
    expect(p.main / 1e9).toBeLessThan(672);
    expect(p.total / 1e9).toBeCloseTo(684.5, 0); // HF upload: 685B
    expect(p.mtp / 1e9).toBeGreaterThan(11.5); // 11.5B unique + its own embedding/head copies
    expect(p.activePerToken / 1e9).toBeGreaterThan(36.5);
    expect(p.activePerToken / 1e9).toBeLessThan(38.5);
  });

  it("tensor bytes agree with the reported index total_size (688,586,727,753) within 0.01%", () => {
    const bytes = tensors.reduce((a, t) => a + tensorByteSize(t.dtype, t.shape)!, 0);
    expect(Math.abs(bytes - 688_586_727_753) / 688_586_727_753).toBeLessThan(1e-4);
  });

  it("FP8 weight_scale_inv shapes are (⌈out/128⌉, ⌈in/128⌉), including the 576-row edge block", () => {
    const scale = (n: string) => byName.get(`model.layers.5.${n}.weight_scale_inv`)?.shape;
    expect(scale("self_attn.q_a_proj")).toEqual([12, 56]);
    expect(scale("self_attn.q_b_proj")).toEqual([192, 12]);
    expect(scale("self_attn.kv_a_proj_with_mqa")).toEqual([5, 56]);
    expect(scale("self_attn.kv_b_proj")).toEqual([256, 4]);
    expect(scale("self_attn.o_proj")).toEqual([56, 128]);
    expect(scale("mlp.experts.17.gate_proj")).toEqual([16, 56]);
    expect(scale("mlp.experts.17.down_proj")).toEqual([56, 16]);
    expect(byName.get("model.layers.0.mlp.gate_proj.weight_scale_inv")?.shape).toEqual([144, 56]);
    expect(byName.get("model.layers.5.mlp.gate.weight")).toMatchObject({ dtype: "BF16", shape: [256, 7168] });
    expect(byName.get("model.layers.5.mlp.gate.e_score_correction_bias")).toMatchObject({ dtype: "F32", shape: [256] });
  });

  it("layers 0–2 dense, 3–60 MoE, 61 is MTP with eh_proj in BF16", () => {
    expect(deepseekV3.layerOf("model.layers.2.mlp.up_proj.weight", cfg)).toEqual({ index: 2, kind: "dense" });
    expect(deepseekV3.layerOf("model.layers.3.mlp.experts.0.up_proj.weight", cfg)).toEqual({ index: 3, kind: "moe" });
    expect(deepseekV3.layerOf("model.layers.61.eh_proj.weight", cfg)).toEqual({ index: 61, kind: "mtp" });
    expect(byName.get("model.layers.61.eh_proj.weight")).toMatchObject({ dtype: "BF16", shape: [7168, 14336] });
    expect(byName.has("model.layers.61.mlp.experts.255.down_proj.weight")).toBe(true);
    expect(byName.has("model.layers.62.input_layernorm.weight")).toBe(false);
    expect(tensors.length).toBe(91991);
  });

  it("moe_layer_freq places MoE layers on multiples only", () => {
    const c2 = parseModelConfig({ ...R1_CONFIG, num_hidden_layers: 6, moe_layer_freq: 2, first_k_dense_replace: 1, num_nextn_predict_layers: 0 });
    const kinds = [0, 1, 2, 3, 4, 5].map((i) => deepseekV3.layerOf(`model.layers.${i}.mlp.x`, c2).kind);
    expect(kinds).toEqual(["dense", "dense", "moe", "dense", "moe", "dense"]);
  });

  it("MLA KV cache: (kv_lora_rank + qk_rope_head_dim) × bytes per layer, not split by TP", () => {
    expect(deepseekV3.kvBytesPerTokenPerLayer(cfg, 2, 1)).toBe((512 + 64) * 2);
    expect(kvBytesPerToken(deepseekV3, cfg, 2, 8)).toBe(61 * 1152);
    expect(kvBytesPerToken(deepseekV3, cfg, 1, 8, 2)).toBe(31 * 576);
  });
});

describe("dense GQA models", () => {
  const q7 = parseModelConfig({ architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", hidden_size: 3584, intermediate_size: 18944, num_hidden_layers: 28, num_attention_heads: 28, num_key_value_heads: 4, vocab_size: 152064, max_position_embeddings: 131072, torch_dtype: "bfloat16" });

  it("R1-Distill-Qwen-7B: 7.6B parameters, 56 KiB of BF16 KV per token", () => {
    const p = countParams(qwen2, q7, qwen2.expectedTensors(q7));
    expect(p.total / 1e9).toBeCloseTo(7.62, 1);
    expect(p.activePerToken).toBe(p.total);
    expect(kvBytesPerToken(qwen2, q7, 2)).toBe(28 * 2 * 4 * 128 * 2);
    // TP beyond the 4 KV heads replicates them: one head per rank.
    expect(qwen2.kvBytesPerTokenPerLayer(q7, 2, 8)).toBe(2 * 1 * 128 * 2);
    expect(qwen2.kvBytesPerTokenPerLayer(q7, 2, 2)).toBe(2 * 2 * 128 * 2);
  });

  it("qwen2 has q/k/v biases; llama only with attention_bias; tied embeddings drop lm_head", () => {
    const qn = qwen2.expectedTensors(q7).map((t) => t.name);
    expect(qn).toContain("model.layers.0.self_attn.k_proj.bias");
    expect(qn).not.toContain("model.layers.0.self_attn.o_proj.bias");
    const l = parseModelConfig(tinyConfig("llama"));
    const ln = llama.expectedTensors(l).map((t) => t.name);
    expect(ln).not.toContain("model.layers.0.self_attn.k_proj.bias");
    expect(ln).not.toContain("lm_head.weight");
    const lb = parseModelConfig({ ...tinyConfig("llama"), attention_bias: true });
    expect(llama.expectedTensors(lb).map((t) => t.name)).toContain("model.layers.0.self_attn.k_proj.bias");
  });

  it("TP sharding rules follow vLLM's layer types", () => {
    const rule = (n: string) => qwen2.shardRule(n, q7);
    expect(rule("model.layers.0.self_attn.q_proj.weight")).toBe("column");
    expect(rule("model.layers.0.self_attn.q_proj.bias")).toBe("column");
    expect(rule("model.layers.0.self_attn.k_proj.weight")).toBe("kv_heads");
    expect(rule("model.layers.0.self_attn.o_proj.weight")).toBe("row");
    expect(rule("model.layers.0.mlp.down_proj.bias")).toBe("replicated");
    expect(rule("model.layers.0.mlp.down_proj.qweight")).toBe("row");
    expect(rule("model.layers.0.input_layernorm.weight")).toBe("replicated");
    expect(rule("model.embed_tokens.weight")).toBe("vocab");
    expect(rule("lm_head.weight")).toBe("vocab");
    const r1 = parseModelConfig(R1_CONFIG);
    expect(deepseekV3.shardRule("model.layers.3.self_attn.kv_a_proj_with_mqa.weight", r1)).toBe("replicated");
    expect(deepseekV3.shardRule("model.layers.3.self_attn.q_b_proj.weight_scale_inv", r1)).toBe("column");
    expect(deepseekV3.shardRule("model.layers.3.mlp.gate.weight", r1)).toBe("replicated");
    expect(deepseekV3.shardRule("model.layers.3.mlp.experts.9.down_proj.weight", r1)).toBe("row");
  });
});

describe("registry and config spellings", () => {
  it("resolves by architecture, then model_type, else generic", () => {
    expect(resolveArch(parseModelConfig({ ...tinyConfig("qwen2") })).id).toBe("qwen2");
    expect(resolveArch(parseModelConfig({ ...tinyConfig("qwen2"), architectures: [] })).id).toBe("qwen2");
    expect(resolveArch(parseModelConfig({ ...tinyConfig("qwen2"), architectures: ["MysteryForCausalLM"], model_type: "mystery" }))).toBe(generic);
    expect(resolveArch(undefined)).toBe(generic);
    expect(archById("deepseek_v3")).toBe(deepseekV3);
  });

  it("old and new spellings give the same tensors (torch_dtype/dtype, rope_theta/rope_parameters)", () => {
    const old = parseModelConfig({ ...tinyConfig("qwen2"), torch_dtype: "float16", rope_theta: 1e6 });
    const { torch_dtype: _t, rope_theta: _r, ...rest } = { ...tinyConfig("qwen2"), torch_dtype: "x", rope_theta: 0 };
    const neu = parseModelConfig({ ...rest, dtype: "float16", rope_parameters: { rope_theta: 1e6, rope_type: "default" } });
    expect(neu.ropeTheta).toBe(old.ropeTheta);
    expect(qwen2.expectedTensors(neu)).toEqual(qwen2.expectedTensors(old));
    expect(qwen2.expectedTensors(neu)[0].dtype).toBe("F16");
  });

  it("generic fallback: MoE fraction from Mixtral-style fields", () => {
    const c = parseModelConfig({ architectures: ["MixtralForCausalLM"], model_type: "mixtral", hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 100, num_local_experts: 8, num_experts_per_tok: 2 });
    expect(generic.routedFraction(c)).toBe(0.25);
    expect(generic.isRoutedExpert("model.layers.0.block_sparse_moe.experts.3.w1.weight")).toBe(true);
    const p = countParams(generic, c, [
      { name: "model.layers.0.block_sparse_moe.experts.3.w1.weight", dtype: "BF16", shape: [10, 10] },
      { name: "model.embed_tokens.weight", dtype: "BF16", shape: [100, 64] },
    ]);
    expect(p.activePerToken).toBe(6400 + 25);
  });
});
