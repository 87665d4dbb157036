/**
 * Detects how a checkpoint is quantised, from config.json's quantization_config (what vLLM reads
 * first), quantize_config.json/quant_config.json, and the tensors themselves (facts/formats.md §4-5):
 * DeepSeek FP8 blocks (F8_E4M3 + F32 weight_scale_inv), AWQ (qweight/qzeros/scales, no g_idx),
 * GPTQ (qweight/qzeros/scales/g_idx), compressed-tensors (weight_packed, or int8/fp8 weight +
 * weight_scale). When the config and the tensors disagree, inspect says so.
 */
import type { Checkpoint } from "./types.js";

export type QuantMethod = "none" | "fp8-block" | "fp8" | "awq" | "gptq" | "compressed-tensors" | "bitsandbytes" | "other";

export interface QuantInfo {
  method: QuantMethod;
  /** Where the answer came from. */
  source: "config" | "tensors" | "config+tensors" | "none";
  bits?: number;
  groupSize?: number;
  blockSize?: [number, number];
  /** compressed-tensors format, GPTQ checkpoint_format, AWQ version, FP8 fmt. */
  format?: string;
  /** Quantised linear weights found in the headers. */
  quantizedTensors: number;
  /** What the config says when it disagrees with the tensors. */
  configSays?: QuantMethod;
}

type Raw = Record<string, unknown>;

function fromConfig(qc: Raw | undefined): Omit<QuantInfo, "source" | "quantizedTensors"> | undefined {
  if (!qc) return undefined;
  const m = String(qc.quant_method ?? qc.method ?? "").toLowerCase();
  const num = (v: unknown) => (typeof v === "number" ? v : undefined);
  if (m.includes("fp8")) {
    const b = qc.weight_block_size;
    const blockSize = Array.isArray(b) && b.length === 2 ? ([Number(b[0]), Number(b[1])] as [number, number]) : undefined;
    return { method: blockSize ? "fp8-block" : "fp8", bits: 8, blockSize, format: typeof qc.fmt === "string" ? qc.fmt : undefined };
  }
  if (m === "awq") return { method: "awq", bits: num(qc.bits ?? qc.w_bit), groupSize: num(qc.group_size ?? qc.q_group_size), format: typeof qc.version === "string" ? qc.version : undefined };
  if (m === "gptq" || (m === "" && (qc.bits !== undefined || qc.desc_act !== undefined))) {
    return { method: "gptq", bits: num(qc.bits ?? qc.w_bit), groupSize: num(qc.group_size ?? qc.q_group_size), format: String(qc.checkpoint_format ?? qc.format ?? "gptq") };
  }
  if (m === "compressed-tensors") {
    const groups = Object.values((qc.config_groups ?? {}) as Record<string, Raw>);
    const w = groups[0]?.weights as Raw | undefined;
    return { method: "compressed-tensors", bits: num(w?.num_bits), groupSize: num(w?.group_size) ?? undefined, format: typeof qc.format === "string" ? qc.format : undefined };
  }
  if (m.includes("bitsandbytes")) return { method: "bitsandbytes" };
  return m ? { method: "other", format: m } : undefined;
}

function fromTensors(ck: Checkpoint): { method: QuantMethod; count: number } {
  let fp8 = 0, fp8Scaled = 0, awq = 0, gptq = 0, ctPacked = 0, ctInt = 0;
  for (const [name, t] of ck.tensors) {
    if ((t.dtype === "F8_E4M3" || t.dtype === "F8_E5M2") && name.endsWith(".weight")) {
      fp8++;
      if (ck.tensors.has(name + "_scale_inv")) fp8Scaled++;
    } else if (name.endsWith(".qweight")) {
      const mod = name.slice(0, -".qweight".length);
      if (ck.tensors.has(mod + ".g_idx")) gptq++;
      else awq++;
    } else if (name.endsWith(".weight_packed")) ctPacked++;
    else if (t.dtype === "I8" && name.endsWith(".weight") && ck.tensors.has(name.slice(0, -".weight".length) + ".weight_scale")) ctInt++;
  }
  const counts: [QuantMethod, number][] = [["fp8-block", fp8Scaled], ["fp8", fp8 - fp8Scaled], ["awq", awq], ["gptq", gptq], ["compressed-tensors", ctPacked + ctInt]];
  counts.sort((a, b) => b[1] - a[1]);
  return counts[0][1] > 0 ? { method: counts[0][0], count: counts[0][1] } : { method: "none", count: 0 };
}

/** GPTQ checkpoints may omit g_idx; AWQ and GPTQ both use qweight, so treat them as one family here. */
const family = (m: QuantMethod) => (m === "awq" || m === "gptq" ? "int4" : m === "fp8-block" ? "fp8" : m);

const memo = new WeakMap<Checkpoint, QuantInfo>();

/** Memoised per checkpoint: integrity and the report both ask. */
export function detectQuantization(ck: Checkpoint): QuantInfo {
  let q = memo.get(ck);
  if (!q) memo.set(ck, (q = detect(ck)));
  return q;
}

function detect(ck: Checkpoint): QuantInfo {
  const cfg = fromConfig(ck.config?.quantizationConfig) ?? fromConfig(ck.quantConfigFile?.raw);
  const t = fromTensors(ck);
  if (!cfg) return t.method === "none" ? { method: "none", source: "none", quantizedTensors: 0 } : { method: t.method, source: "tensors", quantizedTensors: t.count, bits: t.method.startsWith("fp8") ? 8 : undefined };
  if (t.method === "none" && ck.tensors.size > 0) return { method: "none", source: "tensors", quantizedTensors: 0, configSays: cfg.method };
  if (t.method !== "none" && family(t.method) !== family(cfg.method) && cfg.method !== "compressed-tensors") {
    return { method: t.method, source: "tensors", quantizedTensors: t.count, configSays: cfg.method };
  }
  return { ...cfg, source: ck.tensors.size > 0 ? "config+tensors" : "config", quantizedTensors: t.count };
}
