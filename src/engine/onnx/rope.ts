/**
 * Rotary cos/sin caches for the RotaryEmbedding nodes: [maxPositions, headDim/2] each,
 * from inv_freq = 1/θ^(2i/d) (facts §4.1), with the rope_scaling variants R1-Distill models use:
 * "llama3" (R1-Distill-Llama-8B/70B) and "linear". Others are refused rather than silently wrong.
 */
import { DsrError } from "../errors.js";
import type { ModelConfig } from "../arch/config.js";

export function inverseFrequencies(cfg: ModelConfig): Float64Array {
  const d = cfg.headDim;
  const inv = new Float64Array(d / 2);
  for (let i = 0; i < d / 2; i++) inv[i] = 1 / Math.pow(cfg.ropeTheta, (2 * i) / d);
  const s = cfg.ropeScaling;
  if (!s) return inv;
  if (s.type === "linear" && s.factor) {
    for (let i = 0; i < inv.length; i++) inv[i]! /= s.factor;
    return inv;
  }
  if (s.type === "llama3") {
    const factor = Number(s.factor ?? 8);
    const low = Number(s.low_freq_factor ?? 1);
    const high = Number(s.high_freq_factor ?? 4);
    const orig = Number(s.originalMaxPositionEmbeddings ?? 8192);
    const lowWavelen = orig / low;
    const highWavelen = orig / high;
    for (let i = 0; i < inv.length; i++) {
      const wavelen = (2 * Math.PI) / inv[i]!;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i]! /= factor;
        continue;
      }
      const smooth = (orig / wavelen - low) / (high - low);
      inv[i] = (1 - smooth) * (inv[i]! / factor) + smooth * inv[i]!;
    }
    return inv;
  }
  throw new DsrError("DSR_ROPE_UNSUPPORTED", `config.json: rope_scaling type "${s.type}" is not supported by the ONNX builder`, {
    hint: "supported: default, linear, llama3 (every R1-Distill model uses one of these)",
  });
}

export function rotaryCaches(cfg: ModelConfig, maxPositions: number): { cos: Float32Array; sin: Float32Array } {
  const inv = inverseFrequencies(cfg);
  const half = inv.length;
  const cos = new Float32Array(maxPositions * half);
  const sin = new Float32Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const a = p * inv[i]!;
      cos[p * half + i] = Math.cos(a);
      sin[p * half + i] = Math.sin(a);
    }
  }
  return { cos, sin };
}
