/**
 * One onnxruntime-node session over a dsr decoder graph, plus its KV cache. Each layer's K and V live
 * in one buffer laid out [rows, kvHeads, stride, headDim]; row r is a sequence's slot. The graph
 * reads the buffers in place as the past (masked past each row's length) and returns only the step's
 * new keys and values, which are appended here (src/engine/onnx/attention.ts says why). Attention
 * reads all `stride` positions of a row, so the stride is kept just above the longest sequence (a
 * multiple of STRIDE_STEP) and re-laid out as sequences grow or leave, rather than fixed at maxContext.
 */
import type * as Ort from "onnxruntime-node";
import { join } from "node:path";
import { DsrError } from "../../errors.js";
import { MASK_OFF } from "../../onnx/attention.js";
import { MODEL_FILE, type OnnxManifest } from "../../onnx/build.js";

export interface DecoderSessionOptions {
  threads: number;
  maxBatch: number;
  maxContext: number;
}

/** Granularity of the KV stride: a re-layout at most every STRIDE_STEP tokens of growth. */
export const STRIDE_STEP = 64;

export class DecoderSession {
  readonly layers: number;
  readonly vocab: number;
  /** Query heads per KV head. */
  private readonly groups: number;
  readonly slotFloats: number;
  /** Bytes of KV cache per token (all layers, K and V). */
  readonly kvBytesPerToken: number;
  private readonly k: Float32Array[] = [];
  private readonly v: Float32Array[] = [];
  private readonly rowFloats: number;
  /** Current positions per (row, head) in the buffers. */
  private stride: number;

  private constructor(
    private readonly ort: typeof Ort,
    private readonly session: Ort.InferenceSession,
    readonly manifest: OnnxManifest,
    readonly opts: DecoderSessionOptions,
  ) {
    const { numLayers, kvHeads, headDim, vocabSize } = manifest.io;
    this.layers = numLayers;
    this.vocab = vocabSize;
    this.groups = manifest.io.numHeads / kvHeads;
    this.rowFloats = headDim;
    this.slotFloats = kvHeads * opts.maxContext * headDim;
    this.stride = Math.min(STRIDE_STEP, opts.maxContext);
    this.kvBytesPerToken = numLayers * 2 * kvHeads * headDim * 4;
    for (let i = 0; i < numLayers; i++) {
      // Zero-filled allocations are lazily committed by the OS: only pages the cache touches cost RAM.
      this.k.push(new Float32Array(opts.maxBatch * this.slotFloats));
      this.v.push(new Float32Array(opts.maxBatch * this.slotFloats));
    }
  }

  static async open(onnxDir: string, manifest: OnnxManifest, opts: DecoderSessionOptions): Promise<DecoderSession> {
    const ort = await import("onnxruntime-node");
    let session: Ort.InferenceSession;
    try {
      session = await ort.InferenceSession.create(join(onnxDir, MODEL_FILE), {
        intraOpNumThreads: opts.threads,
        interOpNumThreads: 1,
        executionMode: "sequential",
        graphOptimizationLevel: "all",
      });
    } catch (e) {
      throw new DsrError("DSR_ONNX_LOAD_FAILED", `${join(onnxDir, MODEL_FILE)}: onnxruntime could not load the model (${(e as Error).message.split("\n")[0]})`, {
        hint: "rebuild it with `dsr convert SRC --to onnx --out DIR` (the file may be truncated or from an older dsr)",
      });
    }
    return new DecoderSession(ort, session, manifest, opts);
  }

  private kvFeeds(first: number, n: number, feeds: Record<string, Ort.Tensor>): void {
    const { kvHeads, headDim } = this.manifest.io;
    const dims = [n, kvHeads, this.stride, headDim];
    const rowFloats = kvHeads * this.stride * headDim;
    for (let i = 0; i < this.layers; i++) {
      feeds[`past_key_values.${i}.key`] = new this.ort.Tensor("float32", this.k[i]!.subarray(first * rowFloats, (first + n) * rowFloats), dims);
      feeds[`past_key_values.${i}.value`] = new this.ort.Tensor("float32", this.v[i]!.subarray(first * rowFloats, (first + n) * rowFloats), dims);
    }
  }

  /** Copies a step's new keys or values ([rows, S, kvHeads·headDim]) into slots first.. at positions past[r] onwards. */
  private append(buf: Float32Array, step: Float32Array, first: number, rows: number, S: number, past: number[]): void {
    const { kvHeads, headDim: D } = this.manifest.io;
    for (let r = 0; r < rows; r++) {
      for (let h = 0; h < kvHeads; h++) {
        const dst = (((first + r) * kvHeads + h) * this.stride + past[r]!) * D;
        for (let j = 0; j < S; j++) {
          const src = ((r * S + j) * kvHeads + h) * D;
          buf.set(step.subarray(src, src + D), dst + j * D);
        }
      }
    }
  }

  /**
   * Runs `tokens` (one row per slot, all rows the same length) for slots [first, first+rows) whose
   * caches already hold `past[r]` tokens, and appends their keys/values. Returns logits [rows, keep, vocab].
   */
  async run(first: number, tokens: number[][], past: number[], keep = 1): Promise<Float32Array> {
    const rows = tokens.length;
    const S = tokens[0]!.length;
    const ids = new BigInt64Array(rows * S);
    const positions = new BigInt64Array(rows * S);
    let total = 0;
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < S; j++) {
        ids[r * S + j] = BigInt(tokens[r]![j]!);
        positions[r * S + j] = BigInt(past[r]! + j);
      }
      total = Math.max(total, past[r]! + S);
    }
    if (total > this.stride) throw new Error(`KV stride ${this.stride} < ${total}: call fit() before run()`);
    const feeds: Record<string, Ort.Tensor> = {
      input_ids: new this.ort.Tensor("int64", ids, [rows, S]),
      position_ids: new this.ort.Tensor("int64", positions, [rows, S]),
      attention_mask_past: new this.ort.Tensor("float32", this.pastMask(rows, past), [rows, 1, 1, this.stride]),
      attention_mask_new: new this.ort.Tensor("float32", this.newMask(S), [this.groups * S, S]),
      num_logits_to_keep: new this.ort.Tensor("int64", BigInt64Array.of(BigInt(keep)), [1]),
    };
    this.kvFeeds(first, rows, feeds);
    const out = await this.session.run(feeds);
    for (let i = 0; i < this.layers; i++) {
      this.append(this.k[i]!, out[`new.${i}.key`]!.data as Float32Array, first, rows, S, past);
      this.append(this.v[i]!, out[`new.${i}.value`]!.data as Float32Array, first, rows, S, past);
    }
    return out.logits!.data as Float32Array;
  }

  /** Row r sees its first past[r] cached positions. */
  private pastMask(rows: number, past: number[]): Float32Array {
    const m = new Float32Array(rows * this.stride).fill(MASK_OFF);
    for (let r = 0; r < rows; r++) m.fill(0, r * this.stride, r * this.stride + past[r]!);
    return m;
  }

  /** Causal mask over the step's own tokens, repeated for each query head of a KV group. */
  private newMask(S: number): Float32Array {
    const m = new Float32Array(this.groups * S * S);
    for (let g = 0; g < this.groups; g++) for (let s = 0; s < S; s++) m.fill(MASK_OFF, (g * S + s) * S + s + 1, (g * S + s + 1) * S);
    return m;
  }

  /** The stride needed for sequences of up to `longest` tokens. */
  strideFor(longest: number): number {
    return Math.min(this.opts.maxContext, Math.max(STRIDE_STEP, Math.ceil(longest / STRIDE_STEP) * STRIDE_STEP));
  }

  /**
   * Makes room for sequences of up to `longest` tokens: grows the stride (or shrinks it when it is more
   * than twice what is needed), moving the first lens[r] positions of every row r in use.
   */
  fit(longest: number, lens: number[]): void {
    const want = this.strideFor(longest);
    if (want < this.stride && want * 2 > this.stride) return;
    if (want === this.stride) return;
    const { kvHeads } = this.manifest.io;
    const D = this.rowFloats;
    const old = this.stride;
    // Growing moves data to higher offsets: walk backwards; shrinking: forwards. Either way no
    // unread (row, head) block is overwritten.
    const order: [number, number][] = [];
    for (let r = 0; r < lens.length; r++) for (let h = 0; h < kvHeads; h++) order.push([r, h]);
    if (want > old) order.reverse();
    for (const bufs of [this.k, this.v]) {
      for (const b of bufs) {
        for (const [r, h] of order) {
          const src = (r * kvHeads + h) * old * D;
          const dst = (r * kvHeads + h) * want * D;
          if (src !== dst && lens[r]! > 0) b.copyWithin(dst, src, src + lens[r]! * D);
        }
      }
    }
    this.stride = want;
  }

  get currentStride(): number {
    return this.stride;
  }

  /** Copies the first `len` cached positions of row `from` into row `to` (a sequence changes slot). */
  moveSlot(from: number, to: number, len: number): void {
    if (from === to || len <= 0) return;
    const { kvHeads } = this.manifest.io;
    const perHead = this.stride * this.rowFloats;
    for (const bufs of [this.k, this.v]) {
      for (const b of bufs) {
        for (let h = 0; h < kvHeads; h++) {
          const src = (from * kvHeads + h) * perHead;
          b.copyWithin((to * kvHeads + h) * perHead, src, src + len * this.rowFloats);
        }
      }
    }
  }

  async close(): Promise<void> {
    await this.session.release();
  }
}
