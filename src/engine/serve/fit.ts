/**
 * Will a vLLM child start? vLLM refuses to start when one request of the model's whole context does
 * not fit its KV cache ("max seq len … is larger than the maximum number of tokens that can be stored
 * in KV cache"), one of its most-reported errors (facts §5.3), and says so only after loading the
 * weights. Before starting vLLM children, dsr runs its memory planner (the one behind `dsr inspect
 * --plan`) for the GPUs each child gets, on the local checkpoint or, for a hub id, on its safetensors
 * headers read over HTTP as `dsr inspect` reads them; when --max-model-len was not given and the
 * model's context does not fit, it passes the largest context that does.
 */
import { resolveArch } from "../arch/registry.js";
import { detectQuantization, openCheckpoint, openLocalSource, openRemoteSource, type CheckpointSource } from "../checkpoint/index.js";
import { hubOptionsFromEnv, parseRepoSpec } from "../hub/index.js";
import { GPU_PROFILES, planMemory, type GpuProfile, type PlanModel } from "../plan/index.js";
import type { GpuMemory } from "../runtime/launchers.js";

/** What the planner says for one child. */
export interface FitAdvice {
  /** The --max-model-len to pass (set only when the user gave none and the model's does not fit). */
  maxModelLen?: number;
  /** A line for the user: what was chosen and why, or why vLLM will likely refuse. */
  note?: string;
}

/**
 * The planner's GPU for what nvidia-smi reports: a known profile of that name (its memory as torch
 * reads it), else one made from the reported total, less the ~1% driver reserve the profiles show.
 */
export function gpuProfileFor(gpus: readonly GpuMemory[]): GpuProfile | undefined {
  if (gpus.length === 0) return undefined;
  const small = gpus.reduce((a, b) => (b.memoryMiB < a.memoryMiB ? b : a));
  const known = GPU_PROFILES.find((p) => small.name.startsWith(p.name) || small.name.replace(/ HBM\d.*$/, "") === p.name);
  if (known && Math.abs(known.memoryGiB * 1024 - small.memoryMiB) / small.memoryMiB < 0.05) return known;
  return { id: "detected", name: small.name, memoryGiB: (small.memoryMiB / 1024) * 0.99, computeCapability: "0", fp8: false, bf16: true, vendor: "nvidia" };
}

/**
 * How long reading a hub checkpoint's headers may delay the start, and how hard it tries: the check
 * is advice, so an unreachable hub costs a second, not `dsr pull`'s patient retries.
 */
const REMOTE_TIMEOUT_MS = 15_000;
const REMOTE_RETRY = { attempts: 2, baseDelayMs: 250, maxDelayMs: 1000 };

/**
 * The checkpoint as the planner needs it: a local directory, or a hub id's headers over HTTP (not
 * with HF_HUB_OFFLINE). `skipped` says why there is none (the fit check is then skipped).
 */
export async function planModel(model: string, o: { local: boolean; env: NodeJS.ProcessEnv }): Promise<{ model?: PlanModel; skipped?: string }> {
  if (!o.local && (o.env.HF_HUB_OFFLINE === "1" || o.env.HF_HUB_OFFLINE === "true")) return { skipped: "HF_HUB_OFFLINE is set" };
  const signal = AbortSignal.timeout(REMOTE_TIMEOUT_MS);
  try {
    const src: CheckpointSource = o.local ? await openLocalSource(model) : await openRemoteSource(parseRepoSpec(model), hubOptionsFromEnv(o.env, { signal, retry: REMOTE_RETRY }));
    const ck = await openCheckpoint(src, { signal });
    if (!ck.config || ck.tensors.size === 0) return { skipped: `${model} has no readable config.json or tensors` };
    return { model: { arch: resolveArch(ck.config), cfg: ck.config, tensors: [...ck.tensors.values()], quantMethod: detectQuantization(ck).method } };
  } catch (e) {
    return { skipped: `${model}: ${(e as Error).message.split("\n")[0]}` };
  }
}

/** The advice for one child on `gpu` with its share of memory and layout. */
export function fitAdvice(model: PlanModel, gpu: GpuProfile, o: { tp?: number; pp?: number; util: number; kvCacheDtype?: string; maxModelLen?: number }): FitAdvice {
  let plan;
  try {
    plan = planMemory(model, { gpu, tp: o.tp ?? 1, pp: o.pp ?? 1, util: o.util, kvCacheDtype: o.kvCacheDtype ?? "auto", maxModelLen: o.maxModelLen });
  } catch (e) {
    return { note: `fit check skipped: ${(e as Error).message}` };
  }
  const where = `${o.util} of ${gpu.name} (${gpu.memoryGiB.toFixed(1)} GiB)${(o.tp ?? 1) * (o.pp ?? 1) > 1 ? ` × ${(o.tp ?? 1) * (o.pp ?? 1)}` : ""}`;
  if (plan.verdict === "does-not-fit") {
    const s = plan.suggestions[0];
    return { note: `dsr's memory plan: the model does not fit ${where}: ${plan.reasons[0]}; vLLM will likely refuse to start${s ? ` (fits with: ${s.change}, ${s.gpus} GPU(s))` : ""}` };
  }
  if (plan.kvTokens >= plan.maxModelLen) return {};
  const fits = Math.floor(plan.kvTokens / 1024) * 1024;
  if (o.maxModelLen !== undefined) return { note: `dsr's memory plan: the KV cache holds about ${plan.kvTokens} tokens at ${where}, fewer than --max-model-len ${o.maxModelLen}: vLLM will likely refuse to start; ${fits} would fit` };
  return { maxModelLen: fits, note: `--max-model-len ${fits}: dsr's memory plan puts the KV cache at about ${plan.kvTokens} tokens at ${where}, short of the model's ${plan.maxModelLen}, with which vLLM refuses to start (give --max-model-len to choose)` };
}
