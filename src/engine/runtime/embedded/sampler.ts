/**
 * Token sampling for one sequence: repetition (prompt + output, as transformers/vLLM), presence and
 * frequency (output only, as OpenAI) penalties, then greedy or temperature / top-k / top-p / min-p
 * sampling from a per-request seeded generator, so the same seed gives the same tokens regardless of
 * what else is in the batch. Logprobs are of the penalised distribution at temperature 1 (before any
 * constraint mask, as vLLM's default raw logprobs).
 */
import { DsrError } from "../../errors.js";
import type { SamplingParams, TokenLogprob } from "../types.js";

/** Which tokens may come next (constrained decoding, e.g. json-constraint.ts). */
export interface TokenFilter {
  allows(id: number): boolean;
  /** 1 for every allowed token of the vocabulary (may be a shared, cached array: read only). */
  mask(): Uint8Array;
}

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
/** Logit buckets for the top-k / top-p cuts (nucleus() says why). */
const BINS = 4096;

export class Sampler {
  private readonly rand: () => number;
  private readonly counts = new Map<number, number>();
  private readonly seen: Set<number>;
  private readonly work: Float32Array;
  /** The penalised logits with disallowed tokens at -Infinity (constrained steps only). */
  private masked?: Float32Array;
  // Scratch for nucleus(), per vocabulary entry and per bin.
  private readonly weight: Float64Array;
  private readonly cand: Int32Array;
  private readonly bin: Uint16Array;
  private readonly order: Int32Array;
  private readonly binSize = new Int32Array(BINS);
  private readonly starts = new Int32Array(BINS);
  private readonly fillAt = new Int32Array(BINS);

  /** Tokens accepted so far (for min_tokens). */
  private generated = 0;

  /** `stopIds`: what min_tokens holds back (the request's stop ids, EOS included). */
  constructor(private readonly p: SamplingParams, promptIds: readonly number[], vocab: number, private readonly stopIds: readonly number[] = []) {
    this.rand = seededRandom(p.seed ?? Math.floor(Math.random() * 2 ** 32));
    this.seen = new Set(p.repetitionPenalty !== 1 ? promptIds : []);
    this.work = new Float32Array(vocab);
    this.weight = new Float64Array(vocab);
    this.cand = new Int32Array(vocab);
    this.bin = new Uint16Array(vocab);
    this.order = new Int32Array(vocab);
  }

  /** Records a generated token (penalties see it from the next step on). */
  accept(id: number): void {
    this.generated++;
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    if (this.p.repetitionPenalty !== 1) this.seen.add(id);
  }

  sample(logits: Float32Array, filter?: TokenFilter): { id: number; logprob?: TokenLogprob } {
    const { repetitionPenalty: rep, presencePenalty: pres, frequencyPenalty: freq, logitBias: bias } = this.p;
    const holdStops = this.generated < (this.p.minTokens ?? 0) && this.stopIds.length > 0;
    // Penalties, the bias and min_tokens edit a copy; without them the logits (a view of the step's output) are read as they are.
    const penalised = rep !== 1 || pres !== 0 || freq !== 0 || bias !== undefined || holdStops;
    const x = penalised ? this.work : logits;
    if (penalised) x.set(logits);
    if (rep !== 1) for (const id of this.seen) x[id] = x[id]! > 0 ? x[id]! / rep : x[id]! * rep;
    if (pres !== 0 || freq !== 0) for (const [id, c] of this.counts) x[id] = x[id]! - pres - freq * c;
    if (bias) for (const [id, b] of bias) x[id] = x[id]! + b;
    if (holdStops) for (const id of this.stopIds) x[id] = -Infinity;
    let max = -Infinity;
    let argmax = 0;
    for (let i = 0; i < x.length; i++) if (x[i]! > max) (max = x[i]!), (argmax = i);
    let id = this.p.temperature <= 0 ? argmax : this.pick(this.nucleus(x, max));
    // Lazy check: the token it would pick anyway is usually allowed (inside a JSON string or number
    // almost anything is), so one check replaces a scan of the vocabulary (constrained() says why a
    // rejection goes straight to the full mask).
    if (filter && !filter.allows(id)) id = this.constrained(x, filter);
    return { id, logprob: this.p.logprobs === undefined ? undefined : logprobOf(x, max, id, this.p.logprobs) };
  }

  /**
   * The tokens that survive temperature → top-k → min-p → top-p (in no particular order; their
   * weights are in this.weight), each cut applied to the distribution the previous ones left
   * (renormalised, as transformers' logits warpers and vLLM do). Public for the tests.
   *
   * Every cut keeps a prefix of the candidates in descending order, so the candidates are bucketed by
   * logit (a counting sort into BINS bins over their range) and only the bin where a cut falls is
   * sorted exactly. A full sort was O(V log V) with a closure comparator: on a flat distribution,
   * where all 151,936 tokens are candidates, it took ~50 ms per token.
   */
  nucleus(x: Float32Array, max: number): Int32Array {
    const { temperature: T, topK, topP, minP } = this.p;
    // Candidates: within 30·T of the max (the rest weigh < vocab·e^-30 together) and, for min-p, with
    // p ≥ minP·p_max, i.e. logit ≥ max + T·ln(minP).
    const cut = Math.max(max - CANDIDATE_WINDOW * T, minP > 0 ? max + T * Math.log(minP) : -Infinity);
    const { weight, bin, cand, order, binSize: counts } = this;
    let n = 0;
    let lo = max;
    for (let i = 0; i < x.length; i++) {
      const v = x[i]!;
      if (v < cut) continue;
      cand[n++] = i;
      weight[i] = Math.exp((v - max) / T);
      if (v < lo) lo = v;
    }
    if (!(topK > 0 && topK < n) && topP >= 1) return cand.subarray(0, n);
    // Counting sort of the candidates by logit bin; ids stay ascending within a bin.
    const scale = lo < max ? (BINS - 1e-9) / (max - lo) : 0;
    counts.fill(0);
    for (let j = 0; j < n; j++) counts[(bin[j] = Math.floor((max - x[cand[j]!]!) * scale))]!++;
    const starts = this.starts;
    for (let b = 0, at = 0; b < BINS; b++) (starts[b] = at), (at += counts[b]!);
    const fill = this.fillAt;
    fill.set(starts);
    for (let j = 0; j < n; j++) order[fill[bin[j]!]!++] = cand[j]!;
    const byLogit = (a: number, b: number) => x[b]! - x[a]! || a - b;
    const sorted = new Set<number>();
    const sortBin = (b: number) => {
      if (!sorted.has(b)) order.subarray(starts[b]!, starts[b]! + counts[b]!).sort(byLogit), sorted.add(b);
    };

    // Top-k: the first k of the order (the bin holding the k-th candidate is sorted).
    if (topK > 0 && topK < n) {
      let b = 0;
      while (starts[b]! + counts[b]! < topK) b++;
      sortBin(b);
      n = topK;
    }
    // Top-p over what is left: the shortest prefix whose mass reaches topP of it.
    if (topP < 1) {
      let mass = 0;
      for (let j = 0; j < n; j++) mass += weight[order[j]!]!;
      const want = topP * mass;
      let acc = 0;
      let b = 0;
      for (; b < BINS && starts[b]! + counts[b]! <= n; b++) {
        let m = 0;
        for (let j = starts[b]!; j < starts[b]! + counts[b]!; j++) m += weight[order[j]!]!;
        if (acc + m >= want) break;
        acc += m;
      }
      if (b < BINS && starts[b]! < n) {
        sortBin(b);
        for (let j = starts[b]!; j < n; j++) {
          acc += weight[order[j]!]!;
          if (acc >= want) {
            n = j + 1;
            break;
          }
        }
      }
    }
    return order.subarray(0, n);
  }

  /**
   * After a rejection, draws again with the filter's full mask applied. Greedy gets exactly the best
   * allowed token and plain temperature sampling exactly the distribution restricted to allowed
   * tokens (accept-or-redraw is rejection sampling). With top-k / top-p / min-p a first pick that
   * passes was cut from the unmasked distribution, where vLLM cuts the masked one: allowed tokens at
   * the tail weigh slightly differently. Retrying with only the rejected tokens masked, before asking
   * for the mask, was tried and dropped: each retry re-runs the cuts (a flat 152k-token distribution
   * took 36 ms per token where a draw under the mask takes 10), and letting the mask cache decide when to stop
   * retrying made a seed's tokens depend on what other requests had cached. Masks are cached per
   * state (json-constraint.ts), so the full mask is usually one O(vocab) pass.
   */
  private constrained(x: Float32Array, filter: TokenFilter): number {
    const y = (this.masked ??= new Float32Array(x.length));
    const mask = filter.mask();
    let max = -Infinity;
    let argmax = -1;
    for (let i = 0; i < y.length; i++) {
      const v = mask[i] ? x[i]! : -Infinity;
      y[i] = v;
      if (v > max) (max = v), (argmax = i);
    }
    if (argmax < 0) throw new DsrError("DSR_CONSTRAINT_DEAD_END", "no token of the vocabulary can continue the constrained output", { hint: "the tokenizer lacks single-byte tokens; report this with the model name" });
    return this.p.temperature <= 0 ? argmax : this.pick(this.nucleus(y, max));
  }

  /** Draws one of `ids` with probability ∝ its weight. */
  private pick(ids: Int32Array): number {
    const n = ids.length;
    let mass = 0;
    for (let j = 0; j < n; j++) mass += this.weight[ids[j]!]!;
    let r = this.rand() * mass;
    for (let j = 0; j < n; j++) {
      r -= this.weight[ids[j]!]!;
      if (r <= 0) return ids[j]!;
    }
    return ids[n - 1]!;
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
