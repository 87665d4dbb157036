/**
 * The backend for OpenAI upstreams (`--upstream URL…`, vLLM/SGLang children, dsr instances): routes
 * each request to an instance, forwards the body, relays the answer while normalising reasoning
 * fields, error shape and usage, and measures TTFT and inter-token gaps.
 *
 * Retries: a request is retried on another instance only while no byte has reached the client
 * (connection refused, upstream 5xx, upstream died before its first event, or — for non-streaming
 * requests — at any point before the answer is complete, since nothing was sent yet). Once a streamed
 * byte went out, a failure is reported in-band and never replayed, so a client never sees a request
 * twice.
 */
import { createHash } from "node:crypto";
import type { UpstreamInstance } from "../runtime/upstream.js";
import { H1Pool, type BodyRead, type H1Response } from "./h1-pool.js";
import { HttpError, normaliseErrorBody } from "./http-error.js";
import type { GatewayMetrics } from "./metrics.js";
import type { ReasoningField } from "./reasoning.js";
import { Router } from "./router.js";
import type { ChatRequest } from "./schemas.js";
import { normaliseReasoning, SseRelay } from "./sse-relay.js";
import type { Backend, GenerationRequest, ModelCard } from "./types.js";

export interface ProxyOptions {
  instances: UpstreamInstance[];
  /** Names clients may use; the first is the default. Mapped to the upstream's own model id. */
  servedNames: string[];
  /** The upstream's model id (when it differs from the served names, the body is rewritten). */
  upstreamModel?: string;
  reasoningFields: readonly ReasoningField[];
  affinity: boolean;
  /** Extra tries on other instances before the first byte (default: instances - 1, at least 1). */
  maxRetries?: number;
  metrics: GatewayMetrics;
  maxModelLen?: number;
  ownedBy?: string;
  /** Extra /ready details (e.g. supervisor states). */
  describeExtra?: () => Record<string, unknown>;
}

const INCLUDE_USAGE = Buffer.from('"stream_options":{"include_usage":true},');

/** Raised inside one attempt when it may be retried elsewhere. */
class RetryableError extends Error {}

export class ProxyBackend implements Backend {
  private readonly router: Router<UpstreamInstance>;
  private readonly created = Math.floor(Date.now() / 1000);
  /** Generation requests go over these (h1-pool.ts); probes and /v1/models over the instance's undici pool. */
  private readonly h1: Map<UpstreamInstance, H1Pool>;

  constructor(private readonly o: ProxyOptions) {
    this.router = new Router(o.instances, { affinity: o.affinity });
    this.h1 = new Map(o.instances.map((i) => [i, new H1Pool(i.origin)]));
  }

  models(): ModelCard[] {
    return this.o.servedNames.map((id) => ({
      id,
      object: "model" as const,
      created: this.created,
      owned_by: this.o.ownedBy ?? "dsr",
      root: this.o.upstreamModel ?? id,
      max_model_len: this.o.maxModelLen,
    }));
  }

  ready(): boolean {
    return this.router.healthy().length > 0;
  }

  describe(): Record<string, unknown> {
    const m = this.o.metrics;
    const instances = this.o.instances.map((i) => {
      m.instanceHealthy.set({ instance: i.name }, i.healthy ? 1 : 0);
      m.instanceOutstanding.set({ instance: i.name }, i.outstanding);
      const e = i.engine;
      if (e?.kv_capacity_tokens) m.kvUsage.set({ instance: i.name }, (e.kv_used_tokens ?? 0) / e.kv_capacity_tokens);
      return { name: i.name, url: i.origin, healthy: i.healthy, outstanding: i.outstanding, error: i.lastError, engine: e };
    });
    return { instances, ...this.o.describeExtra?.() };
  }

  async handle(g: GenerationRequest): Promise<void> {
    const body = this.upstreamBody(g);
    const tried = new Set<UpstreamInstance>();
    const maxTries = 1 + (this.o.maxRetries ?? Math.max(1, this.o.instances.length - 1));
    const key = this.o.affinity ? affinityKey(g) : undefined;
    let lastErr: unknown;
    for (let attempt = 0; attempt < maxTries; attempt++) {
      const inst = this.router.pick(tried, key);
      if (!inst) break;
      tried.add(inst);
      if (attempt > 0) {
        g.record.retries = attempt;
        this.o.metrics.retries.inc();
      }
      g.record.instance = inst.name;
      inst.outstanding++;
      try {
        await this.attempt(g, inst, body.bytes, body.injectedUsage);
        return;
      } catch (e) {
        if (!(e instanceof RetryableError) || g.sink.started || g.cancel.aborted) throw unwrap(e, g);
        lastErr = e;
      } finally {
        inst.outstanding--;
      }
    }
    throw new HttpError(503, lastErr ? `no instance could serve the request: ${(lastErr as Error).message}` : "no healthy instance to serve the request", {
      code: "no_healthy_instance",
      headers: { "retry-after": "1" },
    });
  }

  async close(): Promise<void> {
    for (const p of this.h1.values()) p.close();
    await Promise.all(this.o.instances.map((i) => i.close()));
  }

  /** The body to forward: unchanged unless the model name must be mapped or usage must be asked for. */
  private upstreamBody(g: GenerationRequest): { bytes: Buffer | string | Buffer[]; injectedUsage: boolean } {
    const wantModel = this.o.upstreamModel && g.model !== this.o.upstreamModel ? this.o.upstreamModel : undefined;
    const injectUsage = g.stream && g.req.stream_options?.include_usage !== true;
    if (!wantModel && !injectUsage && g.req.model) return { bytes: g.rawBody, injectedUsage: false };
    if (!wantModel && g.req.model && !Object.hasOwn(g.req, "stream_options")) {
      // the common streaming case: add the key after the opening brace instead of re-serialising
      // the whole body (the body is a validated, non-empty JSON object, so a comma follows)
      const at = g.rawBody.indexOf(0x7b) + 1;
      return { bytes: [g.rawBody.subarray(0, at), INCLUDE_USAGE, g.rawBody.subarray(at)], injectedUsage: true };
    }
    const b = JSON.parse(g.rawBody.toString("utf8")) as Record<string, unknown>;
    b.model = wantModel ?? g.model;
    if (injectUsage) b.stream_options = { ...(b.stream_options as object | undefined), include_usage: true };
    return { bytes: JSON.stringify(b), injectedUsage: injectUsage };
  }

  /**
   * One try on one instance, over the hand-written HTTP/1.1 client (h1-pool.ts): upstream reads
   * arrive in callbacks and go straight to the client socket — no Readable, no promise per chunk.
   * A read whose events need no change is forwarded with the upstream's own chunk framing, one
   * write and no copy; otherwise the gateway's server frames the relay's output. The upstream is paused
   * only while the client pushes back.
   */
  private attempt(g: GenerationRequest, inst: UpstreamInstance, body: Buffer | string | Buffer[], injectedUsage: boolean): Promise<void> {
    const path = g.endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
    return new Promise<void>((resolve, reject) => {
      let res: H1Response | undefined;
      let mode: "error" | "stream" | "whole" = "whole";
      const parts: Buffer[] = [];
      let relay: SseRelay | undefined;
      let raw: ((framed: Buffer) => Promise<void> | void) | undefined;
      let tail: Buffer | undefined;
      let settled = false;
      let unsubscribe: (() => void) | undefined;
      const onAbort = () => {
        call.abort();
        done(g.cancel.reason instanceof Error ? g.cancel.reason : new Error("aborted"));
      };
      const done = (e?: unknown) => {
        if (settled) return;
        settled = true;
        unsubscribe?.();
        if (e === undefined) resolve();
        else reject(e);
      };
      const backpressure = (w: Promise<void> | void) => {
        if (!w) return;
        call.pause();
        void w.then(() => call.resume());
      };
      const relayRead = (read: BodyRead) => {
        if (mode !== "stream") return void parts.push(...read.ranges.slices(read.buf));
        if (read.ranges.n === 0) return; // only framing in this read
        if (!relay!.push(read.buf, read.ranges)) return;
        // the body ends in this read: its bytes leave with the response's end, one write instead of two
        if (read.last) return void (tail = relay!.out);
        if (!g.sink.started) {
          g.sink.startStream();
          backpressure(g.sink.write(relay!.out)); // the first write carries the headers
          raw = g.sink.rawChunks?.();
          return;
        }
        // whole chunks whose events passed the relay unchanged: forward the read as received
        backpressure(raw && read.aligned && relay!.passedThrough ? raw(read.raw) : g.sink.write(relay!.out));
      };
      const call = this.h1.get(inst)!.request(
        { path, headers: { "content-type": "application/json", accept: g.stream ? "text/event-stream" : "application/json", "x-request-id": g.id, ...inst.authHeaders() }, body },
        {
          onHead: (r) => {
            res = r;
            if (r.status >= 400) mode = "error";
            else if (g.stream && r.contentType.startsWith("text/event-stream")) {
              mode = "stream";
              relay = this.newRelay(g, inst, injectedUsage);
            }
          },
          onBody: (read) => {
            relayRead(read);
            // bytes of this read still queued for a slow client (or gathered for a whole body) must outlive it
            if (mode !== "stream" || g.sink.queued) call.retainRead();
          },
          onEnd: () => {
            try {
              const text = () => Buffer.concat(parts).toString("utf8");
              if (mode === "error") this.upstreamError(g, inst, res!.status, res!.headers, text());
              else if (mode === "stream") {
                const ended = this.endStream(g, inst, relay!, tail); // writes the end before it returns
                if (g.sink.queued) call.retainRead();
                return void ended.then(() => done(), done);
              } else this.relayWhole(g, inst, text());
              done();
            } catch (e) {
              done(e);
            }
          },
          onError: (e) => {
            if (g.cancel.aborted) return done(e);
            inst.markFailed(e.message);
            if (g.sink.started) return done(new HttpError(502, `upstream ${inst.name} failed mid-stream: ${e.message}`, { code: "upstream_error" }));
            // nothing reached the client yet (for non-stream requests: nothing at all), so another instance may try
            done(new RetryableError(`${inst.name}: ${e.message}`));
          },
        },
      );
      unsubscribe = g.cancel.onAbort(onAbort);
    });
  }

  private upstreamError(g: GenerationRequest, inst: UpstreamInstance, status: number, headers: Record<string, string | string[] | undefined>, text: string): void {
    const err = normaliseErrorBody(status, text);
    if (status >= 500) {
      if (status === 503) inst.markFailed(`HTTP 503: ${err.error.message}`);
      throw new RetryableError(`${inst.name} answered HTTP ${status}: ${err.error.message}`);
    }
    const ra = headers["retry-after"];
    g.sink.json(status, err, typeof ra === "string" ? { "retry-after": ra } : {});
  }

  private newRelay(g: GenerationRequest, inst: UpstreamInstance, injectedUsage: boolean): SseRelay {
    const ins = this.o.metrics.instrument(inst.name);
    let prev = 0;
    return new SseRelay({
      fields: this.o.reasoningFields,
      dropUsageChunk: injectedUsage,
      onEvent: (now) => {
        if (prev === 0) {
          g.record.ttftMs = now - g.t0;
          ins.ttft(g.record.ttftMs / 1000);
        } else ins.itl((now - prev) / 1000);
        prev = now;
      },
    });
  }

  /** `tail`: the last read's relayed bytes, held back so that they leave with the end of the response. */
  private async endStream(g: GenerationRequest, inst: UpstreamInstance, relay: SseRelay, tail: Buffer | undefined): Promise<void> {
    const left = relay.flush();
    const rest = tail && left ? Buffer.concat([tail, left]) : tail ?? left;
    if (!g.sink.started) {
      if (!rest) throw new RetryableError(`${inst.name} closed the stream without sending anything`);
      g.sink.startStream();
    }
    g.sink.end(rest);
    const s = relay.stats;
    g.record.promptTokens = s.promptTokens;
    g.record.completionTokens = s.completionTokens ?? s.events;
    g.record.finishReason = s.error ? "error" : s.finishReason ?? null;
  }

  private relayWhole(g: GenerationRequest, inst: UpstreamInstance, text: string): void {
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(text);
    } catch {
      throw new HttpError(502, `upstream ${inst.name} sent a body that is not JSON`, { code: "upstream_error" });
    }
    const choices = Array.isArray(obj.choices) ? (obj.choices as Record<string, unknown>[]) : [];
    const u = obj.usage as { prompt_tokens?: number; completion_tokens?: number } | undefined;
    g.record.promptTokens = u?.prompt_tokens;
    g.record.completionTokens = u?.completion_tokens;
    g.record.finishReason = (choices[0]?.finish_reason as string | undefined) ?? null;
    g.record.ttftMs = performance.now() - g.t0;
    if (this.o.reasoningFields.length > 0 && text.includes('"reasoning')) {
      normaliseReasoning(choices, this.o.reasoningFields);
      text = JSON.stringify(obj);
    }
    g.sink.raw(200, text, "application/json");
  }
}

function unwrap(e: unknown, g: GenerationRequest): unknown {
  if (g.cancel.aborted && g.cancel.reason instanceof HttpError) return g.cancel.reason;
  if (e instanceof RetryableError) return new HttpError(502, e.message, { code: "upstream_error" });
  return e;
}

/** Chat-session key: an explicit session header, else the system prompt + first user turn. */
function affinityKey(g: GenerationRequest): string | undefined {
  const h = g.headers["x-session-id"];
  if (typeof h === "string" && h) return "s:" + h;
  if (g.endpoint !== "chat") return undefined;
  const msgs = (g.req as ChatRequest).messages;
  const head = msgs.slice(0, 2).map((m) => `${m.role}:${typeof m.content === "string" ? m.content : JSON.stringify(m.content)}`).join("\n");
  return "p:" + createHash("sha1").update(head).digest("base64");
}
