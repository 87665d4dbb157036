/**
 * `safetensors checkpoint → dsr ONNX directory`: model.onnx + model.onnx.data, the tokenizer, chat
 * template, config and generation config, and dsr-onnx.json (the manifest naming the source and its
 * fingerprint, so a stale conversion is detected). Built into `<out>.partial/` and renamed into place
 * when complete: an interrupted build never looks finished.
 */
import { copyFile, mkdir, readdir, readFile, rename, rm, stat, open } from "node:fs/promises";
import { join } from "node:path";
import { parseModelConfig, type ModelConfig } from "../arch/config.js";
import { DsrError, interruptedError, usageError } from "../errors.js";
import { ExternalDataWriter } from "./data-file.js";
import { buildDecoderGraph, checkSupported, decoderIo, type DecoderIo } from "./decoder.js";
import type { EmitContext, WeightFormat } from "./layers.js";
import { encodeModel } from "./model.js";
import { checkpointWeights, type WeightSource } from "./weights.js";

export const MANIFEST_FILE = "dsr-onnx.json";
// 3: attention from MatMuls over the cache read in place; new.N.{key,value} outputs (onnx/attention.ts says why).
export const MANIFEST_VERSION = 3;
export const MODEL_FILE = "model.onnx";
export const DATA_FILE = "model.onnx.data";
/** Files copied next to the graph so the directory is a complete model for the engine. */
const TEXT_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json"];

export interface OnnxManifest {
  format: "dsr-onnx";
  version: number;
  source: { path: string; fingerprint: string };
  weights: WeightFormat;
  blockSize?: number;
  accuracyLevel?: number;
  modelType: string;
  io: DecoderIo;
  dataBytes: number;
  createdAt: string;
}

export interface BuildOptions {
  weights: WeightFormat;
  blockSize?: number;
  /** Rotary cache length; default the model's max_position_embeddings. */
  maxPositions?: number;
  signal?: AbortSignal;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
}

export const BLOCK_SIZES = [32, 64, 128];

export function validateBuildOptions(o: BuildOptions): void {
  if (!["fp32", "fp16", "int8", "int4"].includes(o.weights)) throw usageError(`--weights ${o.weights}: expected fp32, fp16, int8 or int4`);
  if (o.blockSize !== undefined && !BLOCK_SIZES.includes(o.blockSize)) throw usageError(`--block-size ${o.blockSize}: expected 32, 64 or 128`);
}

export async function readManifest(dir: string): Promise<OnnxManifest | undefined> {
  try {
    const m = JSON.parse(await readFile(join(dir, MANIFEST_FILE), "utf8")) as OnnxManifest;
    return m.format === "dsr-onnx" ? m : undefined;
  } catch {
    return undefined;
  }
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(() => true, () => false);
}

/** Builds from a weight source + config; the lowest-level entry (benchmarks pass synthetic weights). */
export async function buildOnnxFromSource(cfg: ModelConfig, src: WeightSource, textDir: string | undefined, outDir: string, opts: BuildOptions): Promise<OnnxManifest> {
  validateBuildOptions(opts);
  checkSupported(cfg);
  // Unique per build: two processes converting the same checkpoint into one cache do not collide.
  const partial = `${outDir}.partial-${process.pid}-${Date.now().toString(36)}`;
  await rm(partial, { recursive: true, force: true });
  await mkdir(partial, { recursive: true });
  const maxPositions = opts.maxPositions ?? (cfg.maxPositionEmbeddings || 4096);
  const total = totalElements(cfg, src);
  let done = 0;
  const data = new ExternalDataWriter(join(partial, DATA_FILE), DATA_FILE);
  await data.open();
  const quantized = opts.weights === "int4" || opts.weights === "int8";
  const ctx: EmitContext = {
    src,
    data,
    nodes: [],
    initializers: [],
    format: opts.weights,
    blockSize: opts.blockSize ?? 32,
    accuracyLevel: 4,
    onWeights: (n) => {
      if (opts.signal?.aborted) throw interruptedError("ONNX conversion");
      done += n;
      opts.onProgress?.({ phase: "convert", done, total });
    },
  };
  try {
    const graph = await buildDecoderGraph(cfg, ctx, maxPositions);
    await data.close();
    const manifest: OnnxManifest = {
      format: "dsr-onnx",
      version: MANIFEST_VERSION,
      source: { path: src.description, fingerprint: src.fingerprint },
      weights: opts.weights,
      ...(quantized ? { blockSize: ctx.blockSize, accuracyLevel: ctx.accuracyLevel } : {}),
      modelType: cfg.modelType,
      io: decoderIo(cfg, maxPositions),
      dataBytes: data.size,
      createdAt: new Date().toISOString(),
    };
    const bytes = encodeModel({
      graph,
      opsets: [{ domain: "", version: 21 }, { domain: "com.microsoft", version: 1 }],
      irVersion: 10,
      producerName: "dsr",
      metadata: { "dsr.source_fingerprint": src.fingerprint, "dsr.weights": opts.weights },
    });
    await writeSynced(join(partial, MODEL_FILE), bytes);
    if (textDir) for (const f of TEXT_FILES) if (await exists(join(textDir, f))) await copyFile(join(textDir, f), join(partial, f));
    if (!(await exists(join(partial, "config.json")))) await writeSynced(join(partial, "config.json"), new TextEncoder().encode(JSON.stringify(cfg.raw, null, 2)));
    await writeSynced(join(partial, MANIFEST_FILE), new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n"));
    const raced = await readManifest(outDir);
    if (raced && raced.source.fingerprint === manifest.source.fingerprint && raced.weights === manifest.weights && raced.blockSize === manifest.blockSize) {
      await rm(partial, { recursive: true, force: true }); // another process finished the same build first
      return raced;
    }
    await rm(outDir, { recursive: true, force: true });
    await rename(partial, outDir);
    return manifest;
  } catch (e) {
    await data.close().catch(() => {});
    await rm(partial, { recursive: true, force: true });
    throw e;
  }
}

async function writeSynced(path: string, bytes: Uint8Array): Promise<void> {
  const fh = await open(path, "w");
  try {
    await fh.writeFile(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

function totalElements(cfg: ModelConfig, src: WeightSource): number {
  const names = ["model.embed_tokens.weight", "model.norm.weight", cfg.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    for (const s of ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]) names.push(`${p}.${s}.weight`);
    for (const s of ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "input_layernorm.weight", "post_attention_layernorm.weight"]) names.push(`${p}.${s}`);
  }
  return names.reduce((a, n) => {
    const s = src.shape(n);
    return s ? a + s.reduce((x, y) => x * y, 1) : a;
  }, 0);
}

export async function readModelConfig(dir: string): Promise<ModelConfig> {
  const file = join(dir, "config.json");
  let raw: unknown;
  try {
    raw = JSON.parse(await readFile(file, "utf8"));
  } catch (e) {
    throw new DsrError("DSR_CONFIG_MISSING", `${file}: cannot read (${(e as Error).message})`, { hint: "point at a model directory with config.json" });
  }
  return parseModelConfig(raw, file);
}

export interface OnnxPlan {
  modelType: string;
  layers: number;
  weights: WeightFormat;
  blockSize?: number;
  sourceElements: number;
  /** Bytes model.onnx.data will hold (weights, scales, zero points, rotary caches; alignment aside). */
  estimatedDataBytes: number;
  /** --out already holds this exact conversion. */
  upToDate: boolean;
}

/** What `convert --to onnx` would build, without writing anything (`--dry-run`). */
export async function planOnnx(srcDir: string, outDir: string, opts: BuildOptions): Promise<OnnxPlan> {
  validateBuildOptions(opts);
  const cfg = await readModelConfig(srcDir);
  checkSupported(cfg);
  const src = await checkpointWeights(srcDir);
  try {
    const quant = opts.weights === "int4" || opts.weights === "int8";
    const blockSize = quant ? (opts.blockSize ?? 32) : undefined;
    const bits = opts.weights === "int4" ? 4 : opts.weights === "int8" ? 8 : opts.weights === "fp16" ? 16 : 32;
    const embedName = "model.embed_tokens.weight";
    const [V, H] = src.shape(embedName) ?? [cfg.vocabSize, cfg.hiddenSize];
    const embedBytes = V! * H! * (opts.weights === "fp32" ? 4 : 2);
    const total = totalElements(cfg, src);
    let matrixBytes = 0;
    let vectorBytes = 0;
    const names = [cfg.tieWordEmbeddings || !src.shape("lm_head.weight") ? embedName : "lm_head.weight", "model.norm.weight"];
    for (let i = 0; i < cfg.numLayers; i++) for (const n of ["q_proj", "k_proj", "v_proj", "o_proj"]) names.push(`model.layers.${i}.self_attn.${n}.weight`, `model.layers.${i}.self_attn.${n}.bias`);
    for (let i = 0; i < cfg.numLayers; i++) for (const n of ["gate_proj", "up_proj", "down_proj"]) names.push(`model.layers.${i}.mlp.${n}.weight`);
    for (let i = 0; i < cfg.numLayers; i++) names.push(`model.layers.${i}.input_layernorm.weight`, `model.layers.${i}.post_attention_layernorm.weight`);
    for (const n of names) {
      const s = src.shape(n);
      if (!s) continue;
      if (s.length < 2) {
        vectorBytes += s[0]! * 4;
        continue;
      }
      const [N, K] = s as [number, number];
      if (blockSize) {
        const kb = Math.ceil(K / blockSize);
        matrixBytes += N * kb * ((blockSize * bits) / 8) + N * kb * 4 + N * Math.ceil((kb * bits) / 8);
      } else matrixBytes += (N * K * bits) / 8;
    }
    const maxPositions = opts.maxPositions ?? (cfg.maxPositionEmbeddings || 4096);
    const ropeBytes = 2 * maxPositions * (cfg.headDim / 2) * 4;
    const existing = await readManifest(outDir);
    return {
      modelType: cfg.modelType,
      layers: cfg.numLayers,
      weights: opts.weights,
      blockSize,
      sourceElements: total,
      estimatedDataBytes: embedBytes + matrixBytes + vectorBytes + ropeBytes,
      upToDate: !!existing && existing.source.fingerprint === src.fingerprint && existing.weights === opts.weights && existing.blockSize === blockSize,
    };
  } finally {
    await src.close();
  }
}

export interface ConvertToOnnxResult {
  manifest: OnnxManifest;
  /** False when --out already held this exact conversion (same source fingerprint and options). */
  built: boolean;
}

/**
 * `dsr convert SRC --to onnx`: a local safetensors checkpoint directory → ONNX directory. An --out
 * that already holds the same conversion is left alone; any other non-empty --out needs `overwrite`.
 */
export async function convertToOnnx(srcDir: string, outDir: string, opts: BuildOptions & { overwrite?: boolean }): Promise<ConvertToOnnxResult> {
  validateBuildOptions(opts);
  const cfg = await readModelConfig(srcDir);
  checkSupported(cfg);
  const src = await checkpointWeights(srcDir);
  try {
    const existing = await readManifest(outDir);
    const blockSize = opts.weights === "int4" || opts.weights === "int8" ? (opts.blockSize ?? 32) : undefined;
    if (existing && existing.version === MANIFEST_VERSION && existing.source.fingerprint === src.fingerprint && existing.weights === opts.weights && existing.blockSize === blockSize) {
      return { manifest: existing, built: false };
    }
    const entries = await readdir(outDir).catch(() => [] as string[]);
    if (entries.length > 0 && !opts.overwrite) {
      throw usageError(`--out ${outDir}: folder is not empty${existing ? " (it holds a different ONNX conversion)" : ""}`, "choose a new folder, or pass --overwrite to replace it");
    }
    return { manifest: await buildOnnxFromSource(cfg, src, srcDir, outDir, opts), built: true };
  } finally {
    await src.close();
  }
}

