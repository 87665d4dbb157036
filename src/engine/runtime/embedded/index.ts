/**
 * The embedded engine: in-process onnxruntime-node over a dsr ONNX decoder, behind the TokenEngine
 * interface, with the model's TextModel. `modelPath` is either a dsr ONNX directory (dsr-onnx.json)
 * or a safetensors checkpoint, which is converted on first use into `cacheDir` and reused while its
 * manifest still matches the checkpoint's fingerprint.
 */
import { availableParallelism, homedir } from "node:os";
import { join, resolve } from "node:path";
import { stat } from "node:fs/promises";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import { DsrError, usageError } from "../../errors.js";
import { buildOnnxFromSource, MANIFEST_VERSION, readManifest, readModelConfig, type OnnxManifest } from "../../onnx/build.js";
import type { WeightFormat } from "../../onnx/layers.js";
import { checkpointWeights } from "../../onnx/weights.js";
import { loadTextModel, type TextModel } from "../../text/index.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import { DecoderSession } from "./decoder-session.js";
import { Scheduler, type EmbeddedStats } from "./scheduler.js";
import { openWorkerEngine } from "./worker-engine.js";
import type { EngineCounters } from "../engine-protocol.js";
import type { TokenEngine } from "../types.js";

export interface EmbeddedEngineOptions {
  threads?: number;
  maxBatch?: number;
  maxContext?: number;
  kvBudgetTokens?: number;
  weights?: WeightFormat;
  /** MatMulNBits block size when a checkpoint is converted to int4/int8 (32, 64, 128). */
  blockSize?: number;
  /** Prompt tokens per prefill step while others decode (default 64). */
  prefillChunk?: number;
  signal?: AbortSignal;
  onProgress?: (p: { phase: string; done: number; total: number }) => void;
  cacheDir?: string;
  /**
   * Run the session and scheduler in a worker thread (keeps the event loop free during steps).
   * Default: when the bundled worker (dist/embedded-worker.mjs) sits next to the running bundle;
   * from source (tests, tsx) the engine runs in the calling thread.
   */
  worker?: boolean;
  /** The token → bytes table that response_format checks draws against (default: the tokenizer's; tests narrow it to reach a state no token continues). */
  tokenBytes?: TokenByteTable;
}

/** What openEmbeddedEngine returns: a TokenEngine with KV stats and step counters. */
export interface EmbeddedEngine extends TokenEngine {
  stats(): EmbeddedStats;
  readonly counters: EngineCounters;
}

export interface EmbeddedEngineInfo {
  modelDir: string;
  onnxDir: string;
  weights: string;
  maxContext: number;
  maxBatch: number;
  threads: number;
  /** True when this call converted the checkpoint (false: an existing conversion was reused). */
  converted: boolean;
  /** True when the engine runs in a worker thread. */
  inWorker: boolean;
}

/** The bundled worker entry next to the CLI bundle; absent when running from source. */
function bundledWorker(): URL | undefined {
  const url = new URL("./embedded-worker.mjs", import.meta.url);
  return url.protocol === "file:" && existsSync(fileURLToPath(url)) ? url : undefined;
}

/** $XDG_CACHE_HOME/dsr/onnx, else ~/.cache/dsr/onnx (commands pass their env value in). */
export function defaultOnnxCacheDir(xdgCacheHome?: string): string {
  return join(xdgCacheHome || join(homedir(), ".cache"), "dsr", "onnx");
}

const isFile = (p: string) => stat(p).then((s) => s.isFile(), () => false);

/** Checkpoints up to this many parameters convert to fp32 by default (exact); larger ones to int4. */
const FP32_DEFAULT_MAX_PARAMS = 200e6;

async function resolveOnnxDir(modelPath: string, opts: EmbeddedEngineOptions): Promise<{ onnxDir: string; manifest: OnnxManifest; converted: boolean }> {
  const dir = resolve(modelPath);
  const existing = await readManifest(dir);
  if (existing) {
    if (existing.version !== MANIFEST_VERSION) {
      throw new DsrError("DSR_ONNX_STALE", `${dir}: built by another dsr version (manifest v${existing.version}, expected v${MANIFEST_VERSION})`, {
        hint: `rebuild it: dsr convert ${existing.source.path} --to onnx --out ${dir}`,
      });
    }
    // If the source checkpoint is still around, make sure the conversion is of its current weights.
    if (await isFile(join(existing.source.path, "config.json"))) {
      const src = await checkpointWeights(existing.source.path).catch(() => undefined);
      await src?.close();
      if (src && src.fingerprint !== existing.source.fingerprint) {
        throw new DsrError("DSR_ONNX_STALE", `${dir}: the source checkpoint ${existing.source.path} changed since this conversion`, {
          hint: `rebuild it: dsr convert ${existing.source.path} --to onnx --out ${dir}`,
        });
      }
    }
    return { onnxDir: dir, manifest: existing, converted: false };
  }
  if (!(await isFile(join(dir, "config.json")))) {
    throw usageError(`${modelPath}: not a model directory (no config.json or dsr-onnx.json)`, "pass a safetensors checkpoint directory or the output of `dsr convert --to onnx`");
  }
  const cfg = await readModelConfig(dir);
  const src = await checkpointWeights(dir);
  try {
    const params = approxParams(cfg);
    const weights: WeightFormat = opts.weights ?? (params <= FP32_DEFAULT_MAX_PARAMS ? "fp32" : "int4");
    const quant = weights === "int4" || weights === "int8";
    const blockSize = quant ? (opts.blockSize ?? 32) : undefined;
    const key = createHash("sha256").update(`${src.fingerprint}|${weights}|${blockSize ?? ""}|${MANIFEST_VERSION}`).digest("hex").slice(0, 20);
    const onnxDir = join(opts.cacheDir ?? defaultOnnxCacheDir(), key);
    const cached = await readManifest(onnxDir);
    if (cached && cached.version === MANIFEST_VERSION && cached.source.fingerprint === src.fingerprint && cached.weights === weights) {
      return { onnxDir, manifest: cached, converted: false };
    }
    const manifest = await buildOnnxFromSource(cfg, src, dir, onnxDir, { weights, blockSize, signal: opts.signal, onProgress: opts.onProgress });
    return { onnxDir, manifest, converted: true };
  } finally {
    await src.close();
  }
}

function approxParams(cfg: { hiddenSize: number; numLayers: number; intermediateSize: number; vocabSize: number; numHeads: number; numKvHeads: number; headDim: number }): number {
  const attn = cfg.hiddenSize * cfg.headDim * (2 * cfg.numHeads + 2 * cfg.numKvHeads);
  const mlp = 3 * cfg.hiddenSize * cfg.intermediateSize;
  return cfg.numLayers * (attn + mlp) + 2 * cfg.vocabSize * cfg.hiddenSize;
}

export async function openEmbeddedEngine(
  modelPath: string,
  opts: EmbeddedEngineOptions = {},
): Promise<{ engine: EmbeddedEngine; text: TextModel; info: EmbeddedEngineInfo }> {
  const { onnxDir, manifest, converted } = await resolveOnnxDir(modelPath, opts);
  const text = await loadTextModel(onnxDir);
  const maxContext = Math.min(opts.maxContext ?? Math.min(4096, manifest.io.maxPositions), manifest.io.maxPositions);
  if (!(maxContext >= 2)) throw usageError(`maxContext ${opts.maxContext}: must be at least 2`);
  let maxBatch = opts.maxBatch ?? 16;
  if (opts.kvBudgetTokens !== undefined) maxBatch = Math.min(maxBatch, Math.floor(opts.kvBudgetTokens / maxContext));
  if (!(maxBatch >= 1)) {
    throw usageError(`KV budget of ${opts.kvBudgetTokens} tokens cannot hold one sequence of ${maxContext} tokens`, "raise the KV budget or lower the max context");
  }
  const threads = opts.threads ?? availableParallelism();
  const sessionOpts = { threads, maxBatch, maxContext };
  const prefillChunk = opts.prefillChunk ?? 64;
  const schedOpts = { maxBatch, maxContext, prefillChunk, prefillChunkIdle: Math.max(512, prefillChunk) };
  const workerUrl = opts.worker === false ? undefined : bundledWorker();
  if (opts.worker === true && !workerUrl) throw new DsrError("DSR_NO_WORKER", "the embedded engine worker is not built", { hint: "run `npm run build`" });
  // Built here, once: the engine (maybe a worker without the tokenizer) checks constrained output against it.
  const tokenBytes = opts.tokenBytes ?? text.tokenBytes();
  const engine: EmbeddedEngine = workerUrl
    ? await openWorkerEngine(workerUrl, onnxDir, manifest, sessionOpts, schedOpts, tokenBytes)
    : new Scheduler(await DecoderSession.open(onnxDir, manifest, sessionOpts), schedOpts, tokenBytes);
  return {
    engine,
    text,
    info: { modelDir: resolve(modelPath), onnxDir, weights: manifest.weights, maxContext, maxBatch, threads, converted, inWorker: !!workerUrl },
  };
}
