/**
 * The torch engine: a TokenEngine served by the PyTorch worker process (native/dsr_worker) over a
 * Unix socket. This side reads and checks the checkpoint (config, tensor names and dtypes) and sends
 * the worker normalised numbers — the same config parsing and rotary frequencies as the ONNX builder —
 * so the Python side only moves tensors. The worker loads the weights on the GPU (or the CPU), sizes
 * its KV cache from --gpu-memory-utilization and batches continuously.
 */
import { join, resolve } from "node:path";
import { DsrError, usageError } from "../../errors.js";
import { readModelConfig } from "../../onnx/build.js";
import { checkSupported } from "../../onnx/decoder.js";
import { inverseFrequencies } from "../../onnx/rope.js";
import { checkpointWeights, shardFiles } from "../../onnx/weights.js";
import { loadTextModel, type TextModel } from "../../text/index.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import { validateRequest } from "../embedded/scheduler.js";
import { MessageEngine } from "../message-engine.js";
import { RemoteConstraints, WORKER_MASK_CACHE } from "../remote-constraints.js";
import type { EngineStats, SubmitRequest, TokenChunk, TokenEngine } from "../types.js";
import { startTorchWorker } from "./worker-process.js";

export interface TorchEngineOptions {
  python?: string;
  env?: NodeJS.ProcessEnv;
  /** auto (CUDA when PyTorch sees a GPU), cuda, cuda:N or cpu. */
  device?: string;
  /** auto (bf16 on GPUs that have it, else fp16; fp32 on CPU), bfloat16, float16, float32. */
  dtype?: string;
  maxBatch?: number;
  maxContext?: number;
  /** Fraction of the GPU's memory for weights + KV cache + activations. */
  memoryFraction?: number;
  prefillChunk?: number;
  /** Replay decode steps as CUDA graphs (default true; false = --enforce-eager). */
  cudaGraphs?: boolean;
  /** CPU threads (device cpu). */
  threads?: number;
  onLog?: (line: string) => void;
  /** First wait before restarting a worker that died (doubles up to 30 s). */
  restartBackoffMs?: number;
  /** Masks for response_format the worker keeps on the device (default WORKER_MASK_CACHE; small in tests, to exercise eviction). */
  maskCache?: number;
  /** The token → bytes table that response_format checks draws against (default: the tokenizer's; tests narrow it to reach a state no token continues). */
  tokenBytes?: TokenByteTable;
}

/** What the worker reports once loaded (its `opened` frame). */
export interface TorchEngineInfo {
  protocol: number;
  pid: number;
  vocab: number;
  maxBatch: number;
  maxContext: number;
  /** Prompt tokens per step beside decoding rows. */
  prefillChunk: number;
  kvBytesPerToken: number;
  device: string;
  dtype: string;
  cudaGraphs: boolean;
  weightBytes: number;
  torch: string;
  loadMs: number;
}

/** 2: `check`/`verdict` for response_format. */
export const TORCH_PROTOCOL = 2;
const FLOAT_DTYPES = new Set(["F32", "F16", "BF16"]);

/** Tensor names the worker reads, each required unless marked optional. */
function tensorNames(layers: number): { name: string; optional?: boolean }[] {
  const out: { name: string; optional?: boolean }[] = [{ name: "model.embed_tokens.weight" }, { name: "model.norm.weight" }, { name: "lm_head.weight", optional: true }];
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.`;
    for (const n of ["q", "k", "v", "o"]) out.push({ name: `${p}self_attn.${n}_proj.weight` });
    for (const n of ["q", "k", "v"]) out.push({ name: `${p}self_attn.${n}_proj.bias`, optional: true });
    for (const n of ["gate", "up", "down"]) out.push({ name: `${p}mlp.${n}_proj.weight` });
    out.push({ name: `${p}input_layernorm.weight` }, { name: `${p}post_attention_layernorm.weight` });
  }
  return out;
}

export async function openTorchEngine(modelPath: string, o: TorchEngineOptions = {}): Promise<{ engine: TorchEngine; text: TextModel; info: TorchEngineInfo }> {
  const dir = resolve(modelPath);
  const cfg = await readModelConfig(dir);
  checkSupported(cfg);
  if (cfg.quantizationConfig) {
    const method = String(cfg.quantizationConfig.quant_method ?? "quantized");
    throw new DsrError("DSR_ARCH_UNSUPPORTED", `${join(dir, "config.json")}: a ${method} checkpoint; the torch worker loads bf16, fp16 and fp32 weights`, {
      hint: method === "fp8" ? `convert it first: dsr convert ${modelPath} --to bf16` : "serve quantized checkpoints with --engine vllm",
    });
  }
  const src = await checkpointWeights(dir);
  try {
    for (const t of tensorNames(cfg.numLayers)) {
      const dt = src.dtype(t.name);
      if (dt === undefined) {
        if (t.optional) continue;
        throw new DsrError("DSR_TENSOR_MISSING", `${dir}: tensor "${t.name}" is missing`, { hint: "the checkpoint is incomplete or not a qwen2/llama model" });
      }
      if (!FLOAT_DTYPES.has(dt)) throw new DsrError("DSR_DTYPE_UNSUPPORTED", `${dir}: tensor "${t.name}" is ${dt}; the torch worker loads F32, F16 and BF16`, { hint: `convert it first: dsr convert ${modelPath} --to bf16` });
    }
  } finally {
    await src.close();
  }
  const positions = cfg.maxPositionEmbeddings || 4096;
  const maxContext = Math.min(o.maxContext ?? Math.min(4096, positions), positions);
  if (!(maxContext >= 2)) throw usageError(`max context ${o.maxContext}: must be at least 2`);
  const text = await loadTextModel(dir);
  const table = o.tokenBytes ?? text.tokenBytes(); // for response_format (remote-constraints.ts); undefined for a tokenizer that is not byte-level BPE
  const open = {
    protocol: TORCH_PROTOCOL,
    files: (await shardFiles(dir)).map((f) => join(dir, f)),
    arch: {
      layers: cfg.numLayers,
      hidden: cfg.hiddenSize,
      heads: cfg.numHeads,
      kvHeads: cfg.numKvHeads,
      headDim: cfg.headDim,
      intermediate: cfg.intermediateSize,
      vocab: cfg.vocabSize,
      eps: cfg.rmsNormEps,
      invFreq: [...inverseFrequencies(cfg)],
      tieEmbeddings: cfg.tieWordEmbeddings,
    },
    device: o.device ?? "auto",
    dtype: o.dtype ?? "auto",
    maxBatch: o.maxBatch ?? 64,
    maxContext,
    memoryFraction: o.memoryFraction ?? 0.9,
    prefillChunk: o.prefillChunk ?? 2048, // vLLM's API-server default; bench figures in docs/BENCHMARKS.md (session 10)
    cudaGraphs: o.cudaGraphs ?? true,
    threads: o.threads,
    maskCache: o.maskCache ?? WORKER_MASK_CACHE,
  };
  const log = o.onLog ?? (() => {});
  const start = async (onGone: (e: DsrError) => void) => {
    const port = await startTorchWorker({ python: o.python ?? "python3", env: o.env ?? process.env, onLog: log });
    const engine: MessageEngine<EngineStats> = await MessageEngine.open<EngineStats>(port, open, {
      name: "torch worker",
      constraints: table && new RemoteConstraints(table, cfg.vocabSize, open.maskCache),
      onGone,
      validate: (req, vocab) => validateRequest(req, engine.opened.maxContext as number, vocab, table !== undefined),
      initialStats: (m) => ({ running: 0, waiting: 0, kvUsedTokens: 0, kvCapacityTokens: (m.maxBatch as number) * (m.maxContext as number), maxContext: m.maxContext as number }),
    });
    const info = engine.opened as unknown as TorchEngineInfo;
    if (info.protocol !== TORCH_PROTOCOL) {
      await engine.close();
      throw new DsrError("DSR_WORKER_PROTOCOL", `the torch worker speaks protocol ${info.protocol}, this dsr ${TORCH_PROTOCOL}`, { hint: "reinstall dsr so native/ matches" });
    }
    return engine;
  };
  const engine = await TorchEngine.start(start, log, o.restartBackoffMs ?? 1000);
  return { engine, text, info: engine.info };
}

/**
 * The torch worker behind TokenEngine, restarted when it dies: its open streams fail with the reason,
 * the engine reports not ready (/ready 503, so a front router sends traffic elsewhere) and submits
 * throw DSR_ENGINE_UNAVAILABLE (503) until a new worker is up; retries back off from 1 s to 30 s.
 */
export class TorchEngine implements TokenEngine {
  restarts = 0;
  private down?: DsrError;
  private closed = false;
  private timer?: NodeJS.Timeout;
  private backoff: number;

  private constructor(
    private current: MessageEngine<EngineStats>,
    private readonly open: (onGone: (e: DsrError) => void) => Promise<MessageEngine<EngineStats>>,
    private readonly log: (line: string) => void,
    private readonly backoffInitialMs: number,
  ) {
    this.backoff = backoffInitialMs;
  }

  static async start(open: (onGone: (e: DsrError) => void) => Promise<MessageEngine<EngineStats>>, log: (line: string) => void, backoffInitialMs: number): Promise<TorchEngine> {
    let self: TorchEngine | undefined;
    const first = await open((e) => self?.gone(e));
    self = new TorchEngine(first, open, log, backoffInitialMs);
    return self;
  }

  get info(): TorchEngineInfo {
    return this.current.opened as unknown as TorchEngineInfo;
  }

  get counters() {
    return this.current.counters;
  }

  ready(): boolean {
    return !this.down && !this.closed;
  }

  private gone(e: DsrError): void {
    if (this.closed) return;
    this.down = e;
    this.log(`${e.message}; restarting it in ${this.backoff / 1000} s`);
    this.timer = setTimeout(() => void this.restart(), this.backoff);
  }

  private async restart(): Promise<void> {
    try {
      const next = await this.open((e) => this.gone(e));
      if (this.closed) return void (await next.close());
      this.current = next;
      this.down = undefined;
      this.restarts++;
      this.backoff = this.backoffInitialMs;
      this.log(`torch worker restarted (pid ${this.info.pid})`);
    } catch (e) {
      this.backoff = Math.min(this.backoff * 2, 30_000);
      this.gone(e instanceof DsrError ? e : new DsrError("DSR_ENGINE_FAILED", String(e)));
    }
  }

  submit(req: SubmitRequest): AsyncIterable<TokenChunk> {
    if (this.down && !this.closed) {
      throw new DsrError("DSR_ENGINE_UNAVAILABLE", `the torch worker is restarting (${this.down.message})`, { hint: "retry in a few seconds" });
    }
    return this.current.submit(req);
  }

  stats(): EngineStats {
    return this.current.stats();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.current.close();
  }
}
