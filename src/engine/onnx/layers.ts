/**
 * Emits the weight-bearing pieces of the decoder graph: linear layers (fp32/fp16 MatMul, or
 * int8/int4 MatMulNBits with RTN quantization), embeddings and norms. Each writes its weights to the
 * external data file as it goes, a chunk of rows at a time for quantized matrices.
 */
import { encodeFromF32 } from "../tensors/codecs.js";
import { bytesOf, type ExternalDataWriter } from "./data-file.js";
import { attr, DataType, type NodeSpec, type TensorSpec } from "./model.js";
import { quantizeRows, quantLayout, type QuantBits } from "./quant.js";
import type { WeightSource } from "./weights.js";

export type WeightFormat = "fp32" | "fp16" | "int8" | "int4";

export interface EmitContext {
  src: WeightSource;
  data: ExternalDataWriter;
  nodes: NodeSpec[];
  initializers: TensorSpec[];
  format: WeightFormat;
  blockSize: number;
  /** MatMulNBits accuracy_level: 4 = int8 compute of A, ~4× faster decode on CPU (facts §5.1). */
  accuracyLevel: number;
  /** Called after each tensor with the source elements consumed (progress). */
  onWeights: (elements: number) => void;
}

/** Rows processed per chunk when quantizing (bounds memory for 150k-row lm_heads). */
const ROW_CHUNK = 4096;

function f16Bytes(x: Float32Array): Uint8Array {
  const out = new Uint8Array(x.length * 2);
  encodeFromF32("F16", x, out);
  return out;
}

function transpose(w: Float32Array, rows: number, cols: number): Float32Array {
  const t = new Float32Array(w.length);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) t[c * rows + r] = w[r * cols + c]!;
  return t;
}

export function node(ctx: EmitContext, op: string, name: string, inputs: string[], outputs: string[], attrs?: NodeSpec["attrs"], domain?: string): void {
  ctx.nodes.push({ op, name, inputs, outputs, attrs, domain });
}

/** An fp32 vector (norm weight, bias) as an initializer. */
export async function vector(ctx: EmitContext, initName: string, parts: string[]): Promise<string> {
  const arrays: Float32Array[] = [];
  for (const p of parts) arrays.push(await ctx.src.rows(p, 0, 1));
  const n = arrays.reduce((a, b) => a + b.length, 0);
  const v = new Float32Array(n);
  let o = 0;
  for (const a of arrays) {
    v.set(a, o);
    o += a.length;
  }
  ctx.initializers.push(await ctx.data.tensor(initName, DataType.FLOAT, [n], bytesOf(v)));
  ctx.onWeights(n);
  return initName;
}

/**
 * y = x · Wᵀ (+ bias) where W is the row-concatenation of `weights` (each [n_i, K], the Hugging Face
 * [out, in] layout). Concatenating q/k/v gives one packed-QKV projection (facts §4.1).
 */
export async function linear(ctx: EmitContext, x: string, prefix: string, weights: string[], biases: string[] | undefined, out: string): Promise<string> {
  const shapes = weights.map((w) => ctx.src.shape(w)!);
  const K = shapes[0]![1]!;
  const N = shapes.reduce((a, s) => a + s[0]!, 0);
  const bits: QuantBits | undefined = ctx.format === "int4" ? 4 : ctx.format === "int8" ? 8 : undefined;
  const mm = biases ? `${out}/nobias` : out;
  if (bits) {
    const block = ctx.blockSize;
    const { kBlocks, zpCols } = quantLayout(K, bits, block);
    const scales = new Float32Array(N * kBlocks);
    const zps = new Uint8Array(N * zpCols);
    const qt = ctx.data.begin();
    let row = 0;
    for (let i = 0; i < weights.length; i++) {
      const rows = shapes[i]![0]!;
      for (let r0 = 0; r0 < rows; r0 += ROW_CHUNK) {
        const r1 = Math.min(rows, r0 + ROW_CHUNK);
        const q = quantizeRows(await ctx.src.rows(weights[i]!, r0, r1), r1 - r0, K, bits, block);
        await qt.append(q.q);
        scales.set(q.scales, (row + r0) * kBlocks);
        zps.set(q.zeroPoints, (row + r0) * zpCols);
        ctx.onWeights((r1 - r0) * K);
      }
      row += rows;
    }
    const { blob } = quantLayout(K, bits, block);
    ctx.initializers.push(qt.end(`${prefix}.qweight`, DataType.UINT8, [N, kBlocks, blob]));
    ctx.initializers.push(await ctx.data.tensor(`${prefix}.scales`, DataType.FLOAT, [N * kBlocks], bytesOf(scales)));
    ctx.initializers.push(await ctx.data.tensor(`${prefix}.qzeros`, DataType.UINT8, [N * zpCols], zps));
    node(ctx, "MatMulNBits", `${prefix}/MatMulNBits`, [x, `${prefix}.qweight`, `${prefix}.scales`, `${prefix}.qzeros`], [mm], {
      K: attr.int(K),
      N: attr.int(N),
      bits: attr.int(bits),
      block_size: attr.int(block),
      accuracy_level: attr.int(ctx.accuracyLevel),
    }, "com.microsoft");
  } else {
    // MatMul wants B as [K, N]: transpose at build time, one whole matrix at a time.
    const w = new Float32Array(N * K);
    let row = 0;
    for (let i = 0; i < weights.length; i++) {
      const rows = shapes[i]![0]!;
      w.set(await ctx.src.rows(weights[i]!, 0, rows), row * K);
      row += rows;
    }
    const t = transpose(w, N, K);
    ctx.onWeights(N * K);
    if (ctx.format === "fp16") {
      // CPU MatMul has no fp16×fp32 kernel: store half, Cast once (ORT constant-folds it at load).
      ctx.initializers.push(await ctx.data.tensor(`${prefix}.weight_f16`, DataType.FLOAT16, [K, N], f16Bytes(t)));
      node(ctx, "Cast", `${prefix}/Cast`, [`${prefix}.weight_f16`], [`${prefix}.weight`], { to: attr.int(DataType.FLOAT) });
    } else {
      ctx.initializers.push(await ctx.data.tensor(`${prefix}.weight`, DataType.FLOAT, [K, N], bytesOf(t)));
    }
    node(ctx, "MatMul", `${prefix}/MatMul`, [x, `${prefix}.weight`], [mm]);
  }
  if (biases) {
    const b = await vector(ctx, `${prefix}.bias`, biases);
    node(ctx, "Add", `${prefix}/Add`, [mm, b], [out]);
  }
  return out;
}

/** Token embedding table [V, H] for Gather: fp32 for fp32 builds, fp16 + Cast otherwise (halves its RAM). */
export async function embedding(ctx: EmitContext, name: string, initName: string, ids: string, out: string): Promise<void> {
  const [V, H] = ctx.src.shape(name)!;
  const half = ctx.format !== "fp32";
  const t = ctx.data.begin();
  for (let r0 = 0; r0 < V!; r0 += ROW_CHUNK) {
    const r1 = Math.min(V!, r0 + ROW_CHUNK);
    const rows = await ctx.src.rows(name, r0, r1);
    await t.append(half ? f16Bytes(rows) : bytesOf(rows));
    ctx.onWeights((r1 - r0) * H!);
  }
  ctx.initializers.push(t.end(initName, half ? DataType.FLOAT16 : DataType.FLOAT, [V!, H!]));
  if (half) {
    node(ctx, "Gather", "embed/Gather", [initName, ids], [`${out}/f16`], { axis: attr.int(0) });
    node(ctx, "Cast", "embed/Cast", [`${out}/f16`], [out], { to: attr.int(DataType.FLOAT) });
  } else {
    node(ctx, "Gather", "embed/Gather", [initName, ids], [out], { axis: attr.int(0) });
  }
}
