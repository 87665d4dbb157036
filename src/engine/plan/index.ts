/** Memory planner: GPU profiles, weights per GPU under TP/PP, KV budget, verdict and suggestions. */
export { GPU_PROFILES, gpuProfile, ccAtLeast, vllmBatchDefaults, type GpuProfile } from "./gpus.js";
export { rankWeights, rankWeightsFromTable, weightTable, variantBytes, type WeightVariant, type RankWeights, type WeightTable } from "./weights.js";
export { planMemory, checkKvCacheDtype, type MemoryPlan, type PlanModel, type PlanOptions, type PlanPoint, type Verdict } from "./planner.js";
