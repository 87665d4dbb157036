/**
 * Limits per API key (`--key-rpm`, `--key-tpm`, `--key-max-parallel`), so that one client of a
 * shared endpoint cannot take every slot: requests per minute and tokens per minute as buckets (burst
 * up to the minute's allowance, refilled continuously) and generation requests in flight. Tokens
 * (prompt + completion, as OpenAI counts them) are known only when a request ends, so they are taken
 * then, and the bucket may go below zero: the key's next request waits until it is back above. A
 * request over a limit is refused at once with 429 and Retry-After, before it takes a gateway slot;
 * other keys are unaffected. Keys are the configured ones, so the per-key state stays as small as the
 * key file. With gateway workers the primary keeps the one KeyLimits and the workers ask it
 * (serve-workers.ts), so a key's limits hold across them.
 */
import { HttpError } from "./http-error.js";

export interface KeyLimitOptions {
  /** Requests per minute per key (0: none). */
  rpm: number;
  /** Tokens (prompt + completion) per minute per key (0: none). */
  tpm?: number;
  /** Generation requests in flight per key (0: none). */
  maxParallel: number;
}

/**
 * Called once when an admitted request ends, with its tokens (prompt + completion). `headers`:
 * OpenAI's `x-ratelimit-*` headers for the answer, where a request or token rate is limited.
 */
export type KeyRelease = ((tokens?: number) => void) & { headers?: Record<string, string> };

/** Admits requests per key: at once in this process (KeyLimits), or by asking the process that holds the limits. */
export interface KeyGate {
  /** Admits one request of `key`, or throws (rejects) with a 429 HttpError. */
  admit(key: string): KeyRelease | Promise<KeyRelease>;
}

interface KeyState {
  /** Requests left in the minute's bucket, and when it was last refilled. */
  tokens: number;
  at: number;
  /** Tokens left in the tokens-per-minute bucket (may be below zero), and when it was last refilled. */
  budget: number;
  budgetAt: number;
  inFlight: number;
}

export class KeyLimits implements KeyGate {
  private readonly keys = new Map<string, KeyState>();

  constructor(private readonly o: KeyLimitOptions, private readonly now: () => number = () => performance.now()) {}

  /** Admits one request of `key` (throws a 429 when over a limit); call the returned function with its tokens when it ends. */
  admit(key: string): KeyRelease {
    const t = this.now();
    const tpm = this.o.tpm ?? 0;
    let s = this.keys.get(key);
    if (!s) this.keys.set(key, (s = { tokens: this.o.rpm, at: t, budget: tpm, budgetAt: t, inFlight: 0 }));
    const state = s;
    const refuse = (message: string, retryAfter: string) => new HttpError(429, message, { code: "rate_limit_exceeded", headers: { "retry-after": retryAfter, ...this.rateHeaders(state, t) } });
    if (this.o.maxParallel > 0 && s.inFlight >= this.o.maxParallel) {
      throw refuse(`API key ${key} has ${s.inFlight} requests in flight, its limit (--key-max-parallel ${this.o.maxParallel})`, "1");
    }
    if (tpm > 0) {
      s.budget = Math.min(tpm, s.budget + (t - s.budgetAt) * (tpm / 60_000));
      s.budgetAt = t;
      if (s.budget <= 0) {
        const wait = Math.max(1, Math.ceil((-s.budget + 1) / (tpm / 60_000) / 1000));
        throw refuse(`API key ${key} is over its ${tpm} tokens per minute (--key-tpm)`, String(wait));
      }
    }
    if (this.o.rpm > 0) {
      const perMs = this.o.rpm / 60_000;
      s.tokens = Math.min(this.o.rpm, s.tokens + (t - s.at) * perMs);
      s.at = t;
      if (s.tokens < 1) {
        const wait = Math.ceil((1 - s.tokens) / perMs / 1000);
        throw refuse(`API key ${key} is over its ${this.o.rpm} requests per minute (--key-rpm)`, String(wait));
      }
      s.tokens -= 1;
    }
    s.inFlight++;
    let done = false;
    const release: KeyRelease = (tokens = 0) => {
      if (done) return;
      done = true;
      s.inFlight--;
      if (tpm > 0) s.budget -= tokens;
    };
    release.headers = this.rateHeaders(s, t);
    return release;
  }

  /**
   * OpenAI's rate-limit headers for a key's state (buckets refilled up to `t`): each limit, what is
   * left of it, and how long until it is whole again. None for --key-max-parallel, which OpenAI has
   * no header for.
   */
  private rateHeaders(s: KeyState, t: number): Record<string, string> | undefined {
    const tpm = this.o.tpm ?? 0;
    if (this.o.rpm === 0 && tpm === 0) return undefined;
    const h: Record<string, string> = {};
    if (this.o.rpm > 0) {
      const left = Math.min(this.o.rpm, s.tokens + (t - s.at) * (this.o.rpm / 60_000));
      h["x-ratelimit-limit-requests"] = String(this.o.rpm);
      h["x-ratelimit-remaining-requests"] = String(Math.max(0, Math.floor(left)));
      h["x-ratelimit-reset-requests"] = duration((this.o.rpm - left) / (this.o.rpm / 60_000));
    }
    if (tpm > 0) {
      const left = Math.min(tpm, s.budget + (t - s.budgetAt) * (tpm / 60_000));
      h["x-ratelimit-limit-tokens"] = String(tpm);
      h["x-ratelimit-remaining-tokens"] = String(Math.max(0, Math.floor(left)));
      h["x-ratelimit-reset-tokens"] = duration((tpm - left) / (tpm / 60_000));
    }
    return h;
  }
}

/** Whether any of the limits is set. */
export const hasKeyLimits = (o: KeyLimitOptions) => o.rpm > 0 || (o.tpm ?? 0) > 0 || o.maxParallel > 0;

/** A wait as OpenAI writes it in `x-ratelimit-reset-*`: `20ms`, `1.5s`, `6m0s`. */
export function duration(ms: number): string {
  ms = Math.round(ms * 1000) / 1000; // a bucket's arithmetic leaves float dust: 30000.000000004 is 30s
  if (ms < 1000) return `${Math.ceil(ms)}ms`;
  const secs = Math.ceil(ms) / 1000;
  const m = Math.floor(secs / 60);
  const rest = +(secs - m * 60).toFixed(3);
  return m > 0 ? `${m}m${rest}s` : `${rest}s`;
}
