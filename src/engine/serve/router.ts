/**
 * Picks an instance for each request: least outstanding requests among the healthy ones, or the
 * better of two random picks ("power of two choices") when there are many, so a stale view of the
 * loads does not send a burst to one instance. With affinity on, requests with the same affinity key
 * (chat session: system prompt + first user turn, or an `x-session-id` header) return to the instance
 * that served the key before, unless it is unhealthy or clearly busier than the least-loaded one —
 * SGLang's cache-aware balance guard (facts §3.2), simplified to request counts.
 */
export interface RoutedInstance {
  readonly name: string;
  readonly healthy: boolean;
  outstanding: number;
}

export interface RouterOptions {
  affinity: boolean;
  /** Above this many healthy instances, use power-of-two-choices. */
  p2cThreshold?: number;
  /** Affinity is ignored when the sticky instance has this many more requests than the least loaded. */
  balanceAbs?: number;
  /** Remembered affinity keys (LRU). */
  maxKeys?: number;
  random?: () => number;
}

export class Router<T extends RoutedInstance> {
  private readonly sticky = new Map<string, T>();
  private readonly rnd: () => number;

  constructor(readonly instances: readonly T[], private readonly o: RouterOptions) {
    this.rnd = o.random ?? Math.random;
  }

  healthy(): T[] {
    return this.instances.filter((i) => i.healthy);
  }

  /** An instance for the next request: healthy, not in `exclude`, and taking it when `accept` says which can. */
  pick(exclude?: ReadonlySet<T>, affinityKey?: string, accept?: (i: T) => boolean): T | undefined {
    // the common case (a few instances, no affinity) scans them in place: no array per request
    if (!this.o.affinity && this.instances.length <= (this.o.p2cThreshold ?? 4)) return this.leastLoadedOf(this.instances, exclude, accept);
    const cands = this.instances.filter((i) => i.healthy && !exclude?.has(i) && (!accept || accept(i)));
    if (cands.length === 0) return undefined;
    const least = this.leastLoaded(cands);
    if (!this.o.affinity || affinityKey === undefined) return least;
    const prev = this.sticky.get(affinityKey);
    let chosen = least;
    if (prev && cands.includes(prev) && prev.outstanding - least.outstanding <= (this.o.balanceAbs ?? 4)) chosen = prev;
    this.sticky.delete(affinityKey);
    this.sticky.set(affinityKey, chosen);
    if (this.sticky.size > (this.o.maxKeys ?? 100_000)) this.sticky.delete(this.sticky.keys().next().value!);
    return chosen;
  }

  private leastLoaded(cands: T[]): T {
    if (cands.length > (this.o.p2cThreshold ?? 4)) {
      const a = cands[Math.floor(this.rnd() * cands.length)];
      let b = cands[Math.floor(this.rnd() * (cands.length - 1))];
      if (b === a) b = cands[cands.length - 1];
      return b.outstanding < a.outstanding ? b : a;
    }
    return this.leastLoadedOf(cands)!;
  }

  /** The healthy, not excluded (and accepted) instance with the fewest outstanding requests. */
  private leastLoadedOf(xs: readonly T[], exclude?: ReadonlySet<T>, accept?: (i: T) => boolean): T | undefined {
    // start the scan at a random offset so ties spread instead of always landing on instance 0
    const off = xs.length > 1 ? Math.floor(this.rnd() * xs.length) : 0;
    let best: T | undefined;
    for (let k = 0; k < xs.length; k++) {
      const c = xs[(off + k) % xs.length];
      if (c.healthy && !exclude?.has(c) && (!best || c.outstanding < best.outstanding) && (!accept || accept(c))) best = c;
    }
    return best;
  }
}
