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
import type { Readable } from "node:stream";
import type { UpstreamInstance } from "../runtime/upstream.js";
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

/** Raised inside one attempt when it may be retried elsewhere. */
class RetryableError extends Error {}

export class ProxyBackend implements Backend {
  private readonly router: Router<UpstreamInstance>;
  private readonly created = Math.floor(Date.now() / 1000);

  constructor(private readonly o: ProxyOptions) {
    this.router = new Router(o.instances, { affinity: o.affinity });
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
      return { name: i.name, url: i.origin, healthy: i.healthy, outstanding: i.outstanding, error: i.lastError };
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
        if (!(e instanceof RetryableError) || g.sink.started || g.signal.aborted) throw unwrap(e, g);
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
    await Promise.all(this.o.instances.map((i) => i.close()));
  }

  /** The body to forward: unchanged unless the model name must be mapped or usage must be asked for. */
  private upstreamBody(g: GenerationRequest): { bytes: Buffer | string; injectedUsage: boolean } {
    const wantModel = this.o.upstreamModel && g.model !== this.o.upstreamModel ? this.o.upstreamModel : undefined;
    const injectUsage = g.stream && g.req.stream_options?.include_usage !== true;
    if (!wantModel && !injectUsage && g.req.model) return { bytes: g.rawBody, injectedUsage: false };
    const b = JSON.parse(g.rawBody.toString("utf8")) as Record<string, unknown>;
    b.model = wantModel ?? g.model;
    if (injectUsage) b.stream_options = { ...(b.stream_options as object | undefined), include_usage: true };
    return { bytes: JSON.stringify(b), injectedUsage: injectUsage };
  }

  private async attempt(g: GenerationRequest, inst: UpstreamInstance, body: Buffer | string, injectedUsage: boolean): Promise<void> {
    const path = g.endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
    let res;
    try {
      res = await inst.pool.request({
        path,
        method: "POST",
        headers: { "content-type": "application/json", accept: g.stream ? "text/event-stream" : "application/json", "x-request-id": g.id, ...inst.authHeaders() },
        body,
        signal: g.signal,
      });
    } catch (e) {
      if (g.signal.aborted) throw e;
      inst.markFailed((e as Error).message);
      throw new RetryableError(`${inst.name}: ${(e as Error).message}`);
    }
    if (res.statusCode >= 400) {
      const text = await res.body.text().catch(() => "");
      const err = normaliseErrorBody(res.statusCode, text);
      if (res.statusCode >= 500) {
        if (res.statusCode === 503) inst.markFailed(`HTTP 503: ${err.error.message}`);
        throw new RetryableError(`${inst.name} answered HTTP ${res.statusCode}: ${err.error.message}`);
      }
      const headers: Record<string, string> = {};
      const ra = res.headers["retry-after"];
      if (typeof ra === "string") headers["retry-after"] = ra;
      g.sink.json(res.statusCode, err, headers);
      return;
    }
    const ctype = String(res.headers["content-type"] ?? "");
    if (g.stream && ctype.startsWith("text/event-stream")) return this.relayStream(g, inst, res.body, injectedUsage);
    return this.relayWhole(g, inst, res.body);
  }

  private async relayStream(g: GenerationRequest, inst: UpstreamInstance, body: Readable, injectedUsage: boolean): Promise<void> {
    const ins = this.o.metrics.instrument(inst.name);
    let prev = 0;
    const relay = new SseRelay({
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
    // Event-driven rather than `for await`: no promise per chunk on the hot path; the upstream is
    // paused only while the client socket pushes back.
    await new Promise<void>((resolve, reject) => {
      let failed = false;
      const fail = (e: Error) => {
        if (failed) return;
        failed = true;
        if (g.signal.aborted) return reject(e);
        inst.markFailed(`stream broke: ${e.message}`);
        if (!g.sink.started) return reject(new RetryableError(`${inst.name} failed before its first event: ${e.message}`));
        reject(new HttpError(502, `upstream ${inst.name} failed mid-stream: ${e.message}`, { code: "upstream_error" }));
      };
      body.on("data", (chunk: Buffer) => {
        const out = relay.push(chunk);
        if (!out) return;
        if (!g.sink.started) g.sink.startStream();
        const w = g.sink.write(out);
        if (w) {
          body.pause();
          void w.then(() => body.resume());
        }
      });
      body.once("end", () => resolve());
      body.once("error", fail);
      body.once("close", () => {
        if (!body.readableEnded) fail(new Error("upstream connection closed"));
      });
    });
    const rest = relay.flush();
    if (!g.sink.started) {
      if (!rest) throw new RetryableError(`${inst.name} closed the stream without sending anything`);
      g.sink.startStream();
    }
    if (rest) await g.sink.write(rest);
    g.sink.end();
    const s = relay.stats;
    g.record.promptTokens = s.promptTokens;
    g.record.completionTokens = s.completionTokens ?? s.events;
    g.record.finishReason = s.error ? "error" : s.finishReason ?? null;
  }

  private async relayWhole(g: GenerationRequest, inst: UpstreamInstance, body: { text(): Promise<string> }): Promise<void> {
    let text: string;
    try {
      text = await body.text();
    } catch (e) {
      if (g.signal.aborted) throw e;
      inst.markFailed(`body broke: ${(e as Error).message}`);
      throw new RetryableError(`${inst.name} failed while sending its answer: ${(e as Error).message}`); // nothing sent yet
    }
    let obj: Record<string, unknown> | undefined;
    try {
      obj = JSON.parse(text);
    } catch {
      throw new HttpError(502, `upstream ${inst.name} sent a body that is not JSON`, { code: "upstream_error" });
    }
    const choices = Array.isArray(obj!.choices) ? (obj!.choices as Record<string, unknown>[]) : [];
    const u = obj!.usage as { prompt_tokens?: number; completion_tokens?: number } | undefined;
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
  if (g.signal.aborted && g.signal.reason instanceof HttpError) return g.signal.reason;
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
