/**
 * Limits per API key (`--key-rpm`, `--key-max-parallel`), so that one client of a shared endpoint
 * cannot take every slot: requests per minute as a token bucket (burst up to the minute's allowance,
 * refilled continuously) and generation requests in flight. A request over either is refused at once
 * with 429 and Retry-After, before it takes a gateway slot; other keys are unaffected. Keys are the
 * configured ones, so the per-key state stays as small as the key file.
 */
import { HttpError } from "./http-error.js";

export interface KeyLimitOptions {
  /** Requests per minute per key (0: none). */
  rpm: number;
  /** Generation requests in flight per key (0: none). */
  maxParallel: number;
}

interface KeyState {
  tokens: number;
  at: number;
  inFlight: number;
}

export class KeyLimits {
  private readonly keys = new Map<string, KeyState>();

  constructor(private readonly o: KeyLimitOptions, private readonly now: () => number = () => performance.now()) {}

  /** Admits one request of `key` (throws a 429 when over a limit); call the returned function when it ends. */
  admit(key: string): () => void {
    const t = this.now();
    let s = this.keys.get(key);
    if (!s) this.keys.set(key, (s = { tokens: this.o.rpm, at: t, inFlight: 0 }));
    if (this.o.maxParallel > 0 && s.inFlight >= this.o.maxParallel) {
      throw new HttpError(429, `API key ${key} has ${s.inFlight} requests in flight, its limit (--key-max-parallel ${this.o.maxParallel})`, { code: "rate_limit_exceeded", headers: { "retry-after": "1" } });
    }
    if (this.o.rpm > 0) {
      const perMs = this.o.rpm / 60_000;
      s.tokens = Math.min(this.o.rpm, s.tokens + (t - s.at) * perMs);
      s.at = t;
      if (s.tokens < 1) {
        const wait = Math.ceil((1 - s.tokens) / perMs / 1000);
        throw new HttpError(429, `API key ${key} is over its ${this.o.rpm} requests per minute (--key-rpm)`, { code: "rate_limit_exceeded", headers: { "retry-after": String(wait) } });
      }
      s.tokens -= 1;
    }
    s.inFlight++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      s.inFlight--;
    };
  }
}
