/**
 * The decoder graph for qwen2 and llama (every R1-Distill model), in the shape onnxruntime-genai
 * emits for CPU except for attention (facts §4.1, §4.6 — all ops verified on onnxruntime-node 1.30):
 *   Gather embedding → per layer: (Skip)SimplifiedLayerNormalization → packed QKV projection (+bias
 *   for qwen2) → Split → RotaryEmbedding on Q and K → grouped-query attention from MatMuls over the
 *   cache, read in place (attention.ts says why not GroupQueryAttention) → o_proj →
 *   SkipSimplifiedLayerNormalization → SwiGLU MLP → final norm → lm_head on the last positions only.
 * Inputs: input_ids int64 [B,S], position_ids int64 [B,S] (cached length + j, per row),
 * attention_mask_past float [B,1,1,P], attention_mask_new float [G·S,S] (attention.ts),
 * num_logits_to_keep int64 [1], past_key_values.N.{key,value} float [B,Hkv,P,D].
 * Outputs: logits [B, keep, V] and new.N.{key,value} [B, S, Hkv·D]: only this step's (rotated) keys
 * and values, which the caller appends to its cache.
 */
import { DsrError } from "../errors.js";
import type { ModelConfig } from "../arch/config.js";
import { bytesOf } from "./data-file.js";
import { attention, attentionCommon } from "./attention.js";
import { embedding, linear, node, vector, type EmitContext } from "./layers.js";
import { attr, DataType, type GraphSpec, type ValueInfo } from "./model.js";
import { rotaryCaches } from "./rope.js";

export const SUPPORTED_MODEL_TYPES = ["qwen2", "llama"];

export interface DecoderIo {
  numLayers: number;
  /** Query heads (grouped by KV head: numHeads / kvHeads per group). */
  numHeads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  /** Rotary cache length: the longest context the graph can run. */
  maxPositions: number;
}

export function checkSupported(cfg: ModelConfig): void {
  if (!SUPPORTED_MODEL_TYPES.includes(cfg.modelType)) {
    throw new DsrError("DSR_ARCH_UNSUPPORTED", `config.json: model_type "${cfg.modelType}" is not supported by the ONNX builder`, {
      hint: `supported: ${SUPPORTED_MODEL_TYPES.join(", ")} (the R1-Distill Qwen and Llama models); serve DeepSeek-V3/R1 with --engine vllm`,
    });
  }
  if (cfg.hiddenAct !== "silu") {
    throw new DsrError("DSR_ARCH_UNSUPPORTED", `config.json: hidden_act "${cfg.hiddenAct}" is not supported (only silu)`, { hint: "qwen2 and llama use silu" });
  }
}

const int64 = (xs: number[]) => bytesOf(BigInt64Array.from(xs.map(BigInt)));

export async function buildDecoderGraph(cfg: ModelConfig, ctx: EmitContext, maxPositions: number): Promise<GraphSpec> {
  checkSupported(cfg);
  const L = cfg.numLayers;
  const { numHeads, numKvHeads, headDim, vocabSize, rmsNormEps } = cfg;
  const inputs: ValueInfo[] = [
    { name: "input_ids", elemType: DataType.INT64, shape: ["batch_size", "sequence_length"] },
    { name: "position_ids", elemType: DataType.INT64, shape: ["batch_size", "sequence_length"] },
    { name: "attention_mask_past", elemType: DataType.FLOAT, shape: ["batch_size", 1, 1, "past_len"] },
    { name: "attention_mask_new", elemType: DataType.FLOAT, shape: ["group_x_sequence_length", "sequence_length"] },
    { name: "num_logits_to_keep", elemType: DataType.INT64, shape: [1] },
  ];
  const outputs: ValueInfo[] = [{ name: "logits", elemType: DataType.FLOAT, shape: ["batch_size", "keep", vocabSize] }];
  for (let i = 0; i < L; i++) {
    for (const kv of ["key", "value"]) {
      inputs.push({ name: `past_key_values.${i}.${kv}`, elemType: DataType.FLOAT, shape: ["batch_size", numKvHeads, "past_len", headDim] });
      outputs.push({ name: `new.${i}.${kv}`, elemType: DataType.FLOAT, shape: ["batch_size", "sequence_length", numKvHeads * headDim] });
    }
  }

  const { cos, sin } = rotaryCaches(cfg, maxPositions);
  ctx.initializers.push(await ctx.data.tensor("cos_cache", DataType.FLOAT, [maxPositions, headDim / 2], bytesOf(cos)));
  ctx.initializers.push(await ctx.data.tensor("sin_cache", DataType.FLOAT, [maxPositions, headDim / 2], bytesOf(sin)));

  ctx.initializers.push({ name: "qkv_split", dataType: DataType.INT64, dims: [3], raw: int64([numHeads * headDim, numKvHeads * headDim, numKvHeads * headDim]) });
  attentionCommon(ctx, numHeads, numKvHeads, headDim, "past_key_values.0.key");
  await embedding(ctx, "model.embed_tokens.weight", "model.embed_tokens.weight", "input_ids", "embeds");

  let hidden = "embeds"; // output of the previous block, not yet added to the residual
  let residual = "";
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    const lnIn = await vector(ctx, `${p}.input_layernorm.weight`, [`${p}.input_layernorm.weight`]);
    const normed = `${p}/input_norm`;
    if (i === 0) {
      node(ctx, "SimplifiedLayerNormalization", `${p}/input_layernorm`, [hidden, lnIn], [normed], {
        axis: attr.int(-1),
        epsilon: attr.float(rmsNormEps),
        stash_type: attr.int(1),
      });
      residual = hidden;
    } else {
      const sum = `${p}/residual`;
      node(ctx, "SkipSimplifiedLayerNormalization", `${p}/input_layernorm`, [hidden, residual, lnIn], [normed, "", "", sum], { epsilon: attr.float(rmsNormEps) }, "com.microsoft");
      residual = sum;
    }
    const a = `${p}.self_attn`;
    const hasBias = ctx.src.shape(`${a}.q_proj.bias`) !== undefined;
    const qkv = await linear(ctx, normed, `${a}.qkv_proj`, [`${a}.q_proj.weight`, `${a}.k_proj.weight`, `${a}.v_proj.weight`],
      hasBias ? [`${a}.q_proj.bias`, `${a}.k_proj.bias`, `${a}.v_proj.bias`] : undefined, `${a}/qkv`);
    node(ctx, "Split", `${a}/qkv_split`, [qkv, "qkv_split"], [`${a}/q`, `${a}/k`, `new.${i}.value`], { axis: attr.int(2) });
    const rotary = { interleaved: attr.int(0) };
    node(ctx, "RotaryEmbedding", `${a}/q_rotary`, [`${a}/q`, "position_ids", "cos_cache", "sin_cache"], [`${a}/q_rot`], { ...rotary, num_heads: attr.int(numHeads) }, "com.microsoft");
    node(ctx, "RotaryEmbedding", `${a}/k_rotary`, [`${a}/k`, "position_ids", "cos_cache", "sin_cache"], [`new.${i}.key`], { ...rotary, num_heads: attr.int(numKvHeads) }, "com.microsoft");
    const attn = attention(ctx, a, { q: `${a}/q_rot`, k: `new.${i}.key`, v: `new.${i}.value`, pastK: `past_key_values.${i}.key`, pastV: `past_key_values.${i}.value` }, headDim);
    const attnOut = await linear(ctx, attn, `${a}.o_proj`, [`${a}.o_proj.weight`], undefined, `${a}/out`);

    const lnPost = await vector(ctx, `${p}.post_attention_layernorm.weight`, [`${p}.post_attention_layernorm.weight`]);
    const normed2 = `${p}/post_norm`;
    const sum2 = `${p}/residual2`;
    node(ctx, "SkipSimplifiedLayerNormalization", `${p}/post_attention_layernorm`, [attnOut, residual, lnPost], [normed2, "", "", sum2], { epsilon: attr.float(rmsNormEps) }, "com.microsoft");
    residual = sum2;

    const m = `${p}.mlp`;
    const gate = await linear(ctx, normed2, `${m}.gate_proj`, [`${m}.gate_proj.weight`], undefined, `${m}/gate`);
    const up = await linear(ctx, normed2, `${m}.up_proj`, [`${m}.up_proj.weight`], undefined, `${m}/up`);
    node(ctx, "Sigmoid", `${m}/Sigmoid`, [gate], [`${m}/sig`]);
    node(ctx, "Mul", `${m}/SiLU`, [gate, `${m}/sig`], [`${m}/silu`]);
    node(ctx, "Mul", `${m}/SwiGLU`, [`${m}/silu`, up], [`${m}/act`]);
    hidden = await linear(ctx, `${m}/act`, `${m}.down_proj`, [`${m}.down_proj.weight`], undefined, `${m}/down`);
  }
  const lnF = await vector(ctx, "model.norm.weight", ["model.norm.weight"]);
  node(ctx, "SkipSimplifiedLayerNormalization", "model/norm", [hidden, residual, lnF], ["final_norm", "", "", ""], { epsilon: attr.float(rmsNormEps) }, "com.microsoft");

  // Logits only for the last `num_logits_to_keep` positions: prefill skips the [S, V] lm_head product.
  ctx.initializers.push({ name: "const_axis1", dataType: DataType.INT64, dims: [1], raw: int64([1]) });
  ctx.initializers.push({ name: "const_int64_max", dataType: DataType.INT64, dims: [1], raw: int64([Number.MAX_SAFE_INTEGER]) });
  node(ctx, "Neg", "logits/Neg", ["num_logits_to_keep"], ["logits/start"]);
  node(ctx, "Slice", "logits/Slice", ["final_norm", "logits/start", "const_int64_max", "const_axis1"], ["final_last"]);
  const lmHead = cfg.tieWordEmbeddings || !ctx.src.shape("lm_head.weight") ? "model.embed_tokens.weight" : "lm_head.weight";
  await linear(ctx, "final_last", "lm_head", [lmHead], undefined, "logits");

  return { name: "dsr_decoder", nodes: ctx.nodes, initializers: ctx.initializers, inputs, outputs };
}

export function decoderIo(cfg: ModelConfig, maxPositions: number): DecoderIo {
  return { numLayers: cfg.numLayers, numHeads: cfg.numHeads, kvHeads: cfg.numKvHeads, headDim: cfg.headDim, vocabSize: cfg.vocabSize, maxPositions };
}
