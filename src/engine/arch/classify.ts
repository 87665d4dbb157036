/**
 * One classification per tensor (role, layer, TP rule, MoE/MTP membership). Parameter counts, the
 * layer summary and the planner all ask these questions of R1's 92k names, and each answer costs a
 * few regex matches — but R1 has only ~100 distinct name *patterns* once layer and expert numbers
 * are blanked out. So answers are cached per pattern (role, rule, routed expert) and per layer index
 * (layer kind, MTP), computed from the first real name that hits them. This holds for every ArchDef
 * here: roles and rules depend on the name past the numbers, layer kinds only on the layer index.
 */
import type { ModelConfig } from "./config.js";
import type { ArchDef, LayerRef, ShardRule, TensorRole } from "./types.js";

export interface TensorClass {
  role: TensorRole;
  layer: LayerRef;
  rule: ShardRule;
  speculative: boolean;
  routedExpert: boolean;
  /** FNV-1a hash of the name with layer/expert numbers blanked (for grouping identical layers). */
  patternHash: number;
}

interface Caches {
  arch: ArchDef;
  patterns: Map<string, { role: TensorRole; rule: ShardRule; routedExpert: boolean; hash: number }>;
  layers: Map<number, { layer: LayerRef; speculative: boolean }>;
}

const caches = new WeakMap<ModelConfig, Caches>();
/**
 * The same tensor objects are classified by params, layers and the planner: the answer is kept on
 * the object itself under a symbol (a WeakMap of 92k entries cost more than the regexes it saved).
 */
const CLASS = Symbol("dsr.tensorClass");
type Tagged = { [CLASS]?: { cfg: ModelConfig; arch: ArchDef; k: TensorClass } };

function fnv(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
const OTHER: LayerRef = { kind: "other" };

/** "model.layers.12.mlp.experts.7.up_proj.weight" → [12, "model.layers.#.mlp.experts.#.up_proj.weight"]. */
function split(name: string): [number | undefined, string] {
  const at = name.indexOf("layers.");
  if (at < 0 || (at > 0 && name.charCodeAt(at - 1) !== 0x2e)) return [undefined, name];
  let i = at + 7;
  let n = 0;
  const start = i;
  while (i < name.length && name.charCodeAt(i) >= 0x30 && name.charCodeAt(i) <= 0x39) n = n * 10 + name.charCodeAt(i++) - 0x30;
  if (i === start || name.charCodeAt(i) !== 0x2e) return [undefined, name];
  let rest = name.slice(i);
  const e = rest.indexOf(".experts.");
  if (e >= 0) {
    let j = e + 9;
    while (j < rest.length && rest.charCodeAt(j) >= 0x30 && rest.charCodeAt(j) <= 0x39) j++;
    rest = rest.slice(0, e + 9) + "#" + rest.slice(j);
  }
  return [n, name.slice(0, at + 7) + "#" + rest];
}

/** classify() for a tensor object, memoised on the object (per config and arch). */
export function classifyTensor(arch: ArchDef, cfg: ModelConfig, t: { name: string }): TensorClass {
  const hit = (t as Tagged)[CLASS];
  if (hit && hit.cfg === cfg && hit.arch === arch) return hit.k;
  const k = classify(arch, cfg, t.name);
  (t as Tagged)[CLASS] = { cfg, arch, k }; // symbol keys stay out of JSON and Object.keys
  return k;
}

export function classify(arch: ArchDef, cfg: ModelConfig, name: string): TensorClass {
  let c = caches.get(cfg);
  if (!c || c.arch !== arch) caches.set(cfg, (c = { arch, patterns: new Map(), layers: new Map() }));
  const [index, pattern] = split(name);
  let p = c.patterns.get(pattern);
  if (!p) c.patterns.set(pattern, (p = { role: arch.role(name), rule: arch.shardRule(name, cfg), routedExpert: arch.isRoutedExpert(name), hash: fnv(pattern) }));
  let l = index === undefined ? undefined : c.layers.get(index);
  if (index !== undefined && !l) c.layers.set(index, (l = { layer: arch.layerOf(name, cfg), speculative: arch.isSpeculativeOnly(name, cfg) }));
  return { role: p.role, rule: p.rule, routedExpert: p.routedExpert, layer: l?.layer ?? OTHER, speculative: l?.speculative ?? false, patternHash: p.hash };
}
