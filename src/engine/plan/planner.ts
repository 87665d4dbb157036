/**
 * The memory planner: will this checkpoint serve on these GPUs under vLLM, with how much KV cache?
 *
 * Per GPU (the busiest rank), following vLLM V1's profiling (gpu_worker.determine_available_memory):
 *   budget     = memory × gpu_memory_utilization
 *   kv_bytes   = budget − weights − activation_peak − cuda_graphs − non_torch
 *   kv_tokens  = ⌊kv_bytes / (kv_bytes_per_token × block)⌋ × block
 *   max_concurrency = kv_tokens / max_model_len
 * vLLM refuses to start when kv_tokens < max_model_len. The three overheads are estimates (vLLM
 * measures them with a profiling forward pass); docs/inspect.md gives the formulas and why.
 */
import type { ModelConfig } from "../arch/config.js";
import { kvBytesPerToken, type TensorLike } from "../arch/params.js";
import { configDtype, type ArchDef } from "../arch/types.js";
import { deepseekFields } from "../arch/deepseek-v3.js";
import { usageError } from "../errors.js";
import { DTYPE_BITS } from "../tensors/dtypes.js";
import { ccAtLeast, vllmBatchDefaults, type GpuProfile } from "./gpus.js";
import { rankWeightsFromTable, weightTable, type WeightTable, type WeightVariant } from "./weights.js";

const GiB = 2 ** 30;

export interface PlanModel {
  arch: ArchDef;
  cfg: ModelConfig;
  tensors: readonly TensorLike[];
  /** Quantisation already in the checkpoint ("none", "fp8-block", "awq"…). */
  quantMethod: string;
}

export interface PlanOptions {
  gpu: GpuProfile;
  gpus?: number;
  tp?: number;
  pp?: number;
  /** --gpu-memory-utilization, default 0.9 (vLLM's long-standing default). */
  util?: number;
  maxModelLen?: number;
  concurrency?: number;
  /** "auto" (model dtype) | "fp8" | "fp8_e4m3" | "fp8_e5m2" | "bfloat16" | "float16". */
  kvCacheDtype?: string;
}

export type Verdict = "fits" | "fits-reduced" | "does-not-fit";

export interface PlanPoint {
  gpus: number;
  tp: number;
  pp: number;
  weights: WeightVariant;
  kvCacheDtype: string;
  perGpu: { memoryBytes: number; budgetBytes: number; weightsBytes: number; activationBytes: number; cudaGraphBytes: number; nonTorchBytes: number; kvCacheBytes: number };
  kvBytesPerToken: number;
  kvTokens: number;
  maxModelLen: number;
  /** Sequences of max_model_len tokens the KV cache holds at once. */
  maxConcurrency: number;
  verdict: Verdict;
  reasons: string[];
}

export interface MemoryPlan extends PlanPoint {
  gpu: { id: string; name: string; memoryGiB: number };
  util: number;
  concurrency: number;
  /** The smallest configurations that fit max_model_len × concurrency: more GPUs, then re-quantised. */
  suggestions: (PlanPoint & { change: string })[];
  notes: string[];
}

const KV_DTYPES: Record<string, number> = { fp8: 1, fp8_e4m3: 1, fp8_e5m2: 1, fp8_ds_mla: 1, bfloat16: 2, float16: 2, half: 2 };

/** Throws a usage error for a --kv-cache-dtype vLLM would not take (callers check before slow work). */
export function checkKvCacheDtype(kv: string): void {
  if (kv !== "auto" && KV_DTYPES[kv] === undefined) throw usageError(`unknown --kv-cache-dtype "${kv}"`, `one of: auto, ${Object.keys(KV_DTYPES).join(", ")}`);
}

function kvElementBytes(model: PlanModel, kv: string): number {
  checkKvCacheDtype(kv);
  return kv === "auto" ? DTYPE_BITS[configDtype(model.cfg)] / 8 : KV_DTYPES[kv];
}

/** Profile-run peak: one batch of max_num_batched_tokens through a layer, plus the sampler's fp32 logits. */
function activationBytes(model: PlanModel, gpu: GpuProfile, tp: number): number {
  const { cfg, arch } = model;
  const { maxNumSeqs, maxNumBatchedTokens: T } = vllmBatchDefaults(gpu);
  const act = DTYPE_BITS[configDtype(cfg)] / 8;
  const h = cfg.hiddenSize;
  let mlp = (2 * cfg.intermediateSize) / tp;
  if (arch.id === "deepseek_v3") {
    const f = deepseekFields(cfg);
    if (f.nRoutedExperts > 0) mlp = Math.max(mlp, (2 * f.expertsPerToken * 2 * f.moeIntermediateSize) / tp);
  }
  const attn = (cfg.numHeads * cfg.headDim * 3) / tp;
  return T * act * (4 * h + mlp + attn) + maxNumSeqs * cfg.vocabSize * 4 * 2;
}

function evaluate(model: PlanModel, table: WeightTable, gpu: GpuProfile, tp: number, pp: number, util: number, maxModelLen: number, concurrency: number, kv: string, variant: WeightVariant): PlanPoint {
  const { arch, cfg } = model;
  const memoryBytes = gpu.memoryGiB * GiB;
  const budgetBytes = memoryBytes * util;
  const weightsBytes = rankWeightsFromTable(table, cfg, tp, pp, variant).maxBytes;
  const activation = activationBytes(model, gpu, tp);
  const layersHere = Math.ceil(cfg.numLayers / pp);
  const cudaGraphBytes = (0.5 + 0.015 * layersHere) * GiB;
  const nonTorchBytes = (tp > 1 ? 0.75 : 0.25) * GiB;
  const kvCacheBytes = budgetBytes - weightsBytes - activation - cudaGraphBytes - nonTorchBytes;
  const perToken = kvBytesPerToken(arch, cfg, kvElementBytes(model, kv), tp, pp);
  const block = arch.id === "deepseek_v3" ? 64 : 16; // MLA kernels use 64-token blocks
  const kvTokens = kvCacheBytes > 0 ? Math.floor(kvCacheBytes / (perToken * block)) * block : 0;
  const maxConcurrency = kvTokens / maxModelLen;
  const reasons: string[] = [];
  let verdict: Verdict = "fits";
  const g = (b: number) => `${(b / GiB).toFixed(1)} GiB`;
  if (kvCacheBytes <= 0) {
    verdict = "does-not-fit";
    reasons.push(`weights ${g(weightsBytes)} + overhead ${g(activation + cudaGraphBytes + nonTorchBytes)} per GPU exceed ${g(budgetBytes)} (${util} × ${gpu.memoryGiB} GiB)`);
  } else if (kvTokens < Math.min(maxModelLen, 2048)) {
    verdict = "does-not-fit";
    reasons.push(`only ${g(kvCacheBytes)} left for KV cache: ${kvTokens} tokens, not a useful context`);
  } else if (kvTokens < maxModelLen) {
    verdict = "fits-reduced";
    reasons.push(`KV cache holds ${kvTokens} tokens < max_model_len ${maxModelLen}: vLLM refuses to start; use --max-model-len ${Math.floor(kvTokens / 1024) * 1024} or less`);
  } else if (maxConcurrency < concurrency) {
    verdict = "fits-reduced";
    reasons.push(`KV cache holds ${maxConcurrency.toFixed(2)} sequences of ${maxModelLen} tokens, fewer than --concurrency ${concurrency}`);
  }
  return {
    gpus: tp * pp,
    tp,
    pp,
    weights: variant,
    kvCacheDtype: kv,
    perGpu: { memoryBytes, budgetBytes, weightsBytes, activationBytes: activation, cudaGraphBytes, nonTorchBytes, kvCacheBytes: Math.max(0, kvCacheBytes) },
    kvBytesPerToken: perToken,
    kvTokens,
    maxModelLen,
    maxConcurrency,
    verdict,
    reasons,
  };
}

/** vLLM requires heads % tp == 0; with tp > kv_heads it replicates KV heads, needing tp % kv_heads == 0. */
function validTp(cfg: ModelConfig, tp: number): boolean {
  if (cfg.numHeads % tp !== 0) return false;
  return tp <= cfg.numKvHeads ? cfg.numKvHeads % tp === 0 : tp % cfg.numKvHeads === 0;
}

/** GPU counts tried when searching: one node of up to 8 (TP), then 2-4 nodes of 8 (TP 8 × PP). */
function layouts(cfg: ModelConfig): { tp: number; pp: number }[] {
  const out: { tp: number; pp: number }[] = [];
  for (const n of [1, 2, 4, 8]) {
    const tp = [n, n / 2, n / 4, n / 8].find((t) => Number.isInteger(t) && t >= 1 && validTp(cfg, t));
    if (tp) out.push({ tp, pp: n / tp });
  }
  const tp8 = [8, 4, 2, 1].find((t) => validTp(cfg, t))!;
  for (const nodes of [2, 3, 4]) out.push({ tp: tp8, pp: (8 * nodes) / tp8 });
  return out;
}

export function planMemory(model: PlanModel, opts: PlanOptions): MemoryPlan {
  const { cfg } = model;
  const util = opts.util ?? 0.9;
  if (!(util > 0 && util <= 1)) throw usageError(`--gpu-memory-utilization ${util} is not in (0, 1]`, "vLLM's default is 0.9");
  const kv = opts.kvCacheDtype ?? "auto";
  kvElementBytes(model, kv);
  const maxModelLen = opts.maxModelLen ?? (cfg.maxPositionEmbeddings || 4096);
  const concurrency = opts.concurrency ?? 1;
  for (const [flag, v] of [["--max-model-len", maxModelLen], ["--concurrency", concurrency], ["--tp", opts.tp], ["--pp", opts.pp], ["--gpus", opts.gpus]] as const) {
    if (v !== undefined && !(Number.isInteger(v) && v > 0)) throw usageError(`${flag} ${v} must be a positive integer`);
  }
  let tp = opts.tp;
  let pp = opts.pp ?? 1;
  const gpus = opts.gpus ?? (tp ?? 1) * pp;
  if (tp === undefined) tp = gpus / pp;
  if (!Number.isInteger(tp) || tp * pp !== gpus) throw usageError(`--gpus ${gpus} does not equal --tp ${tp} × --pp ${pp}`, "give --gpus, or --tp and --pp whose product is the GPU count");
  if (!validTp(cfg, tp)) {
    throw usageError(`--tp ${tp} does not divide the model's ${cfg.numHeads} attention heads / ${cfg.numKvHeads} KV heads`, `use a TP size that divides ${cfg.numHeads}, and add --pp for more GPUs`);
  }
  const table = weightTable(model.arch, cfg, model.tensors);
  const base = evaluate(model, table, opts.gpu, tp, pp, util, maxModelLen, concurrency, kv, "as-is");
  const notes: string[] = [];
  const speculative = table.speculative[0];
  if (speculative > 0) notes.push(`MTP layers (${speculative >= GiB ? (speculative / GiB).toFixed(1) + " GiB" : (speculative / 2 ** 20).toFixed(1) + " MiB"}) are not counted: vLLM loads them only with speculative decoding`);
  const q = model.quantMethod;
  if (q.startsWith("fp8") && !opts.gpu.fp8) {
    notes.push(ccAtLeast(opts.gpu, 8.0) ? `${opts.gpu.name} has no FP8 tensor cores: vLLM runs FP8 weights weight-only (Marlin), same memory, slower` : `${opts.gpu.name} cannot run FP8 checkpoints in vLLM (needs compute capability ≥ 8.0); convert to BF16 or AWQ`);
  }
  if (!opts.gpu.bf16 && configDtype(cfg) === "BF16") notes.push(`${opts.gpu.name} has no bfloat16: vLLM runs the model in float16 (same memory)`);

  const suggestions: MemoryPlan["suggestions"] = [];
  const search = (variant: WeightVariant, kvd: string, change: string) => {
    for (const l of layouts(cfg)) {
      const p = evaluate(model, table, opts.gpu, l.tp, l.pp, util, maxModelLen, concurrency, kvd, variant);
      if (p.verdict === "fits") {
        if (!(p.gpus === base.gpus && variant === "as-is" && kvd === kv)) suggestions.push({ ...p, change });
        return p;
      }
    }
    return undefined;
  };
  const smallest = search("as-is", kv, "fewest GPUs as the checkpoint is");
  const w16 = q === "none" && DTYPE_BITS[configDtype(cfg)] >= 16;
  const lowPrecisionOk = ccAtLeast(opts.gpu, 7.5);
  if (w16 && (opts.gpu.fp8 || ccAtLeast(opts.gpu, 8.0))) search("fp8", kv, "quantise weights to FP8 (vLLM --quantization fp8, or dsr quantize)");
  if (w16 && lowPrecisionOk) search("int8", kv, "quantise to INT8 W8A8 (dsr quantize)");
  if ((w16 || q.startsWith("fp8")) && lowPrecisionOk) search("awq-int4", kv, "quantise to AWQ 4-bit (dsr quantize)");
  if (!kv.startsWith("fp8")) search("as-is", "fp8", "FP8 KV cache (--kv-cache-dtype fp8)");
  // Keep what helps: when the asked layout fits, only layouts with fewer GPUs; otherwise the plain
  // answer plus anything that needs fewer GPUs than it (or is the only way to fit).
  const ref = base.verdict === "fits" ? base.gpus : smallest?.gpus ?? Infinity;
  const keep = suggestions.filter((s) => (base.verdict !== "fits" && s === suggestions[0] && smallest !== undefined) || s.gpus < ref);
  return { ...base, gpu: { id: opts.gpu.id, name: opts.gpu.name, memoryGiB: opts.gpu.memoryGiB }, util, concurrency, suggestions: keep, notes };
}
