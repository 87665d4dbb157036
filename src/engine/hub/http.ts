/**
 * The HTTP layer shared by both hubs: retries with exponential backoff + jitter (resets, timeouts,
 * 5xx, 408, 429 with a numeric Retry-After), redirects followed by hand so the auth header/cookie is
 * dropped when a redirect leaves the hub's origin (the CDN's signed URLs must not get the token, and
 * S3-style stores reject a second auth mechanism — facts §1.4), ranged streaming with stall
 * detection and resume-on-drop, and request/byte counters.
 *
 * Hand-written rather than taken from @huggingface/hub: its download path has no retry, no resume
 * and no stall handling, and knows nothing of ModelScope (facts §1.10).
 */
import { DsrError, interruptedError } from "../errors.js";
import { describeCause, hubHttpError, networkError, type RequestContext } from "./errors.js";
import type { RawResponse, Transport } from "./transport.js";

export interface RetryPolicy {
  /** Attempts per request (or per stretch of a ranged read without progress). */
  attempts: number;
  baseDelayMs: number;
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 7, baseDelayMs: 500, maxDelayMs: 30_000 };

export interface HttpConfig {
  transport: Transport;
  /** Auth headers sent only to `authOrigins` (Bearer for HF, the m_session_id cookie for ModelScope). */
  authHeaders: Record<string, string>;
  authOrigins: string[];
  signal?: AbortSignal;
  userAgent: string;
  retry: RetryPolicy;
  /** No response headers within this time → retry. */
  headersTimeoutMs: number;
  /** No body bytes for this long → the stream is stalled: abort it and resume from the last byte. */
  stallTimeoutMs: number;
  onRetry?: (e: RetryEvent) => void;
}

/** Reported before each backoff sleep (the CLI shows these with --verbose). */
export interface RetryEvent {
  repo: string;
  file?: string;
  attempt: number;
  of: number;
  delayMs: number;
  reason: string;
}

export interface Counters {
  requests: number;
  bytes: number;
}

class RetryableError extends Error {
  constructor(message: string, readonly retryAfterMs?: number, options?: { cause?: unknown }) {
    super(message, options);
  }
}

const MAX_REDIRECTS = 8;

export class HubHttp {
  readonly counters: Counters = { requests: 0, bytes: 0 };
  /** resolve URL → CDN URL it redirected to, so the parts of one file skip the hub round trip. */
  private readonly redirectCache = new Map<string, string>();

  constructor(readonly cfg: HttpConfig) {}

  /** One request: redirects followed by hand, auth only on hub origins, a headers timeout. No retries. */
  private async send(url: string, init: { method?: string; headers?: Record<string, string> }, signal: AbortSignal): Promise<{ res: RawResponse; url: string }> {
    let current = url;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const origin = new URL(current).origin;
      const headers: Record<string, string> = { "user-agent": this.cfg.userAgent, ...init.headers };
      if (this.cfg.authOrigins.includes(origin)) Object.assign(headers, this.cfg.authHeaders);
      this.counters.requests++;
      const res = await this.cfg.transport(current, { method: init.method ?? "GET", headers, signal });
      if (res.status >= 300 && res.status < 400 && res.headers.get("location")) {
        await res.cancel();
        current = new URL(res.headers.get("location")!, current).toString();
        continue;
      }
      return { res, url: current };
    }
    throw new DsrError("DSR_HUB_REDIRECTS", `too many redirects for ${url}`, { hint: "check HF_ENDPOINT / the ModelScope endpoint" });
  }

  /**
   * Per-attempt abort signal: the headers timeout first, then (after kick) the stall timeout. The
   * body loop calls kick() per chunk, so it only stamps the time; one coarse timer checks it.
   */
  private attemptSignal(): { signal: AbortSignal; kick(): void; done(): void; timedOut(): boolean } {
    const ac = new AbortController();
    let out = false;
    let last = performance.now();
    let limit = this.cfg.headersTimeoutMs;
    const tick = Math.max(50, Math.min(1000, this.cfg.stallTimeoutMs / 4, this.cfg.headersTimeoutMs / 4));
    const timer = setInterval(() => {
      if (performance.now() - last > limit) {
        out = true;
        clearInterval(timer);
        ac.abort(new Error(`no data for ${limit} ms`));
      }
    }, tick);
    const signal = this.cfg.signal ? AbortSignal.any([ac.signal, this.cfg.signal]) : ac.signal;
    return {
      signal,
      kick: () => {
        last = performance.now();
        limit = this.cfg.stallTimeoutMs;
      },
      done: () => clearInterval(timer),
      timedOut: () => out,
    };
  }

  private checkAborted(): void {
    if (this.cfg.signal?.aborted) throw interruptedError("download");
  }

  /** Exponential backoff with full jitter in [d/2, d]; a numeric Retry-After wins when larger. */
  private async backoff(attempt: number, error: unknown, ctx: RequestContext): Promise<void> {
    const { baseDelayMs, maxDelayMs } = this.cfg.retry;
    const retryAfterMs = error instanceof RetryableError ? error.retryAfterMs : undefined;
    const d = Math.min(maxDelayMs, baseDelayMs * 2 ** attempt);
    const wait = Math.max(d / 2 + Math.random() * (d / 2), Math.min(retryAfterMs ?? 0, 5 * 60_000));
    this.cfg.onRetry?.({ repo: ctx.repoId, file: ctx.file, attempt: attempt + 1, of: this.cfg.retry.attempts, delayMs: Math.round(wait), reason: reasonOf(error) });
    await sleep(wait, this.cfg.signal);
    this.checkAborted();
  }

  private async classify(res: RawResponse, ctx: RequestContext): Promise<never> {
    const body = await res.text().catch(() => "");
    if (res.status >= 500 || res.status === 429 || res.status === 408) {
      throw new RetryableError(`HTTP ${res.status}`, retryAfter(res.headers), { cause: hubHttpError(res.status, res.headers, body, ctx) });
    }
    throw hubHttpError(res.status, res.headers, body, ctx);
  }

  /** GET/HEAD with retries; returns an OK response (body unread) or throws a mapped DsrError. */
  async request(url: string, ctx: RequestContext, init: { method?: string; headers?: Record<string, string> } = {}): Promise<RawResponse> {
    let last: unknown;
    for (let attempt = 0; attempt < this.cfg.retry.attempts; attempt++) {
      this.checkAborted();
      const a = this.attemptSignal();
      try {
        const { res } = await this.send(url, init, a.signal);
        a.done();
        if (res.status >= 200 && res.status < 300) return res;
        await this.classify(res, ctx);
      } catch (e) {
        a.done();
        last = e;
        if (this.cfg.signal?.aborted) throw interruptedError("download");
        if (e instanceof DsrError) throw e;
        if (attempt + 1 < this.cfg.retry.attempts) await this.backoff(attempt, e, ctx);
      }
    }
    throw finalError(last, ctx, this.cfg.retry.attempts);
  }

  async json<T>(url: string, ctx: RequestContext): Promise<{ data: T; res: RawResponse }> {
    const res = await this.request(url, ctx, { headers: { accept: "application/json" } });
    const text = await res.text();
    this.counters.bytes += Buffer.byteLength(text);
    try {
      return { data: JSON.parse(text) as T, res };
    } catch {
      throw new DsrError("DSR_HUB_BAD_RESPONSE", `the hub answered ${url} with something that is not JSON`, {
        hint: "check HF_ENDPOINT / the ModelScope endpoint: a proxy or captive portal may be in the way",
      });
    }
  }

  /**
   * A `fetch` for libraries (@huggingface/hub's listFiles): same retries, auth and counters; a final
   * error status becomes a mapped DsrError so the library never sees it.
   */
  fetchFor(ctx: RequestContext): typeof fetch {
    return (async (input: string | URL | Request, init?: RequestInit) => {
      const url = typeof input === "string" ? input : input instanceof URL ? input.toString() : input.url;
      const headers = Object.fromEntries(new Headers(init?.headers).entries());
      delete headers.authorization; // auth is ours to add, per origin
      const res = await this.request(url, ctx, { method: init?.method, headers });
      const text = await res.text();
      this.counters.bytes += Buffer.byteLength(text);
      return new Response(text, { status: res.status, headers: res.headers });
    }) as typeof fetch;
  }

  /**
   * Streams bytes [start, end) of `url` into `onChunk(chunk, offset)` in order. A dropped or stalled
   * body is resumed from the first byte not yet delivered; the attempt budget resets whenever bytes
   * arrive, so a long file on a flaky link still finishes. A function `end` is read before each
   * chunk, so the caller may move it down while the body streams (never below what was delivered):
   * the read then stops there and drops the rest of the body.
   */
  async readRange(url: string, start: number, endOf: number | (() => number), ctx: RequestContext, onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>): Promise<void> {
    const end = typeof endOf === "number" ? () => endOf : endOf;
    let pos = start;
    let attempt = 0;
    let last: unknown;
    while (pos < end()) {
      this.checkAborted();
      const a = this.attemptSignal();
      const target = this.redirectCache.get(url) ?? url;
      let progressed = false;
      try {
        const { res, url: finalUrl } = await this.send(target, { headers: { range: `bytes=${pos}-${end() - 1}`, "accept-encoding": "identity" } }, a.signal);
        if (res.status < 200 || res.status >= 300) {
          if (target !== url) {
            // A cached CDN URL may have expired: forget it and go back through the hub.
            this.redirectCache.delete(url);
            await res.cancel();
            a.done();
            continue;
          }
          await this.classify(res, ctx);
        }
        if (new URL(finalUrl).origin !== new URL(url).origin) this.redirectCache.set(url, finalUrl);
        let skip = 0;
        if (res.status === 206) {
          const m = /^bytes (\d+)-(\d+)\//.exec(res.headers.get("content-range") ?? "");
          if (!m || Number(m[1]) !== pos) {
            await res.cancel();
            throw new RetryableError(`bad Content-Range "${res.headers.get("content-range")}" for bytes=${pos}-`);
          }
        } else if (pos !== 0) {
          // The server ignored Range (a proxy re-encoding, say): skip to pos rather than fail.
          skip = pos;
        }
        a.kick();
        for await (const value of res.body) {
          a.kick();
          this.counters.bytes += value.byteLength;
          let chunk = value;
          if (skip > 0) {
            const s = Math.min(skip, chunk.byteLength);
            skip -= s;
            chunk = chunk.subarray(s);
            if (chunk.byteLength === 0) continue;
          }
          const stop = end();
          if (pos >= stop) break;
          if (chunk.byteLength > stop - pos) chunk = chunk.subarray(0, stop - pos);
          const wait = onChunk(chunk, pos);
          if (wait) await wait; // most chunks only fill a buffer: no promise, no microtask
          pos += chunk.byteLength;
          progressed = true;
          if (pos >= end()) break; // leaving the loop drops the rest of the body
        }
        a.done();
        if (pos < end()) throw new RetryableError(`connection closed at byte ${pos} of ${end()}`);
      } catch (e) {
        a.done();
        last = a.timedOut() ? new Error(`stalled: ${describeCause(e)}`) : e;
        if (this.cfg.signal?.aborted) throw interruptedError("download");
        if (e instanceof DsrError) throw e;
        if (progressed) attempt = 0;
        if (++attempt >= this.cfg.retry.attempts) throw finalError(last, ctx, attempt);
        await this.backoff(attempt - 1, last, ctx);
      }
    }
  }
}

function reasonOf(e: unknown): string {
  if (e instanceof RetryableError) return e.cause instanceof DsrError ? e.cause.message : e.message;
  return describeCause(e);
}

function finalError(last: unknown, ctx: RequestContext, attempts: number): DsrError {
  if (last instanceof RetryableError && last.cause instanceof DsrError) return last.cause;
  return networkError(ctx, last, attempts);
}

function retryAfter(h: Headers): number | undefined {
  const v = h.get("retry-after");
  // Only the numeric (seconds) form is honoured, as huggingface_hub does (facts §1.4).
  return v && /^\d+(\.\d+)?$/.test(v.trim()) ? Number(v) * 1000 : undefined;
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
