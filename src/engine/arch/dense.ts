/**
 * Dense GQA decoders in the HF layout: llama and qwen2 (R1-Distill-Qwen). Qwen2 has q/k/v biases;
 * llama has them only with attention_bias, and MLP biases only with mlp_bias.
 */
import type { ModelConfig } from "./config.js";
import { hfRole, hfShardRule } from "./common.js";
import { configDtype, layerIndex, type ArchDef, type ExpectedTensor } from "./types.js";

function denseExpected(cfg: ModelConfig, qkvBias: boolean, mlpBias: boolean): ExpectedTensor[] {
  const dt = configDtype(cfg);
  const h = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const inter = cfg.intermediateSize;
  const out: ExpectedTensor[] = [{ name: "model.embed_tokens.weight", shape: [cfg.vocabSize, h], dtype: dt, role: "embed" }];
  const lin = (name: string, o: number, i: number, bias: boolean) => {
    out.push({ name: `${name}.weight`, shape: [o, i], dtype: dt, role: "linear" });
    if (bias) out.push({ name: `${name}.bias`, shape: [o], dtype: dt, role: "bias" });
  };
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [h], dtype: dt, role: "norm" });
    lin(`${p}.self_attn.q_proj`, qDim, h, qkvBias);
    lin(`${p}.self_attn.k_proj`, kvDim, h, qkvBias);
    lin(`${p}.self_attn.v_proj`, kvDim, h, qkvBias);
    lin(`${p}.self_attn.o_proj`, h, qDim, false);
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [h], dtype: dt, role: "norm" });
    lin(`${p}.mlp.gate_proj`, inter, h, mlpBias);
    lin(`${p}.mlp.up_proj`, inter, h, mlpBias);
    lin(`${p}.mlp.down_proj`, h, inter, mlpBias);
  }
  out.push({ name: "model.norm.weight", shape: [h], dtype: dt, role: "norm" });
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, h], dtype: dt, role: "lm_head" });
  return out;
}

/** GQA: K and V, each kv_heads × head_dim per token per layer; heads split over TP, at least 1 per rank. */
export function gqaKvBytes(cfg: ModelConfig, kvBytes: number, tp: number): number {
  const headsPerRank = Math.max(1, Math.ceil(cfg.numKvHeads / tp));
  return 2 * headsPerRank * cfg.headDim * kvBytes;
}

function denseDef(id: string, hfArchitectures: string[], modelTypes: string[], biases: (cfg: ModelConfig) => [boolean, boolean]): ArchDef {
  return {
    id,
    hfArchitectures,
    modelTypes,
    expectedTensors: (cfg) => denseExpected(cfg, ...biases(cfg)),
    role: hfRole,
    shardRule: (name) => hfShardRule(name),
    layerOf: (name) => {
      const index = layerIndex(name);
      return index === undefined ? { kind: "other" } : { index, kind: "dense" };
    },
    kvBytesPerTokenPerLayer: gqaKvBytes,
    attentionLayers: (cfg) => cfg.numLayers,
    isSpeculativeOnly: () => false,
    routedFraction: () => undefined,
    isRoutedExpert: () => false,
  };
}

export const qwen2: ArchDef = denseDef("qwen2", ["Qwen2ForCausalLM"], ["qwen2"], () => [true, false]);

export const llama: ArchDef = denseDef(
  "llama",
  ["LlamaForCausalLM", "MistralForCausalLM"],
  ["llama", "mistral"],
  (cfg) => [cfg.raw.attention_bias === true, cfg.raw.mlp_bias === true],
);
