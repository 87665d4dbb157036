/**
 * Grouped-query attention over a KV cache that the graph only reads, built from plain MatMuls.
 *
 * Why not GroupQueryAttention: GQA either appends into a `present` bound to the past buffer — and
 * onnxruntime-node copies every fetched output into fresh memory after each run, so that costs a copy
 * of the whole cache per step — or, unbound, copies the whole past into an arena `present` itself
 * (measured on a 16-core Xeon, Qwen2.5-1.5B shapes, 8 rows × 192 positions: GQA 24 of 71 ms per
 * step, 92 ms at 1024 positions). Here the past is read in place: scores against the cached keys and
 * against this step's keys are computed separately, softmaxed together, and applied to the cached and
 * the new values; the caller appends the new keys/values to its cache from the graph's small
 * `new.N.*` outputs.
 *
 * Shapes (B rows, S new tokens, P cached positions per row = the buffer's stride, H query heads,
 * Hkv key/value heads, G = H/Hkv, D head size):
 *   q [B,S,H·D], k/v [B,S,Hkv·D] (rotated already), past K/V [B,Hkv,P,D]
 *   attention_mask_past [B,1,1,P]: 0 where the row has a cached token, −1e30 elsewhere
 *   attention_mask_new  [G·S,S]: causal per group (row g·S+s, column t: 0 when t ≤ s, −1e30 above)
 */
import { node, type EmitContext } from "./layers.js";
import { attr, DataType } from "./model.js";
import { bytesOf } from "./data-file.js";

export const MASK_OFF = -1e30;

const int64 = (xs: number[]) => bytesOf(BigInt64Array.from(xs.map(BigInt)));

/** Constants and the P-dependent slice bounds shared by every layer. Call once per graph. */
export function attentionCommon(ctx: EmitContext, heads: number, kvHeads: number, headDim: number, firstPastKey: string): void {
  const G = heads / kvHeads;
  const c = (name: string, xs: number[]) => ctx.initializers.push({ name, dataType: DataType.INT64, dims: [xs.length], raw: int64(xs) });
  c("attn/q_shape5", [0, 0, kvHeads, G, headDim]);
  c("attn/kv_shape4", [0, 0, kvHeads, headDim]);
  c("attn/grouped_shape4", [0, 0, -1, headDim]);
  c("attn/out_shape5", [0, 0, G, -1, headDim]);
  c("attn/out_shape3", [0, 0, -1]);
  c("attn/zero", [0]);
  c("attn/axis3", [3]);
  c("attn/int64_max", [Number.MAX_SAFE_INTEGER]);
  // P, the cached positions per row (dim 2 of every past tensor), bounds the two halves of the softmax.
  node(ctx, "Shape", "attn/past_len", [firstPastKey], ["attn/P"], { start: attr.int(2), end: attr.int(3) });
}

/** Emits one layer's attention; returns the output name, [B,S,H·D]. */
export function attention(ctx: EmitContext, p: string, io: { q: string; k: string; v: string; pastK: string; pastV: string }, headDim: number): string {
  const scale = attr.float(1 / Math.sqrt(headDim));
  // Queries grouped by KV head: [B,S,Hkv,G,D] → [B,Hkv,G,S,D] → [B,Hkv,G·S,D].
  node(ctx, "Reshape", `${p}/q5`, [io.q, "attn/q_shape5"], [`${p}/q5`]);
  node(ctx, "Transpose", `${p}/q5t`, [`${p}/q5`], [`${p}/q5t`], { perm: attr.ints([0, 2, 3, 1, 4]) });
  node(ctx, "Reshape", `${p}/qg`, [`${p}/q5t`, "attn/grouped_shape4"], [`${p}/qg`]);
  for (const [x, name] of [[io.k, "kn"], [io.v, "vn"]] as const) {
    node(ctx, "Reshape", `${p}/${name}4`, [x, "attn/kv_shape4"], [`${p}/${name}4`]);
    node(ctx, "Transpose", `${p}/${name}`, [`${p}/${name}4`], [`${p}/${name}`], { perm: attr.ints([0, 2, 1, 3]) });
  }
  // Scores against the cache [B,Hkv,G·S,P] and against the new keys [B,Hkv,G·S,S], masked.
  node(ctx, "FusedMatMul", `${p}/s_past`, [`${p}/qg`, io.pastK], [`${p}/s_past`], { alpha: scale, transB: attr.int(1) }, "com.microsoft");
  node(ctx, "Add", `${p}/s_past_masked`, [`${p}/s_past`, "attention_mask_past"], [`${p}/s_past_m`]);
  node(ctx, "FusedMatMul", `${p}/s_new`, [`${p}/qg`, `${p}/kn`], [`${p}/s_new`], { alpha: scale, transB: attr.int(1) }, "com.microsoft");
  node(ctx, "Add", `${p}/s_new_masked`, [`${p}/s_new`, "attention_mask_new"], [`${p}/s_new_m`]);
  node(ctx, "Concat", `${p}/scores`, [`${p}/s_past_m`, `${p}/s_new_m`], [`${p}/scores`], { axis: attr.int(3) });
  node(ctx, "Softmax", `${p}/probs`, [`${p}/scores`], [`${p}/probs`], { axis: attr.int(-1) });
  node(ctx, "Slice", `${p}/w_past`, [`${p}/probs`, "attn/zero", "attn/P", "attn/axis3"], [`${p}/w_past`]);
  node(ctx, "Slice", `${p}/w_new`, [`${p}/probs`, "attn/P", "attn/int64_max", "attn/axis3"], [`${p}/w_new`]);
  node(ctx, "MatMul", `${p}/o_past`, [`${p}/w_past`, io.pastV], [`${p}/o_past`]);
  node(ctx, "MatMul", `${p}/o_new`, [`${p}/w_new`, `${p}/vn`], [`${p}/o_new`]);
  node(ctx, "Add", `${p}/o`, [`${p}/o_past`, `${p}/o_new`], [`${p}/o`]);
  // [B,Hkv,G·S,D] → [B,Hkv,G,S,D] → [B,S,Hkv,G,D] → [B,S,H·D] (head h = kv·G + g, as GQA orders them).
  node(ctx, "Reshape", `${p}/o5`, [`${p}/o`, "attn/out_shape5"], [`${p}/o5`]);
  node(ctx, "Transpose", `${p}/o5t`, [`${p}/o5`], [`${p}/o5t`], { perm: attr.ints([0, 3, 1, 2, 4]) });
  node(ctx, "Reshape", `${p}/attn`, [`${p}/o5t`, "attn/out_shape3"], [`${p}/attn`]);
  return `${p}/attn`;
}
