/**
 * One classification per tensor name (role, layer, TP rule, MoE/MTP membership), memoised per
 * config: parameter counts, the layer summary and the planner all ask the same questions of the
 * same 92k names on R1, and each answer costs a few regex matches.
 */
import type { ModelConfig } from "./config.js";
import type { ArchDef, LayerRef, ShardRule, TensorRole } from "./types.js";

export interface TensorClass {
  role: TensorRole;
  layer: LayerRef;
  rule: ShardRule;
  speculative: boolean;
  routedExpert: boolean;
}

const cache = new WeakMap<ModelConfig, { arch: ArchDef; byName: Map<string, TensorClass> }>();

export function classify(arch: ArchDef, cfg: ModelConfig, name: string): TensorClass {
  let c = cache.get(cfg);
  if (!c || c.arch !== arch) cache.set(cfg, (c = { arch, byName: new Map() }));
  let t = c.byName.get(name);
  if (!t) {
    t = {
      role: arch.role(name),
      layer: arch.layerOf(name, cfg),
      rule: arch.shardRule(name, cfg),
      speculative: arch.isSpeculativeOnly(name, cfg),
      routedExpert: arch.isRoutedExpert(name),
    };
    c.byName.set(name, t);
  }
  return t;
}
