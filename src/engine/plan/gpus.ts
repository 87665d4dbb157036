/**
 * GPU profiles for the memory planner. `memoryGiB` is what the driver reports as total memory
 * (torch.cuda.get_device_properties().total_memory), which is what vLLM multiplies by
 * --gpu-memory-utilization — a little under the marketing figure (an "80 GB" H100 reports ~79.2 GiB).
 * `fp8` = native FP8 tensor cores (W8A8 FP8 kernels); `bf16` = bfloat16 support (vLLM falls back
 * to float16 on older GPUs). H100 80GB (85,017,493,504 B = 79.18 GiB) and H200 (150,109,880,320 B =
 * 139.80 GiB) were read with torch on the real GPUs; the others are the drivers' published totals
 * (nvidia-smi MiB) less the same ~1% gap, so treat them as ±0.5 GiB.
 */
import { usageError } from "../errors.js";

export interface GpuProfile {
  id: string;
  name: string;
  memoryGiB: number;
  computeCapability: string;
  fp8: boolean;
  bf16: boolean;
  vendor: "nvidia" | "amd";
}

const P = (id: string, name: string, memoryGiB: number, computeCapability: string, fp8: boolean, bf16 = true, vendor: "nvidia" | "amd" = "nvidia"): GpuProfile => ({
  id,
  name,
  memoryGiB,
  computeCapability,
  fp8,
  bf16,
  vendor,
});

export const GPU_PROFILES: readonly GpuProfile[] = [
  P("b200", "NVIDIA B200 180GB", 178.4, "10.0", true),
  P("h200", "NVIDIA H200 141GB", 139.8, "9.0", true),
  P("h100-94g", "NVIDIA H100 NVL 94GB", 93.1, "9.0", true),
  P("h100-80g", "NVIDIA H100 80GB", 79.2, "9.0", true),
  P("a100-80g", "NVIDIA A100 80GB", 79.2, "8.0", false),
  P("a100-40g", "NVIDIA A100 40GB", 39.4, "8.0", false),
  P("l40s-48g", "NVIDIA L40S 48GB", 44.4, "8.9", true),
  P("a6000-48g", "NVIDIA RTX A6000 48GB", 47.4, "8.6", false),
  P("rtx-4090-24g", "NVIDIA GeForce RTX 4090 24GB", 23.6, "8.9", true),
  P("a10-24g", "NVIDIA A10 24GB", 22.1, "8.6", false),
  P("l4-24g", "NVIDIA L4 24GB", 22.0, "8.9", true),
  P("t4-16g", "NVIDIA T4 16GB", 14.6, "7.5", false, false),
  P("v100-32g", "NVIDIA V100 32GB", 31.7, "7.0", false, false),
  P("mi300x", "AMD Instinct MI300X 192GB", 191.5, "gfx942", true, true, "amd"),
];

const ALIASES: Record<string, string> = { h100: "h100-80g", "h100-sxm": "h100-80g", "h100-nvl": "h100-94g", a100: "a100-80g", l40s: "l40s-48g", a10: "a10-24g", l4: "l4-24g", t4: "t4-16g", "rtx-4090": "rtx-4090-24g", "4090": "rtx-4090-24g", "h200-141g": "h200", v100: "v100-32g", a6000: "a6000-48g" };

export function gpuProfile(id: string): GpuProfile {
  const key = id.toLowerCase();
  const p = GPU_PROFILES.find((g) => g.id === (ALIASES[key] ?? key));
  if (!p) throw usageError(`unknown GPU "${id}" for --gpu`, `one of: ${GPU_PROFILES.map((g) => g.id).join(", ")}`);
  return p;
}

/** vLLM's scheduler defaults (arg_utils): ≥70 GiB GPUs that are not A100s get the larger budgets. */
export function vllmBatchDefaults(gpu: GpuProfile): { maxNumSeqs: number; maxNumBatchedTokens: number } {
  const large = gpu.memoryGiB >= 70 && !gpu.id.startsWith("a100");
  return large ? { maxNumSeqs: 1024, maxNumBatchedTokens: 8192 } : { maxNumSeqs: 256, maxNumBatchedTokens: 2048 };
}

/** Compute-capability test (AMD Instinct profiles count as new enough for every vLLM kernel path here). */
export function ccAtLeast(gpu: GpuProfile, cc: number): boolean {
  return gpu.vendor === "amd" || Number.parseFloat(gpu.computeCapability) >= cc;
}
