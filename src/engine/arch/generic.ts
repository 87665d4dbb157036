/**
 * Fallback for architectures dsr does not know: no expected-tensor list (so no missing/unexpected
 * checks), HF naming rules for roles and TP, GQA KV sizing from the config, and MoE fractions from
 * the common config spellings (Mixtral/Qwen-MoE style `.experts.N.` tensors).
 */
import type { ModelConfig } from "./config.js";
import { hfRole, hfShardRule } from "./common.js";
import { gqaKvBytes } from "./dense.js";
import { layerIndex, layerRefOf, type ArchDef } from "./types.js";

const EXPERT = /\.experts\.\d+\./;

function routed(cfg: ModelConfig): number | undefined {
  const r = cfg.raw;
  const n = Number(r.num_local_experts ?? r.num_experts ?? r.n_routed_experts ?? 0);
  const k = Number(r.num_experts_per_tok ?? 0);
  return n > 0 && k > 0 ? k / n : undefined;
}

export const generic: ArchDef = {
  id: "generic",
  hfArchitectures: [],
  modelTypes: [],
  expectedTensors: () => [],
  role: hfRole,
  shardRule: (name) => hfShardRule(name),
  layerOf: (name, cfg) => layerRefOf(name, cfg, () => routed(cfg) !== undefined),
  kvBytesPerTokenPerLayer: gqaKvBytes,
  attentionLayers: (cfg) => cfg.numLayers,
  isSpeculativeOnly: (name, cfg) => (layerIndex(name) ?? -1) >= cfg.numLayers,
  routedFraction: routed,
  isRoutedExpert: (name) => EXPERT.test(name),
};
