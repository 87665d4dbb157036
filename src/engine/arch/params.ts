/**
 * Parameter counting over a tensor list (a checkpoint's actual tensors or an ArchDef's expected
 * ones). Quantisation side tensors (scales, zeros, g_idx) are not parameters; packed int32 weights
 * (AWQ/GPTQ qweight, compressed-tensors weight_packed) count their logical elements.
 * Active per token (MoE): everything except routed experts, plus routed × topk / n_routed.
 * MTP layers are counted apart: serving engines load them only for speculative decoding.
 */
import { DTYPE_BITS, numel, type Dtype } from "../tensors/dtypes.js";
import type { ModelConfig } from "./config.js";
import type { ArchDef } from "./types.js";
import { classifyTensor } from "./classify.js";

export interface TensorLike {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
}

export interface ParamCounts {
  /** Every parameter in the checkpoint, MTP included. */
  total: number;
  /** The model that serves tokens (MTP excluded). */
  main: number;
  /** Multi-token-prediction (speculative) layers. */
  mtp: number;
  /** Parameters one token goes through (MoE: routed experts × topk/n_routed). Equals main for dense models. */
  activePerToken: number;
  /** Routed-expert parameters in the main model (0 for dense). */
  routedExperts: number;
  embedding: number;
  lmHead: number;
}

/** Logical parameters one tensor holds; 0 for quantisation side tensors. */
export function tensorParams(arch: ArchDef, t: TensorLike, packBits = 4, role = arch.role(t.name)): number {
  if (role === "quant_aux") return 0;
  const n = numel(t.shape);
  if (/\.(qweight|weight_packed)$/.test(t.name) && DTYPE_BITS[t.dtype] === 32) return n * (32 / packBits);
  return n;
}

export function countParams(arch: ArchDef, cfg: ModelConfig, tensors: Iterable<TensorLike>, packBits = 4): ParamCounts {
  const c: ParamCounts = { total: 0, main: 0, mtp: 0, activePerToken: 0, routedExperts: 0, embedding: 0, lmHead: 0 };
  for (const t of tensors) {
    const k = classifyTensor(arch, cfg, t);
    const p = tensorParams(arch, t, packBits, k.role);
    c.total += p;
    if (k.speculative) {
      c.mtp += p;
      continue;
    }
    c.main += p;
    if (k.role === "embed") c.embedding += p;
    if (k.role === "lm_head") c.lmHead += p;
    if (k.routedExpert) c.routedExperts += p;
  }
  const frac = arch.routedFraction(cfg);
  c.activePerToken = frac === undefined ? c.main : c.main - c.routedExperts + c.routedExperts * frac;
  return c;
}

/** KV-cache bytes one token costs on one GPU: layers on that GPU (PP) × per-layer bytes (TP-aware). */
export function kvBytesPerToken(arch: ArchDef, cfg: ModelConfig, kvBytes: number, tp = 1, pp = 1): number {
  return Math.ceil(arch.attentionLayers(cfg) / pp) * arch.kvBytesPerTokenPerLayer(cfg, kvBytes, tp);
}
