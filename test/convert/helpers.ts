/** Test helpers for convert: read outputs back, and generate DeepSeek-FP8-layout checkpoints in code. */
import { randomFillSync } from "node:crypto";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { readHeaderFromFile } from "../../src/engine/tensors/read.js";
import type { SafetensorsHeader, TensorInfo } from "../../src/engine/tensors/safetensors.js";
import { writeSafetensors, type TensorSpec } from "../../src/engine/tensors/write.js";

export interface LoadedShard {
  header: SafetensorsHeader;
  bytes: Buffer;
  tensor(name: string): { info: TensorInfo; data: Buffer } | undefined;
}

/** Reads a (small) safetensors file with the project's validating reader. */
export async function loadShard(path: string): Promise<LoadedShard> {
  const header = await readHeaderFromFile(path);
  const bytes = await readFile(path);
  return {
    header,
    bytes,
    tensor(name) {
      const info = header.tensors.find((t) => t.name === name);
      return info && { info, data: bytes.subarray(header.dataStart + info.begin, header.dataStart + info.end) };
    },
  };
}

/** All tensors of a checkpoint folder (index or single file), by name. */
export async function loadCheckpoint(dir: string): Promise<Map<string, { info: TensorInfo; data: Buffer; file: string; metadata?: Record<string, string> }>> {
  let files: string[];
  try {
    const idx = JSON.parse(await readFile(join(dir, "model.safetensors.index.json"), "utf8")) as { weight_map: Record<string, string> };
    files = [...new Set(Object.values(idx.weight_map))];
  } catch {
    files = ["model.safetensors"];
  }
  const out = new Map();
  for (const f of files) {
    const s = await loadShard(join(dir, f));
    for (const t of s.header.tensors) out.set(t.name, { ...s.tensor(t.name)!, file: f, metadata: s.header.metadata });
  }
  return out;
}

export type GenTensor = TensorSpec & { data: Uint8Array };

/** Random FP8 codes with the two NaN codes (0x7f, 0xff) replaced, like real weights. */
export function randomFp8(n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let off = 0; off < n; off += 1 << 16) randomFillSync(b, off, Math.min(1 << 16, n - off));
  for (let i = 0; i < n; i++) if ((b[i] & 0x7f) === 0x7f) b[i] &= 0xfe;
  return b;
}

/** A DeepSeek-style FP8 weight and its F32 weight_scale_inv with scales in [2^-12, 2^-6). */
export function fp8Weight(name: string, rows: number, cols: number): GenTensor[] {
  const sr = Math.ceil(rows / 128);
  const sc = Math.ceil(cols / 128);
  const scale = new Float32Array(sr * sc);
  for (let i = 0; i < scale.length; i++) scale[i] = 2 ** -12 * (1 + ((i * 2654435761) % 63) / 1.0);
  return [
    { name, dtype: "F8_E4M3", shape: [rows, cols], data: randomFp8(rows * cols) },
    { name: name + "_scale_inv", dtype: "F32", shape: [sr, sc], data: new Uint8Array(scale.buffer) },
  ];
}

/** Writes tensors into `shards` groups (lists of names) as model-XXXXX-of-YYYYY + index + config. */
export async function writeCheckpoint(dir: string, groups: GenTensor[][], config: Record<string, unknown>): Promise<void> {
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (let i = 0; i < groups.length; i++) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(groups.length).padStart(5, "0")}.safetensors`;
    await writeSafetensors(join(dir, file), groups[i], { metadata: { format: "pt" } });
    for (const t of groups[i]) {
      weightMap[t.name] = file;
      total += t.data.byteLength;
    }
  }
  await writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2));
}

export const FP8_CONFIG = {
  architectures: ["DeepseekV3ForCausalLM"],
  model_type: "deepseek_v3",
  num_hidden_layers: 2,
  torch_dtype: "bfloat16",
  quantization_config: { activation_scheme: "dynamic", fmt: "e4m3", quant_method: "fp8", weight_block_size: [128, 128] },
};
