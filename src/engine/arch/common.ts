/** Naming and TP rules shared by the HF-style decoder architectures (llama, qwen2, deepseek_v3). */
import { isQuantAux, layerIndex, moduleOf, type ShardRule, type TensorRole } from "./types.js";

const COLUMN = /\.(q_proj|gate_proj|up_proj|q_b_proj|kv_b_proj|qkv_proj|gate_up_proj)$/;
const ROW = /\.(o_proj|down_proj)$/;
const KV = /\.(k_proj|v_proj)$/;
// vLLM builds these as ReplicatedLinear (MLA down-projections, the MoE router, MTP's eh_proj).
const REPLICATED_LINEAR = /\.(q_a_proj|kv_a_proj_with_mqa|gate|eh_proj)$/;

export function hfRole(name: string): TensorRole {
  if (isQuantAux(name)) return "quant_aux";
  if (/(^|\.)embed_tokens\.weight$/.test(name)) return "embed";
  if (/^lm_head\.|\.shared_head\.head\./.test(name)) return "lm_head";
  if (/\.e_score_correction_bias$/.test(name)) return "router_bias";
  if (/\.mlp\.gate\.weight$/.test(name)) return "router";
  if (/(norm|layernorm)\.weight$/.test(name)) return "norm";
  if (/\.bias$/.test(name)) return "bias";
  if (/\.(weight|qweight|weight_packed)$/.test(name)) return "linear";
  return "other";
}

export function hfShardRule(name: string): ShardRule {
  const role = hfRole(name);
  if (role === "embed" || role === "lm_head") return "vocab";
  if (role === "norm" || role === "router" || role === "router_bias") return "replicated";
  const mod = moduleOf(name);
  if (REPLICATED_LINEAR.test(mod)) return "replicated";
  if (COLUMN.test(mod)) return "column";
  if (KV.test(mod)) return "kv_heads";
  // A row-parallel layer's bias is added after the all-reduce, so every rank keeps all of it.
  if (ROW.test(mod)) return role === "bias" ? "replicated" : "row";
  return "replicated";
}

export function isRoutedExpertName(name: string): boolean {
  return /\.mlp\.experts\.\d+\./.test(name);
}

export { layerIndex };
