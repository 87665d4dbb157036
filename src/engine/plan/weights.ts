/**
 * Weight bytes on the busiest GPU under TP × PP, from the checkpoint's own tensors (so FP8 blocks,
 * AWQ/GPTQ packing and replicated tensors count exactly), optionally after a hypothetical
 * re-quantisation for "what if" suggestions.
 *
 * TP: column/row/vocab-split tensors cost 1/tp per rank; k/v projections cost ⌈kv_heads/tp⌉/kv_heads
 * (replicated once tp > kv_heads); replicated tensors (norms, router, MLA down-projections) cost
 * their full size on every rank. PP: layers are split evenly over stages (vLLM get_pp_indices), the
 * embedding sits on the first stage, the final norm and head on the last. MTP layers are skipped:
 * vLLM loads them only for speculative decoding.
 */
import type { ModelConfig } from "../arch/config.js";
import type { TensorLike } from "../arch/params.js";
import type { ArchDef, ShardRule } from "../arch/types.js";
import { classifyTensor } from "../arch/classify.js";
import { DTYPE_BITS, numel, tensorByteSize } from "../tensors/dtypes.js";

/** A weight format the planner can price: the checkpoint as it is, or re-quantised linears. */
export type WeightVariant = "as-is" | "fp8" | "int8" | "awq-int4";

/** Bytes of one tensor after a variant; only 16/32-bit Linear weights (not embeddings/head) change. */
export function variantBytes(arch: ArchDef, t: TensorLike, variant: WeightVariant): number {
  return variantBytesOf(t, variant, tensorByteSize(t.dtype, t.shape) ?? 0, arch.role(t.name) === "linear");
}

function variantBytesOf(t: TensorLike, variant: WeightVariant, bytes: number, linear: boolean): number {
  if (variant === "as-is") return bytes;
  // 4-bit re-quantisation of an FP8 checkpoint replaces its block scales too.
  if (variant === "awq-int4" && t.name.endsWith(".weight_scale_inv")) return 0;
  const minBits = variant === "awq-int4" ? 8 : 16;
  if (!linear || t.shape.length !== 2 || DTYPE_BITS[t.dtype] < minBits) return bytes;
  const n = numel(t.shape);
  const out = t.shape[0];
  switch (variant) {
    case "fp8": // W8A8 FP8, per-channel F32 scales
    case "int8": // compressed-tensors W8A8 INT8, per-channel scales
      return n + out * 4;
    case "awq-int4": // 4-bit, group 128: fp16 scales + packed 4-bit zeros per group
      return n / 2 + (n / 128) * 2 + n / 128 / 2;
  }
}

export interface RankWeights {
  /** Bytes on the GPU holding the most (the first or last PP stage). */
  maxBytes: number;
  /** Bytes of every weight once (all ranks together would hold at least this). */
  totalBytes: number;
  /** Bytes skipped because only speculative decoding uses them (MTP). */
  speculativeBytes: number;
}

const VARIANTS: WeightVariant[] = ["as-is", "fp8", "int8", "awq-int4"];
/** Layer slot for tensors outside decoder layers. */
const EMBED = -1;
const HEAD = -2;

/**
 * Per-tensor classification collapsed into sums by (shard rule, layer slot): the planner evaluates
 * dozens of layouts, and R1 has 92k tensors, so names are matched once, not once per layout.
 */
export interface WeightTable {
  buckets: { rule: ShardRule; layer: number; bytes: Float64Array }[];
  speculative: Float64Array;
}

export function weightTable(arch: ArchDef, cfg: ModelConfig, tensors: Iterable<TensorLike>): WeightTable {
  const map = new Map<string, { rule: ShardRule; layer: number; bytes: Float64Array }>();
  const speculative = new Float64Array(VARIANTS.length);
  for (const t of tensors) {
    const size = "end" in t && "begin" in t ? (t as unknown as { end: number; begin: number }).end - (t as unknown as { begin: number }).begin : tensorByteSize(t.dtype, t.shape) ?? 0;
    const k = classifyTensor(arch, cfg, t);
    const linear = k.role === "linear";
    let into: Float64Array;
    if (k.speculative) into = speculative;
    else {
      const layer = k.layer.index ?? (k.role === "embed" ? EMBED : HEAD);
      const key = `${k.rule}|${layer}`;
      into = (map.get(key) ?? map.set(key, { rule: k.rule, layer, bytes: new Float64Array(VARIANTS.length) }).get(key)!).bytes;
    }
    for (let i = 0; i < VARIANTS.length; i++) into[i] += variantBytesOf(t, VARIANTS[i], size, linear);
  }
  return { buckets: [...map.values()], speculative };
}

export function rankWeightsFromTable(table: WeightTable, cfg: ModelConfig, tp: number, pp: number, variant: WeightVariant = "as-is"): RankWeights {
  const v = VARIANTS.indexOf(variant);
  const stages = new Array<number>(pp).fill(0);
  const L = cfg.numLayers;
  let totalBytes = 0;
  for (const { rule, layer, bytes } of table.buckets) {
    const b = bytes[v];
    totalBytes += b;
    const frac = rule === "replicated" ? 1 : rule === "kv_heads" ? Math.ceil(cfg.numKvHeads / tp) / cfg.numKvHeads : 1 / tp;
    const perRank = b * frac;
    if (layer >= 0) stages[Math.min(pp - 1, Math.floor((layer * pp) / L))] += perRank;
    else if (layer === EMBED) {
      stages[0] += perRank;
      if (cfg.tieWordEmbeddings && pp > 1) stages[pp - 1] += perRank; // the tied head needs it too
    } else stages[pp - 1] += perRank; // final norm, lm_head
  }
  return { maxBytes: Math.max(...stages), totalBytes, speculativeBytes: table.speculative[v] };
}

export function rankWeights(arch: ArchDef, cfg: ModelConfig, tensors: Iterable<TensorLike>, tp: number, pp: number, variant: WeightVariant = "as-is"): RankWeights {
  return rankWeightsFromTable(weightTable(arch, cfg, tensors), cfg, tp, pp, variant);
}
