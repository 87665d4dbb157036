/**
 * The llama path of the graph builder (R1-Distill-Llama: no q/k/v bias, llama3 rope scaling, here also
 * tied embeddings) against an independent plain-JS forward pass of the same random weights, for one
 * prompt and for greedy continuation through the KV cache.
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseModelConfig } from "../../src/engine/arch/config.js";
import { buildOnnxFromSource, readManifest } from "../../src/engine/onnx/build.js";
import { syntheticWeights, type WeightSource } from "../../src/engine/onnx/weights.js";
import { DecoderSession } from "../../src/engine/runtime/embedded/decoder-session.js";
import { tempDir } from "../support/tmp.js";

const H = 64, L = 2, NH = 4, KV = 2, D = H / NH, I = 96, V = 97;
const RAW = {
  model_type: "llama", architectures: ["LlamaForCausalLM"], hidden_size: H, num_hidden_layers: L, num_attention_heads: NH,
  num_key_value_heads: KV, intermediate_size: I, vocab_size: V, max_position_embeddings: 64, rms_norm_eps: 1e-5,
  rope_theta: 500000, rope_scaling: { rope_type: "llama3", factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 },
  tie_word_embeddings: true, hidden_act: "silu",
};

function shapes() {
  const m = new Map<string, number[]>([["model.embed_tokens.weight", [V, H]], ["model.norm.weight", [H]]]);
  for (let i = 0; i < L; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.self_attn.q_proj.weight`, [NH * D, H]).set(`${p}.self_attn.k_proj.weight`, [KV * D, H]).set(`${p}.self_attn.v_proj.weight`, [KV * D, H]);
    m.set(`${p}.self_attn.o_proj.weight`, [H, NH * D]).set(`${p}.mlp.gate_proj.weight`, [I, H]).set(`${p}.mlp.up_proj.weight`, [I, H]).set(`${p}.mlp.down_proj.weight`, [H, I]);
    m.set(`${p}.input_layernorm.weight`, [H]).set(`${p}.post_attention_layernorm.weight`, [H]);
  }
  return m;
}

/** llama3 inverse frequencies, written out from the transformers definition. */
function invFreq(): number[] {
  const s = RAW.rope_scaling;
  return Array.from({ length: D / 2 }, (_, i) => {
    const f = 1 / RAW.rope_theta ** ((2 * i) / D);
    const wl = (2 * Math.PI) / f;
    if (wl < s.original_max_position_embeddings / s.high_freq_factor) return f;
    if (wl > s.original_max_position_embeddings / s.low_freq_factor) return f / s.factor;
    const sm = (s.original_max_position_embeddings / wl - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return (1 - sm) * (f / s.factor) + sm * f;
  });
}

/** Plain forward pass: logits of the last position. */
async function reference(w: WeightSource, ids: number[]): Promise<Float32Array> {
  const get = async (n: string) => { const s = w.shape(n)!; return { s, d: await w.rows(n, 0, s.length > 1 ? s[0]! : 1) }; };
  const matvec = (m: { s: number[]; d: Float32Array }, x: Float32Array) => Float32Array.from({ length: m.s[0]! }, (_, r) => { let a = 0; for (let k = 0; k < x.length; k++) a += m.d[r * x.length + k]! * x[k]!; return a; });
  const rms = (x: Float32Array, g: Float32Array) => { let ss = 0; for (const v of x) ss += v * v; const inv = 1 / Math.sqrt(ss / x.length + RAW.rms_norm_eps); return x.map((v, i) => v * inv * g[i]!); };
  const inv = invFreq();
  const rope = (v: Float32Array, heads: number, pos: number) => { for (let h = 0; h < heads; h++) for (let i = 0; i < D / 2; i++) { const a = pos * inv[i]!, c = Math.cos(a), s = Math.sin(a); const x1 = v[h * D + i]!, x2 = v[h * D + i + D / 2]!; v[h * D + i] = x1 * c - x2 * s; v[h * D + i + D / 2] = x2 * c + x1 * s; } };
  const emb = await get("model.embed_tokens.weight");
  let xs = ids.map((t) => emb.d.slice(t * H, (t + 1) * H));
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`;
    const [g1, wq, wk, wv, wo, g2, wg, wu, wd] = await Promise.all(["input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"].map((n) => get(`${p}.${n}`)));
    const hs = xs.map((x) => rms(x, g1!.d));
    const q = hs.map((h, pos) => { const v = matvec(wq!, h); rope(v, NH, pos); return v; });
    const k = hs.map((h, pos) => { const v = matvec(wk!, h); rope(v, KV, pos); return v; });
    const v = hs.map((h) => matvec(wv!, h));
    xs = xs.map((x, pos) => {
      const att = new Float32Array(NH * D);
      for (let h = 0; h < NH; h++) {
        const kh = Math.floor(h / (NH / KV));
        const sc = Array.from({ length: pos + 1 }, (_, j) => { let a = 0; for (let d = 0; d < D; d++) a += q[pos]![h * D + d]! * k[j]![kh * D + d]!; return a / Math.sqrt(D); });
        const mx = Math.max(...sc); const e = sc.map((s) => Math.exp(s - mx)); const z = e.reduce((a, b) => a + b, 0);
        for (let j = 0; j <= pos; j++) for (let d = 0; d < D; d++) att[h * D + d]! += (e[j]! / z) * v[j]![kh * D + d]!;
      }
      const o = matvec(wo!, att);
      const x1 = x.map((val, i) => val + o[i]!);
      const h2 = rms(x1, g2!.d);
      const gg = matvec(wg!, h2), uu = matvec(wu!, h2);
      const act = gg.map((g, i) => (g / (1 + Math.exp(-g))) * uu[i]!);
      const dn = matvec(wd!, act);
      return x1.map((val, i) => val + dn[i]!);
    });
  }
  const fin = rms(xs[xs.length - 1]!, (await get("model.norm.weight")).d);
  return matvec(emb, fin);
}

describe("llama graph (no bias, llama3 rope, tied embeddings)", () => {
  it("matches a plain-JS forward pass, in prefill and through the KV cache", async () => {
    const w = syntheticWeights(shapes(), 0.3);
    const dir = join(await tempDir(), "llama");
    await buildOnnxFromSource(parseModelConfig(RAW), w, undefined, dir, { weights: "fp32" });
    const s = await DecoderSession.open(dir, (await readManifest(dir))!, { threads: 1, maxBatch: 1, maxContext: 64 });
    const ids = [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28];
    s.fit(ids.length + 2, [0]);
    const prefix = ids.slice(0, 12);
    const got = await s.run(0, [prefix], [0]);
    const want = await reference(w, prefix);
    let maxDiff = 0, scale = 0;
    for (let j = 0; j < V; j++) (maxDiff = Math.max(maxDiff, Math.abs(got[j]! - want[j]!))), (scale = Math.max(scale, Math.abs(want[j]!)));
    expect(scale).toBeGreaterThan(0.1); // the weights are big enough for the logits to discriminate
    expect(maxDiff).toBeLessThan(1e-3 * Math.max(1, scale));
    // Positions past original_max_position_embeddings (16) go through the scaled frequencies.
    let last = got;
    for (let t = 12; t < ids.length; t++) last = await s.run(0, [[ids[t]!]], [t]);
    const want2 = await reference(w, ids);
    for (let j = 0; j < V; j++) expect(Math.abs(last[j]! - want2[j]!)).toBeLessThan(1e-3 * Math.max(1, scale));
    await s.close();
  });
});
