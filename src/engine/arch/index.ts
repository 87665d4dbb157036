/** Architecture registry: qwen2, llama, deepseek_v3 and a generic fallback (see types.ts for the contract). */
export { parseModelConfig, type ModelConfig } from "./config.js";
export * from "./types.js";
export { resolveArch, archById, ARCHS } from "./registry.js";
export { qwen2, llama, gqaKvBytes } from "./dense.js";
export { deepseekV3, deepseekFields, isMoeLayer, type DeepseekFields } from "./deepseek-v3.js";
export { generic } from "./generic.js";
export { countParams, tensorParams, kvBytesPerToken, type ParamCounts, type TensorLike } from "./params.js";
export { classify, classifyTensor, type TensorClass } from "./classify.js";
