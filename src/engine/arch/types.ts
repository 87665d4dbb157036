/**
 * What an architecture definition knows: the tensors a config implies (names, shapes, dtypes),
 * how each tensor is split under tensor parallelism, which layer a tensor belongs to, and the
 * KV-cache bytes one token costs per layer. Used by inspect (integrity, per-layer summary), the
 * memory planner, and fixture generators (R1-shaped checkpoints without materialised data).
 */
import type { Dtype } from "../tensors/dtypes.js";
import type { ModelConfig } from "./config.js";

export type TensorRole =
  | "embed"
  | "lm_head"
  | "norm"
  | "linear"
  | "bias"
  /** Quantisation side tensors: weight_scale_inv, scales, qzeros, g_idx, weight_zero_point… */
  | "quant_aux"
  | "router"
  | "router_bias"
  | "other";

/**
 * How vLLM splits a tensor over TP ranks. column/row: a 1/tp slice along output/input;
 * vocab: the embedding/head split along the vocabulary; kv_heads: k/v projections whose heads are
 * split but replicated once tp exceeds the KV head count; replicated: every rank holds it all.
 */
export type ShardRule = "column" | "row" | "vocab" | "kv_heads" | "replicated";

export interface ExpectedTensor {
  name: string;
  shape: number[];
  dtype: Dtype;
  role: TensorRole;
}

export interface LayerRef {
  /** Decoder layer index, undefined for embeddings/head/final norm. */
  index?: number;
  /** dense | moe | mtp (DeepSeek's multi-token-prediction layer) | other. */
  kind: "dense" | "moe" | "mtp" | "other";
}

export interface ArchDef {
  /** Registry id: qwen2 | llama | deepseek_v3 | generic. */
  id: string;
  /** HF `architectures` names this definition handles. */
  hfArchitectures: string[];
  /** HF `model_type` values this definition handles. */
  modelTypes: string[];
  /** Every tensor the config implies, in a stable order. Cheap: no data, only names and shapes. */
  expectedTensors(cfg: ModelConfig): ExpectedTensor[];
  /** Role of an actual tensor by its name (works for quantised spellings too). */
  role(name: string): TensorRole;
  shardRule(name: string, cfg: ModelConfig): ShardRule;
  layerOf(name: string, cfg: ModelConfig): LayerRef;
  /** KV-cache bytes one token costs in one layer on one GPU, at `kvBytes` bytes per element. */
  kvBytesPerTokenPerLayer(cfg: ModelConfig, kvBytes: number, tp: number): number;
  /** Layers that hold a KV cache when serving (excludes DeepSeek's MTP layer). */
  attentionLayers(cfg: ModelConfig): number;
  /** Names of tensors that serving engines skip unless speculative decoding is on (MTP). */
  isSpeculativeOnly(name: string, cfg: ModelConfig): boolean;
  /** MoE: fraction of a routed expert tensor used per token (topk / n_routed), else undefined. */
  routedFraction(cfg: ModelConfig): number | undefined;
  isRoutedExpert(name: string): boolean;
}

/** Splits "model.layers.12.mlp.experts.3.up_proj.weight" → 12; undefined outside layers. */
export function layerIndex(name: string): number | undefined {
  const m = /(?:^|\.)layers\.(\d+)\./.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Layer of a tensor: none, an MTP layer (index ≥ num_hidden_layers), or MoE/dense as `isMoe` says. */
export function layerRefOf(name: string, cfg: ModelConfig, isMoe: (index: number) => boolean): LayerRef {
  const index = layerIndex(name);
  if (index === undefined) return { kind: "other" };
  if (index >= cfg.numLayers) return { index, kind: "mtp" };
  return { index, kind: isMoe(index) ? "moe" : "dense" };
}

/** torch dtype strings in config.json → safetensors dtype. */
export function configDtype(cfg: ModelConfig): Dtype {
  switch ((cfg.dtype ?? "bfloat16").replace(/^torch\./, "")) {
    case "float16":
    case "half":
      return "F16";
    case "float32":
    case "float":
      return "F32";
    default:
      return "BF16";
  }
}

/** Suffixes of quantisation side tensors across FP8-block, AWQ, GPTQ and compressed-tensors. */
const AUX_SUFFIX = /\.(weight_scale_inv|weight_scale|weight_zero_point|weight_g_idx|weight_shape|input_scale|input_zero_point|scales|qzeros|g_idx|k_scale|v_scale)$/;
export function isQuantAux(name: string): boolean {
  return AUX_SUFFIX.test(name);
}

/** The module a tensor belongs to: "model.layers.0.self_attn.q_proj" for any of its weight/qweight/scales. */
export function moduleOf(name: string): string {
  const i = name.lastIndexOf(".");
  return i < 0 ? name : name.slice(0, i);
}
