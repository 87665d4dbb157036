/**
 * Sampler semantics on hand-made logits: greedy, top-k / top-p / min-p truncation, temperature,
 * repetition / presence / frequency penalties, seeded reproducibility, and the empirical distribution
 * of temperature-1 sampling against softmax (chi-square-free check: each frequency within 4 sigma).
 */
import { describe, expect, it } from "vitest";
import { Sampler, seededRandom } from "../../src/engine/runtime/embedded/sampler.js";
import type { SamplingParams } from "../../src/engine/runtime/types.js";

const base: SamplingParams = { temperature: 1, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, seed: 1 };
// probabilities ∝ [8, 4, 2, 1, 1] (log-space logits)
const logits = Float32Array.from([8, 4, 2, 1, 1].map(Math.log));
const draws = (p: SamplingParams, n = 4000, prompt: number[] = []) => {
  const s = new Sampler(p, prompt, logits.length);
  const counts = new Array<number>(logits.length).fill(0);
  for (let i = 0; i < n; i++) counts[s.sample(logits).id]!++;
  return counts.map((c) => c / n);
};

describe("Sampler", () => {
  it("greedy picks the argmax; same seed → same sequence", () => {
    expect(new Sampler({ ...base, temperature: 0 }, [], 5).sample(logits).id).toBe(0);
    const a = new Sampler({ ...base, seed: 9 }, [], 5);
    const b = new Sampler({ ...base, seed: 9 }, [], 5);
    const xs = Array.from({ length: 50 }, () => a.sample(logits).id);
    expect(Array.from({ length: 50 }, () => b.sample(logits).id)).toEqual(xs);
  });

  it("temperature 1 follows the softmax", () => {
    const f = draws(base, 8000);
    const p = [8, 4, 2, 1, 1].map((x) => x / 16);
    p.forEach((pi, i) => expect(Math.abs(f[i]! - pi)).toBeLessThan(4 * Math.sqrt((pi * (1 - pi)) / 8000)));
  });

  it("top-k, top-p and min-p cut the tail", () => {
    expect(draws({ ...base, topK: 2 }).slice(2).every((x) => x === 0)).toBe(true);
    // top-p 0.7: 0.5 + 0.25 ≥ 0.7 → only the first two survive.
    expect(draws({ ...base, topP: 0.7 }).slice(2).every((x) => x === 0)).toBe(true);
    // min-p 0.2 of the top probability 0.5 = 0.1: 1/16 tokens are dropped, 2/16 kept.
    const f = draws({ ...base, minP: 0.2 });
    expect(f[3]).toBe(0);
    expect(f[4]).toBe(0);
    expect(f[2]).toBeGreaterThan(0);
    // A low temperature sharpens: token 0 dominates.
    expect(draws({ ...base, temperature: 0.2 })[0]).toBeGreaterThan(0.95);
  });

  it("penalties: repetition on prompt+output, presence/frequency on output counts", () => {
    // Repetition 4 on token 0 (in the prompt): its logit log 8 ≈ 2.08 becomes 0.52 < log 4 → token 1 wins greedy.
    expect(new Sampler({ ...base, temperature: 0, repetitionPenalty: 4 }, [0], 5).sample(logits).id).toBe(1);
    const s = new Sampler({ ...base, temperature: 0, frequencyPenalty: 0.5 }, [], 5);
    // Each acceptance of token 0 lowers it by 0.5; after 2 it is 2.08 − 1 = 1.08 < log 4 = 1.39.
    s.accept(0);
    expect(s.sample(logits).id).toBe(0);
    s.accept(0);
    expect(s.sample(logits).id).toBe(1);
    const pres = new Sampler({ ...base, temperature: 0, presencePenalty: 1 }, [0, 0, 0], 5);
    expect(pres.sample(logits).id).toBe(0); // presence ignores the prompt
    pres.accept(0);
    expect(pres.sample(logits).id).toBe(1);
  });

  it("logprobs are normalised log-softmax with sorted alternatives", () => {
    const r = new Sampler({ ...base, temperature: 0, logprobs: 3 }, [], 5).sample(logits);
    expect(r.logprob!.logprob).toBeCloseTo(Math.log(0.5), 5);
    expect(r.logprob!.top.map((t) => t.id)).toEqual([0, 1, 2]);
    expect(r.logprob!.top[2]!.logprob).toBeCloseTo(Math.log(2 / 16), 5);
  });
});

/** The textbook definition the bucketed cuts must reproduce: sort, top-k, min-p, top-p (renormalised). */
const maxOf = (x: Float32Array) => x.reduce((a, b) => Math.max(a, b), -Infinity);

function referenceNucleus(x: Float32Array, p: SamplingParams): number[] {
  const max = maxOf(x);
  const ids = Array.from(x.keys()).filter((i) => x[i]! >= max - 30 * p.temperature);
  ids.sort((a, b) => x[b]! - x[a]! || a - b);
  let n = ids.length;
  if (p.topK > 0) n = Math.min(n, p.topK);
  const w = (i: number) => Math.exp((x[i]! - max) / p.temperature);
  if (p.minP > 0) while (n > 1 && w(ids[n - 1]!) < p.minP) n--;
  if (p.topP < 1) {
    let mass = 0;
    for (let j = 0; j < n; j++) mass += w(ids[j]!);
    let acc = 0;
    for (let j = 0; j < n; j++) {
      acc += w(ids[j]!);
      if (acc >= p.topP * mass) {
        n = j + 1;
        break;
      }
    }
  }
  return ids.slice(0, n).sort((a, b) => a - b);
}

describe("Sampler nucleus on a 151,936-token vocabulary", () => {
  const V = 151936;
  const rand = seededRandom(7);
  const gauss = () => Math.sqrt(-2 * Math.log(rand() + 1e-12)) * Math.cos(2 * Math.PI * rand());
  const shapes: [string, Float32Array][] = [
    ["peaked (LLM-like)", Float32Array.from({ length: V }, () => gauss() * 2.5).map((v, i) => (i % 7919 === 0 ? 14 + (i % 5) : v))],
    ["flat", Float32Array.from({ length: V }, (_, i) => Math.sin(i) * 10)],
    ["ties", Float32Array.from({ length: V }, (_, i) => (i % 3) - 1)],
  ];
  const params: Partial<SamplingParams>[] = [
    { temperature: 0.6, topP: 0.95 },
    { temperature: 1, topK: 50 },
    { temperature: 1, topK: 2000, topP: 0.5 },
    { temperature: 0.7, minP: 0.05, topP: 0.9 },
    { temperature: 1.3, topP: 0.3 },
  ];
  for (const [shape, x] of shapes) {
    it(`${shape}: the same tokens as sorting the whole vocabulary`, () => {
      const max = maxOf(x);
      for (const q of params) {
        const p = { ...base, ...q };
        const got = Array.from(new Sampler(p, [], V).nucleus(x, max)).sort((a, b) => a - b);
        expect(got, JSON.stringify(q)).toEqual(referenceNucleus(x, p));
      }
    });
  }
});
