/** The architecture registry: config → ArchDef, by HF architecture name, then model_type, else generic. */
import type { ModelConfig } from "./config.js";
import { deepseekV3 } from "./deepseek-v3.js";
import { llama, qwen2 } from "./dense.js";
import { generic } from "./generic.js";
import type { ArchDef } from "./types.js";

export const ARCHS: readonly ArchDef[] = [qwen2, llama, deepseekV3];

export function resolveArch(cfg: ModelConfig | undefined): ArchDef {
  if (!cfg) return generic;
  for (const name of cfg.architectures) {
    const hit = ARCHS.find((a) => a.hfArchitectures.includes(name));
    if (hit) return hit;
  }
  return ARCHS.find((a) => a.modelTypes.includes(cfg.modelType)) ?? generic;
}

export function archById(id: string): ArchDef | undefined {
  return id === "generic" ? generic : ARCHS.find((a) => a.id === id);
}
