/**
 * DeepSeek-V3 / R1 (and V2, which shares the layout): MLA attention (low-rank q and kv with a
 * decoupled rope key), MoE layers with routed + shared experts and a sigmoid router with
 * e_score_correction_bias (noaux_tc), the first `first_k_dense_replace` layers dense, and
 * `num_nextn_predict_layers` MTP layers numbered num_hidden_layers + k (facts/formats.md §4).
 * FP8 checkpoints store every quantised Linear as F8_E4M3 plus an F32 weight_scale_inv of shape
 * (⌈out/bo⌉, ⌈in/bi⌉); embeddings, head, norms, router and MTP's eh_proj stay BF16.
 */
import type { ModelConfig } from "./config.js";
import { hfRole, hfShardRule, isRoutedExpertName } from "./common.js";
import { configDtype, layerIndex, layerRefOf, type ArchDef, type ExpectedTensor } from "./types.js";

export interface DeepseekFields {
  qLoraRank: number | undefined;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  nRoutedExperts: number;
  nSharedExperts: number;
  expertsPerToken: number;
  moeIntermediateSize: number;
  firstKDense: number;
  moeLayerFreq: number;
  mtpLayers: number;
  /** noaux_tc routers carry e_score_correction_bias. */
  routerBias: boolean;
  /** [rows, cols] of the FP8 weight blocks, when quantization_config says fp8 with blocks. */
  fp8Block: [number, number] | undefined;
}

const numOr = (v: unknown, d: number): number => (typeof v === "number" && Number.isFinite(v) ? v : d);

const fieldsCache = new WeakMap<ModelConfig, DeepseekFields>();

/** Reads DeepSeek fields from the raw config; accepts the older and newer spellings. Cached per config. */
export function deepseekFields(cfg: ModelConfig): DeepseekFields {
  let f = fieldsCache.get(cfg);
  if (!f) fieldsCache.set(cfg, (f = readFields(cfg)));
  return f;
}

function readFields(cfg: ModelConfig): DeepseekFields {
  const r = cfg.raw;
  const q = r.q_lora_rank;
  const qc = cfg.quantizationConfig;
  const block = qc && String(qc.quant_method ?? "").includes("fp8") && Array.isArray(qc.weight_block_size) ? qc.weight_block_size : undefined;
  return {
    qLoraRank: typeof q === "number" && q > 0 ? q : undefined,
    kvLoraRank: numOr(r.kv_lora_rank, 512),
    qkNopeHeadDim: numOr(r.qk_nope_head_dim, 128),
    qkRopeHeadDim: numOr(r.qk_rope_head_dim, 64),
    vHeadDim: numOr(r.v_head_dim, 128),
    nRoutedExperts: numOr(r.n_routed_experts ?? r.num_experts ?? r.num_local_experts, 0),
    nSharedExperts: numOr(r.n_shared_experts, 0),
    expertsPerToken: numOr(r.num_experts_per_tok, 0),
    moeIntermediateSize: numOr(r.moe_intermediate_size, cfg.intermediateSize),
    firstKDense: numOr(r.first_k_dense_replace, 0),
    moeLayerFreq: Math.max(1, numOr(r.moe_layer_freq, 1)),
    mtpLayers: numOr(r.num_nextn_predict_layers ?? r.num_mtp_layers, 0),
    routerBias: r.topk_method === "noaux_tc" || (r.topk_method === undefined && cfg.modelType === "deepseek_v3"),
    fp8Block: block && block.length === 2 ? [Number(block[0]), Number(block[1])] : undefined,
  };
}

/** Layer i is MoE exactly when experts exist, i ≥ first_k_dense_replace and i % moe_layer_freq == 0. */
export function isMoeLayer(f: DeepseekFields, i: number): boolean {
  return f.nRoutedExperts > 0 && i >= f.firstKDense && i % f.moeLayerFreq === 0;
}

function expected(cfg: ModelConfig): ExpectedTensor[] {
  const f = deepseekFields(cfg);
  const dt = configDtype(cfg);
  const h = cfg.hiddenSize;
  const heads = cfg.numHeads;
  const out: ExpectedTensor[] = [];
  const norm = (name: string, n: number) => out.push({ name, shape: [n], dtype: dt, role: "norm" });
  // A quantisable Linear: FP8 + block scale in FP8 checkpoints, else the model dtype.
  const lin = (name: string, o: number, i: number, quantised = true) => {
    if (f.fp8Block && quantised) {
      const [bo, bi] = f.fp8Block;
      out.push({ name: `${name}.weight`, shape: [o, i], dtype: "F8_E4M3", role: "linear" });
      out.push({ name: `${name}.weight_scale_inv`, shape: [Math.ceil(o / bo), Math.ceil(i / bi)], dtype: "F32", role: "quant_aux" });
    } else {
      out.push({ name: `${name}.weight`, shape: [o, i], dtype: dt, role: "linear" });
    }
  };
  const mlp = (p: string, inter: number) => {
    lin(`${p}.gate_proj`, inter, h);
    lin(`${p}.up_proj`, inter, h);
    lin(`${p}.down_proj`, h, inter);
  };
  const layer = (l: number) => {
    const p = `model.layers.${l}`;
    norm(`${p}.input_layernorm.weight`, h);
    const qHead = f.qkNopeHeadDim + f.qkRopeHeadDim;
    if (f.qLoraRank) {
      lin(`${p}.self_attn.q_a_proj`, f.qLoraRank, h);
      norm(`${p}.self_attn.q_a_layernorm.weight`, f.qLoraRank);
      lin(`${p}.self_attn.q_b_proj`, heads * qHead, f.qLoraRank);
    } else {
      lin(`${p}.self_attn.q_proj`, heads * qHead, h);
    }
    lin(`${p}.self_attn.kv_a_proj_with_mqa`, f.kvLoraRank + f.qkRopeHeadDim, h);
    norm(`${p}.self_attn.kv_a_layernorm.weight`, f.kvLoraRank);
    lin(`${p}.self_attn.kv_b_proj`, heads * (f.qkNopeHeadDim + f.vHeadDim), f.kvLoraRank);
    lin(`${p}.self_attn.o_proj`, h, heads * f.vHeadDim);
    norm(`${p}.post_attention_layernorm.weight`, h);
    if (isMoeLayer(f, l)) {
      out.push({ name: `${p}.mlp.gate.weight`, shape: [f.nRoutedExperts, h], dtype: dt, role: "router" });
      if (f.routerBias) out.push({ name: `${p}.mlp.gate.e_score_correction_bias`, shape: [f.nRoutedExperts], dtype: "F32", role: "router_bias" });
      for (let e = 0; e < f.nRoutedExperts; e++) mlp(`${p}.mlp.experts.${e}`, f.moeIntermediateSize);
      if (f.nSharedExperts > 0) mlp(`${p}.mlp.shared_experts`, f.moeIntermediateSize * f.nSharedExperts);
    } else {
      mlp(`${p}.mlp`, cfg.intermediateSize);
    }
  };

  out.push({ name: "model.embed_tokens.weight", shape: [cfg.vocabSize, h], dtype: dt, role: "embed" });
  for (let l = 0; l < cfg.numLayers; l++) layer(l);
  out.push({ name: "model.norm.weight", shape: [h], dtype: dt, role: "norm" });
  if (!cfg.tieWordEmbeddings) out.push({ name: "lm_head.weight", shape: [cfg.vocabSize, h], dtype: dt, role: "lm_head" });
  for (let k = 0; k < f.mtpLayers; k++) {
    const l = cfg.numLayers + k;
    const p = `model.layers.${l}`;
    out.push({ name: `${p}.embed_tokens.weight`, shape: [cfg.vocabSize, h], dtype: dt, role: "embed" });
    norm(`${p}.enorm.weight`, h);
    norm(`${p}.hnorm.weight`, h);
    lin(`${p}.eh_proj`, h, 2 * h, false);
    layer(l);
    norm(`${p}.shared_head.norm.weight`, h);
    out.push({ name: `${p}.shared_head.head.weight`, shape: [cfg.vocabSize, h], dtype: dt, role: "lm_head" });
  }
  return out;
}

const ARCHS = ["DeepseekV3ForCausalLM", "DeepseekV2ForCausalLM"];

export const deepseekV3: ArchDef = {
  id: "deepseek_v3",
  hfArchitectures: ARCHS,
  modelTypes: ["deepseek_v3", "deepseek_v2"],
  expectedTensors: expected,
  role: hfRole,
  shardRule: (name) => hfShardRule(name),
  layerOf: (name, cfg) => layerRefOf(name, cfg, (i) => isMoeLayer(deepseekFields(cfg), i)),
  // MLA caches one compressed latent (kv_lora_rank) plus the shared rope key per token and layer;
  // vLLM keeps the full latent on every TP rank (it is not split across heads).
  kvBytesPerTokenPerLayer: (cfg, kvBytes) => {
    const f = deepseekFields(cfg);
    return (f.kvLoraRank + f.qkRopeHeadDim) * kvBytes;
  },
  attentionLayers: (cfg) => cfg.numLayers,
  isSpeculativeOnly: (name, cfg) => (layerIndex(name) ?? -1) >= cfg.numLayers,
  routedFraction: (cfg) => {
    const f = deepseekFields(cfg);
    return f.nRoutedExperts > 0 ? f.expertsPerToken / f.nRoutedExperts : undefined;
  },
  isRoutedExpert: isRoutedExpertName,
};
