/**
 * config.json → a normalised ModelConfig. Accepts older and newer spellings of the same field:
 * `rope_theta` vs `rope_parameters.rope_theta`, `rope_scaling` vs `rope_parameters`,
 * `torch_dtype` vs `dtype`, `eos_token_id` as a number or a list. The raw object is kept for
 * architecture-specific fields.
 */
import { integrityError } from "../errors.js";

export interface RopeScaling {
  type: string;
  factor?: number;
  originalMaxPositionEmbeddings?: number;
  [k: string]: unknown;
}

export interface ModelConfig {
  architectures: string[];
  modelType: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  /** Per-head dimension (head_dim if given, else hidden_size / num_attention_heads). */
  headDim: number;
  intermediateSize: number;
  vocabSize: number;
  maxPositionEmbeddings: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling | undefined;
  tieWordEmbeddings: boolean;
  /** Declared weight dtype: "bfloat16", "float16", "float32"… */
  dtype: string | undefined;
  bosTokenId: number | undefined;
  eosTokenIds: number[];
  hiddenAct: string;
  /** Raw quantization_config, if present. */
  quantizationConfig: Record<string, unknown> | undefined;
  raw: Record<string, unknown>;
}

type Raw = Record<string, unknown>;

export function parseModelConfig(raw: unknown, file = "config.json"): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw integrityError("DSR_CONFIG_INVALID", `${file}: not a JSON object`, { hint: "check the model's config.json" });
  }
  const c = raw as Raw;
  // Some configs (multimodal wrappers) nest the LM config under text_config.
  const t = (typeof c.text_config === "object" && c.text_config !== null ? { ...c, ...(c.text_config as Raw) } : c) as Raw;
  const num = (key: string, fallback?: number): number => {
    const v = t[key];
    if (v === undefined || v === null) {
      if (fallback !== undefined) return fallback;
      throw integrityError("DSR_CONFIG_MISSING_FIELD", `${file}: field "${key}" is missing`, {
        hint: "the config is incomplete; compare it with the model's original config.json",
        details: { file, field: key },
      });
    }
    if (typeof v !== "number" || !Number.isFinite(v)) {
      throw integrityError("DSR_CONFIG_INVALID_FIELD", `${file}: field "${key}" must be a number, got ${JSON.stringify(v)}`, {
        hint: "fix the value in config.json",
        details: { file, field: key },
      });
    }
    return v;
  };
  const ropeParams = (t.rope_parameters ?? undefined) as Raw | undefined;
  const ropeTheta =
    typeof t.rope_theta === "number" ? t.rope_theta : typeof ropeParams?.rope_theta === "number" ? (ropeParams.rope_theta as number) : 10000;
  const scalingRaw = (t.rope_scaling ?? ropeParams) as Raw | undefined | null;
  let ropeScaling: RopeScaling | undefined;
  if (scalingRaw && typeof scalingRaw === "object") {
    const type = String(scalingRaw.rope_type ?? scalingRaw.type ?? "default");
    if (type !== "default") {
      ropeScaling = {
        ...scalingRaw,
        type,
        factor: typeof scalingRaw.factor === "number" ? scalingRaw.factor : undefined,
        originalMaxPositionEmbeddings:
          typeof scalingRaw.original_max_position_embeddings === "number" ? scalingRaw.original_max_position_embeddings : undefined,
      };
    }
  }
  const hiddenSize = num("hidden_size");
  const numHeads = num("num_attention_heads");
  const eos = t.eos_token_id;
  const eosTokenIds = Array.isArray(eos) ? eos.filter((x): x is number => typeof x === "number") : typeof eos === "number" ? [eos] : [];
  const archs = Array.isArray(t.architectures) ? t.architectures.map(String) : [];
  return {
    architectures: archs,
    modelType: typeof t.model_type === "string" ? t.model_type : "",
    hiddenSize,
    numLayers: num("num_hidden_layers"),
    numHeads,
    numKvHeads: num("num_key_value_heads", numHeads),
    headDim: typeof t.head_dim === "number" ? t.head_dim : hiddenSize / numHeads,
    intermediateSize: num("intermediate_size", 0),
    vocabSize: num("vocab_size"),
    maxPositionEmbeddings: num("max_position_embeddings", 0),
    rmsNormEps: num("rms_norm_eps", 1e-6),
    ropeTheta,
    ropeScaling,
    tieWordEmbeddings: t.tie_word_embeddings === true,
    dtype: typeof t.dtype === "string" ? t.dtype : typeof t.torch_dtype === "string" ? t.torch_dtype : undefined,
    bosTokenId: typeof t.bos_token_id === "number" ? t.bos_token_id : undefined,
    eosTokenIds,
    hiddenAct: typeof t.hidden_act === "string" ? t.hidden_act : "silu",
    quantizationConfig: typeof t.quantization_config === "object" && t.quantization_config !== null ? (t.quantization_config as Raw) : undefined,
    raw: c,
  };
}
