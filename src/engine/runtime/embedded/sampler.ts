/**
 * Token sampling for one sequence: repetition (prompt + output, as transformers/vLLM), presence and
 * frequency (output only, as OpenAI) penalties, then greedy or temperature / top-k / top-p / min-p
 * sampling from a per-request seeded generator, so the same seed gives the same tokens regardless of
 * what else is in the batch. Logprobs are of the penalised distribution at temperature 1.
 */
import type { SamplingParams, TokenLogprob } from "../types.js";

/** mulberry32: small, fast, good enough for sampling; seeded per request. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Candidates whose logit is this far below the max carry < e^-30 of the mass each: never worth sorting. */
const CANDIDATE_WINDOW = 30;

export class Sampler {
  private readonly rand: () => number;
  private readonly counts = new Map<number, number>();
  private readonly seen: Set<number>;
  private readonly work: Float32Array;

  constructor(private readonly p: SamplingParams, promptIds: readonly number[], vocab: number) {
    this.rand = seededRandom(p.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.seen = new Set(p.repetitionPenalty !== 1 ? promptIds : []);
    this.work = new Float32Array(vocab);
  }

  /** Records a generated token (penalties see it from the next step on). */
  accept(id: number): void {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    if (this.p.repetitionPenalty !== 1) this.seen.add(id);
  }

  sample(logits: Float32Array): { id: number; logprob?: TokenLogprob } {
    const x = this.work;
    x.set(logits);
    const { repetitionPenalty: rep, presencePenalty: pres, frequencyPenalty: freq } = this.p;
    if (rep !== 1) for (const id of this.seen) x[id] = x[id]! > 0 ? x[id]! / rep : x[id]! * rep;
    if (pres !== 0 || freq !== 0) for (const [id, c] of this.counts) x[id] = x[id]! - pres - freq * c;
    let max = -Infinity;
    let argmax = 0;
    for (let i = 0; i < x.length; i++) if (x[i]! > max) (max = x[i]!), (argmax = i);
    const id = this.p.temperature <= 0 ? argmax : this.draw(x, max);
    return { id, logprob: this.p.logprobs === undefined ? undefined : logprobOf(x, max, id, this.p.logprobs) };
  }

  private draw(x: Float32Array, max: number): number {
    const { temperature: T, topK, topP, minP } = this.p;
    // Softmax at temperature T over candidates near the max: the others together weigh < vocab·e^-30.
    const cut = max - CANDIDATE_WINDOW * T;
    const cand: number[] = [];
    let total = 0;
    for (let i = 0; i < x.length; i++) {
      if (x[i]! < cut) continue;
      total += Math.exp((x[i]! - max) / T);
      cand.push(i);
    }
    cand.sort((a, b) => x[b]! - x[a]! || a - b);
    let n = cand.length;
    if (topK > 0) n = Math.min(n, topK);
    const prob = (i: number) => Math.exp((x[i]! - max) / T) / total;
    if (minP > 0) {
      const floor = minP * prob(cand[0]!);
      while (n > 1 && prob(cand[n - 1]!) < floor) n--;
    }
    if (topP < 1) {
      let acc = 0;
      for (let j = 0; j < n; j++) {
        acc += prob(cand[j]!);
        if (acc >= topP) {
          n = j + 1;
          break;
        }
      }
    }
    let mass = 0;
    for (let j = 0; j < n; j++) mass += prob(cand[j]!);
    let r = this.rand() * mass;
    for (let j = 0; j < n; j++) {
      r -= prob(cand[j]!);
      if (r <= 0) return cand[j]!;
    }
    return cand[n - 1]!;
  }
}

function logprobOf(x: Float32Array, max: number, id: number, topN: number): TokenLogprob {
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += Math.exp(x[i]! - max);
  const lse = max + Math.log(sum);
  const top: { id: number; logprob: number }[] = [];
  if (topN > 0) {
    // One pass keeping the best topN (small n: insertion into a sorted array).
    const best: number[] = [];
    for (let i = 0; i < x.length; i++) {
      if (best.length === topN && x[i]! <= x[best[best.length - 1]!]!) continue;
      let j = best.length;
      while (j > 0 && x[best[j - 1]!]! < x[i]!) j--;
      best.splice(j, 0, i);
      if (best.length > topN) best.pop();
    }
    for (const b of best) top.push({ id: b, logprob: x[b]! - lse });
  }
  return { id, logprob: x[id]! - lse, top };
}
