/**
 * Where the ONNX builder gets weights from: row ranges of named 2-D (or 1-D) tensors as fp32, so large
 * matrices can be converted and quantized a chunk of rows at a time. `checkpointWeights` reads a local
 * safetensors checkpoint (single file or sharded with an index) through the tensors core;
 * `syntheticWeights` generates seeded random weights of a config's shapes (benchmarks, tests).
 */
import { createHash } from "node:crypto";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { DsrError, integrityError } from "../errors.js";
import { decodeToF32 } from "../tensors/codecs.js";
import { dtypeBits, FLOAT_CODEC_DTYPES, type FloatCodecDtype } from "../tensors/dtypes.js";
import { readHeader } from "../tensors/read.js";
import type { SafetensorsHeader, TensorInfo } from "../tensors/safetensors.js";
import { FileByteSource } from "../tensors/source.js";

export interface WeightSource {
  shape(name: string): number[] | undefined;
  /** The stored safetensors dtype ("BF16", "F8_E4M3", …). */
  dtype(name: string): string | undefined;
  /** Rows [r0, r1) of a tensor as fp32 (a 1-D tensor is one row). */
  rows(name: string, r0: number, r1: number): Promise<Float32Array>;
  /** Identifies the exact weights (for the conversion manifest). */
  readonly fingerprint: string;
  readonly description: string;
  close(): Promise<void>;
}

interface Located {
  src: FileByteSource;
  header: SafetensorsHeader;
  info: TensorInfo;
}

/** Shard files of a local checkpoint: the index's files, else every *.safetensors file named model*.safetensors. */
export async function shardFiles(dir: string): Promise<string[]> {
  try {
    const index = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8")) as { weight_map?: Record<string, string> };
    return [...new Set(Object.values(index.weight_map ?? {}))].sort();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") {
      throw integrityError("DSR_INDEX_INVALID", `${join(dir, "model.safetensors.index.json")}: ${(e as Error).message}`, {
        hint: "re-download the checkpoint's index file",
      });
    }
  }
  try {
    await stat(join(dir, "model.safetensors"));
    return ["model.safetensors"];
  } catch {
    throw new DsrError("DSR_NO_WEIGHTS", `${dir}: no model.safetensors or model.safetensors.index.json`, {
      hint: "point at a Hugging Face checkpoint directory (config.json + *.safetensors), or a dsr ONNX directory",
    });
  }
}

export async function checkpointWeights(dir: string): Promise<WeightSource> {
  const files = await shardFiles(dir);
  const table = new Map<string, Located>();
  const hash = createHash("sha256");
  hash.update(await readFile(join(dir, "config.json")));
  const sources: FileByteSource[] = [];
  for (const f of files) {
    const src = new FileByteSource(join(dir, f), f);
    sources.push(src);
    const { header, fileSize } = await readHeader(src, { speculativeBytes: 1 << 16 });
    hash.update(`${f}\0${fileSize}\0${JSON.stringify(header.tensors)}\0`);
    for (const info of header.tensors) table.set(info.name, { src, header, info });
  }
  return {
    description: dir,
    fingerprint: hash.digest("hex"),
    shape: (name) => table.get(name)?.info.shape,
    dtype: (name) => table.get(name)?.info.dtype,
    async rows(name, r0, r1) {
      const t = table.get(name);
      if (!t) throw integrityError("DSR_TENSOR_MISSING", `${dir}: tensor "${name}" is missing`, { hint: "the checkpoint is incomplete or not a qwen2/llama model" });
      const dtype = t.info.dtype;
      if (!(FLOAT_CODEC_DTYPES as readonly string[]).includes(dtype)) {
        throw new DsrError("DSR_DTYPE_UNSUPPORTED", `${t.src.name}: tensor "${name}" has dtype ${dtype}, which the ONNX builder cannot read`, {
          hint: "convert quantized checkpoints to bf16 first (dsr convert --to bf16)",
        });
      }
      const cols = t.info.shape.length >= 2 ? t.info.shape.slice(1).reduce((a, b) => a * b, 1) : t.info.shape[0] ?? 1;
      const rowBytes = t.info.shape.length >= 2 ? (cols * dtypeBits(dtype)) / 8 : t.info.end - t.info.begin;
      const start = t.header.dataStart + t.info.begin + r0 * rowBytes;
      const len = (r1 - r0) * rowBytes;
      const bytes = await t.src.read(start, len);
      if (bytes.byteLength !== len) throw integrityError("DSR_ST_TRUNCATED", `${t.src.name}: tensor "${name}" is cut short`, { hint: "re-download the file" });
      const out = new Float32Array(t.info.shape.length >= 2 ? (r1 - r0) * cols : cols);
      decodeToF32(dtype as FloatCodecDtype, bytes, out);
      return out;
    },
    async close() {
      for (const s of sources) await s.close();
    },
  };
}

/** xorshift32 uniform in [-1, 1), seeded per tensor and row so any row range is reproducible. */
function fillRandom(out: Float32Array, seed: number, amp: number): void {
  let s = seed | 0 || 0x9e3779b9;
  for (let i = 0; i < out.length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2147483648 - 1) * amp;
  }
}

function nameSeed(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return h >>> 0;
}

/** Random weights with the given tensor shapes: norms are 1, everything else uniform ±amp. */
export function syntheticWeights(shapes: Map<string, number[]>, amp = 0.02): WeightSource {
  return {
    description: "synthetic random weights",
    fingerprint: createHash("sha256").update(JSON.stringify([...shapes])).digest("hex"),
    shape: (name) => shapes.get(name),
    dtype: (name) => (shapes.has(name) ? "F32" : undefined),
    async rows(name, r0, r1) {
      const shape = shapes.get(name);
      if (!shape) throw new Error(`synthetic weights: no tensor ${name}`);
      const cols = shape.length >= 2 ? shape[1]! : shape[0]!;
      const n = shape.length >= 2 ? r1 - r0 : 1;
      const out = new Float32Array(n * cols);
      if (name.endsWith("norm.weight")) return out.fill(1);
      for (let r = 0; r < n; r++) fillRandom(out.subarray(r * cols, (r + 1) * cols), nameSeed(name) + (r0 + r) * 7919, amp);
      return out;
    },
    async close() {},
  };
}
