/**
 * What convert will do, decided and validated before any byte is written: for every tensor an
 * action (copy the bytes, dequantise DeepSeek FP8 blocks, cast, or drop), the output shards with
 * their exact headers, the rewritten config.json, and a fingerprint of inputs + options that the
 * resume manifest is keyed on. Every validation failure names the tensor and its file (exit 3).
 */
import { createHash } from "node:crypto";
import picomatch from "picomatch";
import { integrityError, usageError } from "../errors.js";
import { FLOAT_CODEC_DTYPES, type Dtype, type FloatCodecDtype } from "../tensors/dtypes.js";
import { SafetensorsWriter, type TensorSpec } from "../tensors/write.js";
import { FP8_BLOCK, type TargetDtype } from "./kernels.js";
import type { SourceCheckpoint, SourceTensor } from "./source.js";

export interface ConvertOptions {
  to: TargetDtype;
  /** Re-shard to at most this many tensor bytes per shard (huggingface_hub's rule); undefined keeps the input grouping. */
  maxShardSize?: number;
  /** Leave out DeepSeek's MTP layers (model.layers.N for N ≥ num_hidden_layers). */
  dropMtp: boolean;
  /** Glob patterns of tensor names copied unchanged whatever their dtype. */
  keepDtype: string[];
}

/**
 * DeepSeek keeps the MoE router's correction bias in F32 and fp8_cast_bf16.py leaves it so: a
 * BF16 bias would shift expert selection. `--cast-all` clears this default.
 */
export const DEFAULT_KEEP_DTYPE = ["*.e_score_correction_bias"];

export type TensorAction =
  | { kind: "copy" }
  | { kind: "dequant"; scale: SourceTensor }
  | { kind: "cast"; from: FloatCodecDtype };

export interface PlannedTensor extends TensorSpec {
  src: SourceTensor;
  action: TensorAction;
  /** Placement in the output shard's data buffer. */
  begin: number;
  end: number;
}

export interface PlannedShard {
  file: string;
  tensors: PlannedTensor[];
  header: Uint8Array;
  fileSize: number;
  /** Sum of the source bytes this shard is made from (progress and throughput). */
  inputBytes: number;
}

export interface ConversionPlan {
  options: ConvertOptions;
  shards: PlannedShard[];
  /** Index written only when there are several shards (as save_pretrained does). */
  writeIndex: boolean;
  counts: { dequantized: number; cast: number; copied: number; droppedScales: number; droppedMtp: number };
  inputBytes: number;
  /** Sum of output tensor bytes = the index's total_size. */
  totalSize: number;
  sourceFormat: string;
  config: Record<string, unknown> | undefined;
  fingerprint: string;
}

const TORCH_DTYPE: Record<TargetDtype, string> = { BF16: "bfloat16", F16: "float16", F32: "float32" };
const SCALE_SUFFIX = "_scale_inv";

export function shardName(i: number, n: number): string {
  return `model-${String(i + 1).padStart(5, "0")}-of-${String(n).padStart(5, "0")}.safetensors`;
}

export function planConversion(src: SourceCheckpoint, opts: ConvertOptions): ConversionPlan {
  const keep = opts.keepDtype.length > 0 ? picomatch(opts.keepDtype, { dot: true }) : () => false;
  const numLayers = opts.dropMtp ? mainLayerCount(src) : Infinity;
  checkBlockSize(src);

  const counts = { dequantized: 0, cast: 0, copied: 0, droppedScales: 0, droppedMtp: 0 };
  const kept: { t: SourceTensor; action: TensorAction; dtype: Dtype }[] = [];
  const sourceDtypes = new Set<string>();
  for (const t of src.tensors) {
    const layer = /^model\.layers\.(\d+)\./.exec(t.name);
    if (layer && Number(layer[1]) >= numLayers) {
      counts.droppedMtp++;
      continue;
    }
    const weightName = t.name.slice(0, -SCALE_SUFFIX.length);
    if (t.name.endsWith(SCALE_SUFFIX) && src.byName.get(weightName)?.dtype === "F8_E4M3" && !keep(weightName)) {
      counts.droppedScales++;
      continue;
    }
    const where = `${t.shard.path}: tensor "${t.name}"`;
    const details = { file: t.shard.file, tensor: t.name };
    if (keep(t.name) || !isFloat(t.dtype)) {
      kept.push({ t, action: { kind: "copy" }, dtype: t.dtype });
      counts.copied++;
      continue;
    }
    sourceDtypes.add(t.dtype);
    if (t.dtype === "F8_E4M3") {
      const scale = src.byName.get(t.name + SCALE_SUFFIX);
      if (!scale) {
        throw integrityError("DSR_CONVERT_MISSING_SCALE", `${where} is FP8 but its scale "${t.name}${SCALE_SUFFIX}" is in no shard`, {
          hint: "the checkpoint is incomplete: re-download the shard that holds the scale (see the index)",
          details,
        });
      }
      if (t.shape.length !== 2) {
        throw integrityError("DSR_CONVERT_FP8_SHAPE", `${where} is FP8 with shape ${JSON.stringify(t.shape)}; block dequantisation needs a 2-D weight`, { details });
      }
      const want = [Math.ceil(t.shape[0] / FP8_BLOCK), Math.ceil(t.shape[1] / FP8_BLOCK)];
      if (scale.dtype !== "F32" || scale.shape.length !== 2 || scale.shape[0] !== want[0] || scale.shape[1] !== want[1]) {
        throw integrityError(
          "DSR_CONVERT_SCALE_SHAPE",
          `${scale.shard.path}: scale "${scale.name}" is ${scale.dtype} ${JSON.stringify(scale.shape)} but weight ${JSON.stringify(t.shape)} needs F32 ${JSON.stringify(want)} (⌈rows/128⌉, ⌈cols/128⌉)`,
          { hint: "the scale does not belong to this weight; the checkpoint is corrupt or not DeepSeek FP8", details: { file: scale.shard.file, tensor: scale.name } },
        );
      }
      kept.push({ t, action: { kind: "dequant", scale }, dtype: opts.to });
      counts.dequantized++;
    } else if (!isCodec(t.dtype)) {
      throw integrityError("DSR_CONVERT_UNSUPPORTED_DTYPE", `${where} has dtype ${t.dtype}, which convert cannot cast to ${opts.to}`, {
        hint: `convert casts F32/F16/BF16/F8_E5M2 and dequantises DeepSeek F8_E4M3 blocks; pass --keep-dtype '${t.name}' to copy it unchanged`,
        details,
      });
    } else if (t.dtype === opts.to) {
      kept.push({ t, action: { kind: "copy" }, dtype: t.dtype });
      counts.copied++;
    } else {
      kept.push({ t, action: { kind: "cast", from: t.dtype }, dtype: opts.to });
      counts.cast++;
    }
  }
  if (kept.length === 0) throw usageError(`${src.dir}: nothing left to write`, "check --drop-mtp and the checkpoint contents");

  const sourceFormat = counts.dequantized > 0 ? "deepseek-fp8-e4m3-block128" : [...sourceDtypes].sort().join("+") || "unchanged";
  const metadata = { format: "pt", "dsr.source_format": sourceFormat, "dsr.converted_to": opts.to };
  const groups = groupIntoShards(kept, opts.maxShardSize);
  const single = groups.length === 1;
  const shards: PlannedShard[] = groups.map((g, i) => {
    const specs = g.map((k) => ({ name: k.t.name, dtype: k.dtype, shape: k.t.shape }));
    const { placed, header, fileSize } = SafetensorsWriter.layout(specs, { metadata, order: "given" });
    const tensors = placed.map((p, j) => ({ ...p, src: g[j].t, action: g[j].action }));
    return { file: single ? "model.safetensors" : shardName(i, groups.length), tensors, header, fileSize, inputBytes: g.reduce((a, k) => a + k.t.end - k.t.begin, 0) };
  });
  const totalSize = shards.reduce((a, s) => a + (s.tensors.at(-1)?.end ?? 0), 0);
  const inputBytes = shards.reduce((a, s) => a + s.inputBytes, 0);
  const config = src.config ? rewriteConfig(src.config, opts) : undefined;
  const fingerprint = createHash("sha256")
    .update(JSON.stringify({ v: 1, opts, inputs: src.shards.map((s) => [s.file, s.size, s.mtimeMs]) }))
    .update(shards.map((s) => s.file + ":" + createHash("sha256").update(s.header).digest("hex")).join(","))
    .digest("hex");
  return { options: opts, shards, writeIndex: !single, counts, inputBytes, totalSize, sourceFormat, config, fingerprint };
}

function isFloat(d: Dtype): boolean {
  return d.startsWith("F") || d === "BF16";
}
function isCodec(d: Dtype): d is FloatCodecDtype {
  return (FLOAT_CODEC_DTYPES as readonly string[]).includes(d);
}

function outBytes(k: { t: SourceTensor; dtype: Dtype }): number {
  const n = k.t.shape.reduce((a, b) => a * b, 1);
  return k.dtype === k.t.dtype ? k.t.end - k.t.begin : n * (k.dtype === "F32" ? 4 : 2);
}

/** Input grouping per source shard, or huggingface_hub's greedy split by output bytes. */
function groupIntoShards<K extends { t: SourceTensor; dtype: Dtype }>(kept: K[], max: number | undefined): K[][] {
  const groups: K[][] = [];
  if (max === undefined) {
    let last: string | undefined;
    for (const k of kept) {
      if (k.t.shard.file !== last) groups.push([]);
      last = k.t.shard.file;
      groups.at(-1)!.push(k);
    }
    return groups;
  }
  let size = 0;
  for (const k of kept) {
    const b = outBytes(k);
    // A tensor bigger than the limit gets a shard of its own (it cannot be split).
    if (groups.length === 0 || (size + b > max && size > 0)) {
      groups.push([]);
      size = 0;
    }
    groups.at(-1)!.push(k);
    size += b;
  }
  return groups;
}

function mainLayerCount(src: SourceCheckpoint): number {
  const c = src.config;
  const text = c && typeof c.text_config === "object" && c.text_config ? (c.text_config as Record<string, unknown>) : c;
  const n = text?.num_hidden_layers;
  if (typeof n !== "number" || !Number.isInteger(n) || n < 0) {
    throw usageError(`${src.dir}: --drop-mtp needs num_hidden_layers in config.json`, "MTP layers are the ones numbered from num_hidden_layers up; add the config or leave out --drop-mtp");
  }
  return n;
}

function checkBlockSize(src: SourceCheckpoint): void {
  const q = src.config?.quantization_config as { weight_block_size?: unknown } | undefined;
  const b = q?.weight_block_size;
  if (b !== undefined && !(Array.isArray(b) && b.length === 2 && b[0] === FP8_BLOCK && b[1] === FP8_BLOCK)) {
    throw integrityError("DSR_CONVERT_BLOCK_SIZE", `${src.dir}/config.json: quantization_config.weight_block_size is ${JSON.stringify(b)}; convert supports DeepSeek's [128, 128]`, {
      hint: "this is not a DeepSeek-V3/R1 FP8 checkpoint layout",
    });
  }
}

/** config.json for the output: no quantization_config, the new dtype, no MTP layer when dropped. */
function rewriteConfig(config: Record<string, unknown>, opts: ConvertOptions): Record<string, unknown> {
  const out: Record<string, unknown> = { ...config };
  delete out.quantization_config;
  out.torch_dtype = TORCH_DTYPE[opts.to];
  if ("dtype" in out) out.dtype = TORCH_DTYPE[opts.to];
  if (opts.dropMtp && "num_nextn_predict_layers" in out) out.num_nextn_predict_layers = 0;
  return out;
}
