/**
 * The inspect report: everything `dsr inspect` shows, as one JSON-serialisable object. Its shape is
 * the documented --json schema (docs/inspect.md); bump INSPECT_SCHEMA_VERSION on any breaking change.
 */
import type { ModelConfig } from "../arch/config.js";
import { deepseekFields } from "../arch/deepseek-v3.js";
import { countParams, type ParamCounts } from "../arch/params.js";
import { resolveArch } from "../arch/registry.js";
import { configDtype } from "../arch/types.js";
import { planMemory, type MemoryPlan, type PlanOptions } from "../plan/planner.js";
import { detectQuantization, type QuantInfo } from "./quant.js";
import { dtypeBreakdown, embeddings, groupLayers, summarizeShards, type DtypeRow, type Embeddings, type LayerGroup, type ShardSummary } from "./summary.js";
import type { Checkpoint, Finding, ReadStats, TokenizerInfo } from "./types.js";

export const INSPECT_SCHEMA_VERSION = 1;

export interface ModelSummary {
  architectures: string[];
  modelType: string;
  /** Registry id: qwen2 | llama | deepseek_v3 | generic. */
  arch: string;
  dtype: string;
  layers: number;
  hiddenSize: number;
  attentionHeads: number;
  kvHeads: number;
  headDim: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  attention: "gqa" | "mla";
  moe: { routedExperts: number; sharedExperts: number; expertsPerToken: number; denseLayers: number; moeLayerFreq: number; mtpLayers: number } | null;
}

export interface InspectReport {
  schemaVersion: number;
  source: Checkpoint["source"];
  /** False when any finding is an error (the command then exits 3). */
  ok: boolean;
  model: ModelSummary | null;
  shards: ShardSummary;
  dtypes: DtypeRow[];
  params: (ParamCounts & { tensors: number }) | null;
  layers: LayerGroup[];
  embeddings: Embeddings;
  quantization: QuantInfo;
  tokenizer: TokenizerInfo;
  generation: Record<string, unknown> | null;
  findings: Finding[];
  plan: MemoryPlan | null;
  /** Why there is no plan (no config.json, unreadable shards…). */
  planSkipped: string | null;
  reads: ReadStats & { requests: number | null; bytes: number | null; wallMs: number | null };
}

function modelSummary(cfg: ModelConfig, arch: string): ModelSummary {
  const ds = arch === "deepseek_v3" ? deepseekFields(cfg) : undefined;
  const r = cfg.raw;
  const experts = ds?.nRoutedExperts ?? Number(r.num_local_experts ?? r.num_experts ?? 0);
  return {
    architectures: cfg.architectures,
    modelType: cfg.modelType,
    arch,
    dtype: cfg.dtype ?? "unknown",
    layers: cfg.numLayers,
    hiddenSize: cfg.hiddenSize,
    attentionHeads: cfg.numHeads,
    kvHeads: cfg.numKvHeads,
    headDim: cfg.headDim,
    vocabSize: cfg.vocabSize,
    maxPositionEmbeddings: cfg.maxPositionEmbeddings,
    attention: ds ? "mla" : "gqa",
    moe:
      experts > 0
        ? {
            routedExperts: experts,
            sharedExperts: ds?.nSharedExperts ?? 0,
            expertsPerToken: ds?.expertsPerToken ?? Number(r.num_experts_per_tok ?? 0),
            denseLayers: ds?.firstKDense ?? 0,
            moeLayerFreq: ds?.moeLayerFreq ?? 1,
            mtpLayers: ds?.mtpLayers ?? 0,
          }
        : null,
  };
}

const GENERATION_KEYS = ["do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens", "max_length", "bos_token_id", "eos_token_id", "pad_token_id"];

export function buildInspectReport(ck: Checkpoint, planOpts: PlanOptions | undefined, extra: { wallMs?: number; remote?: { requests: number; bytes: number } } = {}): InspectReport {
  const arch = resolveArch(ck.config);
  const quant = detectQuantization(ck);
  const tensors = [...ck.tensors.values()];
  const cfg = ck.config;
  const packBits = quant.method === "awq" || quant.method === "gptq" || quant.method === "compressed-tensors" ? quant.bits ?? 4 : 4;
  let plan: MemoryPlan | null = null;
  let planSkipped: string | null = null;
  if (!planOpts) planSkipped = "not requested";
  else if (!cfg) planSkipped = "no usable config.json";
  else if (tensors.length === 0) planSkipped = "no readable tensors";
  else {
    plan = planMemory({ arch, cfg, tensors, quantMethod: quant.method }, planOpts);
    if (ck.shards.some((s) => s.status !== "ok")) plan.notes.push("some shards could not be read: weights per GPU are underestimated");
  }
  const gen = ck.generationConfig;
  return {
    schemaVersion: INSPECT_SCHEMA_VERSION,
    source: ck.source,
    ok: !ck.findings.some((f) => f.severity === "error"),
    model: cfg ? { ...modelSummary(cfg, arch.id), dtype: cfg.dtype ?? configDtype(cfg) } : null,
    shards: summarizeShards(ck),
    dtypes: dtypeBreakdown(tensors),
    params: cfg ? { ...countParams(arch, cfg, tensors, packBits), tensors: tensors.length } : null,
    layers: cfg ? groupLayers(arch, cfg, tensors) : [],
    embeddings: embeddings(ck),
    quantization: quant,
    tokenizer: ck.tokenizer,
    generation: gen ? Object.fromEntries(GENERATION_KEYS.filter((k) => k in gen).map((k) => [k, gen[k]])) : null,
    findings: ck.findings,
    plan,
    planSkipped,
    reads: { ...ck.reads, requests: extra.remote?.requests ?? null, bytes: extra.remote?.bytes ?? null, wallMs: extra.wallMs ?? null },
  };
}
