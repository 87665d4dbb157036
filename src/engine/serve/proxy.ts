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
import type { CancelListener } from "./cancel.js";
import { H1Pool, type BodyRead, type H1Call, type H1Handler, type H1Response } from "./h1-pool.js";
import { HttpError, normaliseErrorBody } from "./http-error.js";
import type { GatewayMetrics, Instrument } from "./metrics.js";
import type { ReasoningField } from "./reasoning.js";
import { Router } from "./router.js";
import type { ChatRequest } from "./schemas.js";
import { NativeStream } from "./relay-handoff.js";
import type { AnswerBooks } from "./answer-books.js";
import { MessagesBooks } from "./messages-books.js";
import { ResponsesBooks } from "./responses-books.js";
import { normaliseReasoning, SseRelay, type TokenListener } from "./sse-relay.js";
import type { DetokenizeRequest, TokenizeRequest, TokensOp } from "./tokenize.js";
import type { Backend, ForwardRequest, GenerationRequest, ModelCard } from "./types.js";

export interface ProxyOptions {
  instances: UpstreamInstance[];
  /** Names clients may use; the first is the default. Mapped to the upstream's own model id. */
  servedNames: string[];
  /** The upstream's model id (when it differs from the served names, the body is rewritten). */
  upstreamModel?: string;
  /**
   * The upstreams serve different models: every model they list is served under its own name, and a
   * request goes only to an instance that listed its model (`servedNames` is then only the start-up view).
   */
  multiModel?: boolean;
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
/** The passed-through routes whose answers are generations, and who reads their books. */
const BOOKS = new Map<string, new (...a: ConstructorParameters<typeof ResponsesBooks>) => AnswerBooks>([
  ["/v1/responses", ResponsesBooks],
  ["/v1/messages", MessagesBooks],
]);
/** Request headers forward() does not pass on: hop-by-hop ones, what undici sets itself, and the client's key. */
const NOT_FORWARDED = new Set(["host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-authorization", "proxy-connection", "content-length", "expect", "authorization", "x-api-key", "x-request-id"]);
/** Answer headers it does not pass back: hop-by-hop ones and those the gateway's server writes itself. */
const NOT_RETURNED = new Set(["connection", "keep-alive", "transfer-encoding", "content-length", "date", "server", "x-request-id"]);

/** Raised inside one attempt when it may be retried elsewhere. */
class RetryableError extends Error {}

export class ProxyBackend implements Backend {
  private readonly router: Router<UpstreamInstance>;
  private readonly created = Math.floor(Date.now() / 1000);
  /** Generation requests go over these (h1-pool.ts); probes and /v1/models over the instance's undici pool. */
  private readonly h1: Map<UpstreamInstance, H1Pool>;
  /** Per instance: the upstream request's fixed header lines, for non-stream and stream requests (headerLines()). */
  private readonly fixedLines = new Map<UpstreamInstance, string[]>();
  /** One model: the ids the upstreams list besides it (adapters), and the names that makes (withAdapters()). */
  private adapters: string[] = [];
  private ids: readonly string[] = [];
  private adaptersAt = -1;

  constructor(private readonly o: ProxyOptions) {
    this.router = new Router(o.instances, { affinity: o.affinity });
    this.h1 = new Map(o.instances.map((i) => [i, new H1Pool(i.origin)]));
  }

  /** The context length: --max-model-len, else what an upstream's card says for `model`. */
  private maxModelLen(model: string | undefined): number | undefined {
    if (this.o.maxModelLen || model === undefined) return this.o.maxModelLen;
    for (const i of this.o.instances) {
      const n = i.maxModelLen.get(model);
      if (n !== undefined) return n;
    }
    return undefined;
  }

  modelIds(): readonly string[] {
    if (this.o.multiModel) return [...new Set(this.o.instances.flatMap((i) => i.modelIds))];
    return this.o.servedNames.length ? this.withAdapters() : this.o.servedNames;
  }

  /**
   * One model: its served names, and any other id the upstreams list beside the model (vLLM's LoRA
   * adapters, `--lora-modules NAME=PATH`), which is passed on as it is. Kept until an upstream
   * answers /v1/models again (checked on every request: a sum over the instances).
   */
  private withAdapters(): readonly string[] {
    let v = 0;
    for (const i of this.o.instances) v += i.modelsVersion;
    if (v !== this.adaptersAt) {
      this.adaptersAt = v;
      const base = new Set([...this.o.servedNames, this.o.upstreamModel]);
      this.adapters = [...new Set(this.o.instances.flatMap((i) => i.modelIds))].filter((id) => !base.has(id));
      this.ids = this.adapters.length ? [...this.o.servedNames, ...this.adapters] : this.o.servedNames;
    }
    return this.ids;
  }

  /**
   * The name the upstream knows `model` by, when that differs: a served name is the upstream's model
   * under another name; an adapter's id, and the model's own, go as they are.
   */
  private upstreamNameFor(model: string): string | undefined {
    const up = this.o.upstreamModel;
    if (!up || model === up) return undefined;
    this.withAdapters();
    return this.adapters.includes(model) ? undefined : up;
  }

  models(): ModelCard[] {
    if (this.o.multiModel) {
      return this.modelIds().map((id) => ({ id, object: "model" as const, created: this.created, owned_by: this.o.ownedBy ?? "dsr", root: id, max_model_len: this.maxModelLen(id) }));
    }
    const card = (id: string, root: string): ModelCard => ({ id, object: "model" as const, created: this.created, owned_by: this.o.ownedBy ?? "dsr", root, max_model_len: this.maxModelLen(root) });
    this.withAdapters();
    return [...this.o.servedNames.map((id) => card(id, this.o.upstreamModel ?? id)), ...this.adapters.map((id) => card(id, id))];
  }

  ready(): boolean {
    // with several models, also a model to serve (none until an upstream has answered /v1/models)
    return this.router.healthy().length > 0 && (!this.o.multiModel || this.o.instances.some((i) => i.modelsKnown && i.modelIds.length > 0));
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

  /** 503: nothing healthy can take a request for `model` now. */
  private noInstance(model: string): HttpError {
    return new HttpError(503, `no healthy instance to serve ${this.o.multiModel ? `model ${model}` : "the request"}`, { code: "no_healthy_instance", headers: { "retry-after": "1" } });
  }

  /** Which instances may take a request for `model` (all but where the upstreams serve several models). */
  private acceptFor(model: string): ((i: UpstreamInstance) => boolean) | undefined {
    return this.o.multiModel ? (i) => i.serves(model) : undefined;
  }

  async handle(g: GenerationRequest): Promise<void> {
    const body = this.upstreamBody(g);
    const accept = this.acceptFor(g.model);
    let tried: Set<UpstreamInstance> | undefined; // made only when a retry needs it
    const maxTries = 1 + (this.o.maxRetries ?? Math.max(1, this.o.instances.length - 1));
    const key = this.o.affinity ? affinityKey(g) : undefined;
    let lastErr: unknown;
    for (let attempt = 0; attempt < maxTries; attempt++) {
      const inst = this.router.pick(tried, key, accept);
      if (!inst) break;
      (tried ??= new Set()).add(inst);
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
    throw lastErr ? new HttpError(503, `no instance could serve the request: ${(lastErr as Error).message}`, { code: "no_healthy_instance", headers: { "retry-after": "1" } }) : this.noInstance(g.model);
  }

  /**
   * /tokenize and /detokenize, forwarded to one instance (the least busy healthy one) as they came,
   * but for the model name when the upstream knows the model by another. The answer comes back as
   * the upstream gave it; an upstream without the endpoint (Ollama, say) gets a 404 naming it.
   */
  async tokens(op: TokensOp, req: TokenizeRequest | DetokenizeRequest, rawBody: Buffer, model: string): Promise<{ status: number; body: unknown }> {
    const inst = this.router.pick(undefined, undefined, this.acceptFor(model));
    if (!inst) throw this.noInstance(model);
    const want = req.model === undefined ? undefined : this.upstreamNameFor(req.model);
    const body = want ? JSON.stringify({ ...req, model: want }) : rawBody;
    let status: number;
    let text: string;
    try {
      const r = await inst.pool.request({ path: `/${op}`, method: "POST", headers: { "content-type": "application/json", ...inst.authHeaders() }, body, headersTimeout: 30_000, bodyTimeout: 30_000 });
      status = r.statusCode;
      text = await r.body.text();
    } catch (e) {
      throw new HttpError(502, `upstream ${inst.name} failed on /${op}: ${(e as Error).message}`, { code: "upstream_error" });
    }
    // a missing route (FastAPI's `{"detail":"Not Found"}`, Ollama's text), not an OpenAI error about the request
    if ((status === 404 || status === 405) && !/"error"\s*:/.test(text)) throw new HttpError(404, `upstream ${inst.name} has no /${op} endpoint (vLLM, SGLang and dsr serve have it)`, { code: "not_found" });
    if (status >= 400) return { status, body: normaliseErrorBody(status, text) };
    try {
      return { status, body: JSON.parse(text) as unknown };
    } catch {
      throw new HttpError(502, `upstream ${inst.name} answered /${op} with a body that is not JSON`, { code: "upstream_error" });
    }
  }

  /**
   * Any other `/v1` POST (`/v1/responses`, `/v1/embeddings`, `/v1/messages`, audio…), as nginx would
   * pass it: to an instance that serves the body's model, with the client's headers but its key (the
   * upstream's key goes instead) and hop-by-hop ones, the model name mapped as for generations, and
   * the answer streamed back as it comes. Tried on another instance only when no answer came at all.
   */
  async forward(f: ForwardRequest): Promise<number> {
    const accept = f.model !== undefined ? this.acceptFor(f.model) : undefined;
    const want = f.json && f.model !== undefined ? this.upstreamNameFor(f.model) : undefined;
    const body = want ? JSON.stringify({ ...f.json, model: want }) : f.body;
    const headers: Record<string, string> = { "x-request-id": f.id };
    for (const [k, v] of Object.entries(f.headers)) if (typeof v === "string" && !NOT_FORWARDED.has(k)) headers[k] = v;
    let tried: Set<UpstreamInstance> | undefined;
    const maxTries = 1 + (this.o.maxRetries ?? Math.max(1, this.o.instances.length - 1));
    let lastErr: Error | undefined;
    for (let attempt = 0; attempt < maxTries; attempt++) {
      const inst = this.router.pick(tried, undefined, accept);
      if (!inst) break;
      (tried ??= new Set()).add(inst);
      f.record.instance = inst.name;
      if (attempt > 0) f.record.retries = attempt;
      inst.outstanding++;
      try {
        let r: Awaited<ReturnType<typeof inst.pool.request>>;
        try {
          r = await inst.pool.request({ path: f.url, method: f.method, headers: { ...headers, ...inst.authHeaders() }, body, signal: f.cancel.signal, headersTimeout: 0, bodyTimeout: 0 });
        } catch (e) {
          if (f.cancel.aborted) throw e;
          inst.markFailed((e as Error).message);
          lastErr = e as Error;
          continue;
        }
        const out: Record<string, string> = {};
        for (const [k, v] of Object.entries(r.headers)) if (typeof v === "string" && !NOT_RETURNED.has(k)) out[k] = v;
        f.res.writeHead(r.statusCode, out, true);
        // a Responses or Messages API answer is a generation: its TTFT, gaps, tokens and finish reason are kept as a chat's
        const Books = r.statusCode === 200 ? BOOKS.get(f.url.split("?")[0]) : undefined;
        const books = Books && new Books(f.record, f.t0, this.o.metrics.instrument(inst.name, f.model), String(r.headers["content-type"] ?? "").startsWith("text/event-stream"));
        for await (const chunk of r.body) {
          books?.feed(chunk as Buffer);
          if (!f.res.write(chunk as Buffer)) await f.res.waitDrain();
        }
        books?.end();
        f.res.end();
        return r.statusCode;
      } finally {
        inst.outstanding--;
      }
    }
    throw lastErr ? new HttpError(502, `no instance answered ${f.url}: ${lastErr.message}`, { code: "upstream_error" }) : this.noInstance(f.model ?? "the request");
  }

  async close(): Promise<void> {
    for (const p of this.h1.values()) p.close();
    await Promise.all(this.o.instances.map((i) => i.close()));
  }

  /** The body to forward: unchanged unless the model name must be mapped or usage must be asked for. */
  private upstreamBody(g: GenerationRequest): { bytes: Buffer | string | Buffer[]; injectedUsage: boolean } {
    const wantModel = this.upstreamNameFor(g.model);
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

  /** One try on one instance (Attempt, below); rejects with RetryableError when another instance may try. */
  private attempt(g: GenerationRequest, inst: UpstreamInstance, body: Buffer | string | Buffer[], injectedUsage: boolean): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const a = new Attempt(this.o, g, inst, injectedUsage, resolve, reject);
      a.start(this.h1.get(inst)!, this.headerLines(g, inst), body);
    });
  }

  /**
   * The upstream request's header lines: the same for every request of one kind to one instance but
   * for its id (and the client's trace context), so they are rendered once. Latin1 throughout: the id's bytes go out as the client
   * sent them; the API key's UTF-8 bytes are spelled as latin1 characters here for the same reason.
   */
  private headerLines(g: GenerationRequest, inst: UpstreamInstance): string {
    const k = g.stream ? 1 : 0;
    let lines = this.fixedLines.get(inst);
    if (!lines) {
      const auth = Object.entries(inst.authHeaders())
        .map(([n, v]) => Buffer.from(`${n}: ${v}\r\n`, "utf8").toString("latin1"))
        .join("");
      lines = ["application/json", "text/event-stream"].map((accept) => `content-type: application/json\r\naccept: ${accept}\r\n${auth}`);
      this.fixedLines.set(inst, lines);
    }
    const h = `${lines[k]}x-request-id: ${g.id}\r\n`;
    // W3C trace context goes on, so an upstream that traces (vLLM with --otlp-traces-endpoint) joins
    // the client's trace; the server refused any control character in these values
    const tp = g.headers.traceparent;
    if (tp === undefined) return h;
    const ts = g.headers.tracestate;
    return ts === undefined ? `${h}traceparent: ${tp}\r\n` : `${h}traceparent: ${tp}\r\ntracestate: ${ts}\r\n`;
  }
}

/** Hand-offs to the native relay per stream: a stream whose reads keep coming back (events it cannot take) stops being offered. */
const MAX_HAND_OFFS = 3;

const enum Mode {
  Whole, // a non-stream answer, gathered
  Stream, // SSE, relayed as it comes
  Error, // an upstream error answer, gathered
}

/**
 * One try on one instance, over the hand-written HTTP/1.1 client (h1-pool.ts): upstream reads arrive
 * in callbacks and go straight to the client socket — no Readable, no promise per chunk. A read whose
 * events need no change is forwarded with the upstream's own chunk framing, one write and no copy;
 * otherwise the gateway's server frames the relay's output. The upstream is paused only while the
 * client pushes back.
 *
 * One object per try, implementing the client's handler and the relay's token listener itself: the
 * closures this took before (a dozen per request) were a measurable share of the gateway's
 * per-request CPU and of what each scavenge has to copy while streams are in flight.
 */
class Attempt implements H1Handler, TokenListener, CancelListener {
  private res: H1Response | undefined;
  private mode = Mode.Whole;
  private parts: Buffer[] | undefined;
  private relay: SseRelay | undefined;
  /** The client takes the upstream's chunks as they are (Sink.takesFramed). */
  private framed = false;
  private tail: Buffer | undefined;
  /** This try started the client's stream (only a try before any byte was sent may be retried, so no earlier one did). */
  private streaming = false;
  private settled = false;
  private call: H1Call | undefined;
  private ins: Instrument | undefined;
  private prevTokenAt = 0;
  /** The native relay while it has the stream (relay-handoff.ts). */
  private native: NativeStream | undefined;
  private handOffs = 0;
  /** The native relay sent the body's end: the client's answer is complete. */
  private endedNatively = false;

  constructor(
    private readonly o: ProxyOptions,
    private readonly g: GenerationRequest,
    private readonly inst: UpstreamInstance,
    private readonly injectedUsage: boolean,
    private readonly resolve: () => void,
    private readonly reject: (e: unknown) => void,
  ) {}

  start(pool: H1Pool, headerLines: string, body: Buffer | string | Buffer[]): void {
    const path = this.g.endpoint === "chat" ? "/v1/chat/completions" : "/v1/completions";
    this.call = pool.request({ path, headerLines, body }, this);
    if (!this.settled) this.g.cancel.listen(this);
  }

  /** The request was cancelled (client gone, timeout, shutdown): the upstream connection is cut. */
  onCancel(): void {
    this.native?.stop();
    this.call?.abort();
    this.done(this.g.cancel.reason instanceof Error ? this.g.cancel.reason : new Error("aborted"));
  }

  private done(e?: unknown): void {
    if (this.settled) return;
    this.settled = true;
    this.g.cancel.unlisten(this);
    if (e === undefined) this.resolve();
    else this.reject(e);
  }

  onHead(r: H1Response): void {
    this.res = r;
    if (r.status >= 400) this.mode = Mode.Error;
    else if (this.g.stream && r.contentType.startsWith("text/event-stream")) {
      this.mode = Mode.Stream;
      this.ins = this.o.metrics.instrument(this.inst.name, this.g.model);
      this.relay = new SseRelay({ fields: this.o.reasoningFields, dropUsageChunk: this.injectedUsage, listener: this });
    }
  }

  onBody(read: BodyRead): void {
    if (this.mode !== Mode.Stream) {
      (this.parts ??= []).push(...read.ranges.slices(read.buf));
      return this.call!.retainRead(); // gathered bytes must outlive this read
    }
    this.relayRead(read);
    // bytes of this read still queued for a slow client must outlive it
    if (this.g.sink.queued) this.call!.retainRead();
  }

  private relayRead(read: BodyRead): void {
    const { g } = this;
    const relay = this.relay!;
    if (read.ranges.n === 0) return; // only framing in this read
    // a client that takes chunks gets the relay's output framed (a last read's bytes go with the end, unframed)
    if (!relay.push(read.buf, read.ranges, this.framed && !read.last)) return;
    // the body ends in this read: its bytes leave with the response's end, one write instead of two
    if (read.last) return void (this.tail = relay.out);
    if (!this.streaming) {
      this.streaming = true;
      g.sink.startStream();
      this.backpressure(g.sink.write(relay.out)); // the first write carries the headers
      this.framed = g.sink.takesFramed?.() ?? false;
    } else if (!this.framed) return this.backpressure(g.sink.write(relay.out));
    // whole chunks whose events passed the relay unchanged: forward the read as received
    else this.backpressure(g.sink.writeFramed!(read.aligned && relay.passedThrough ? read.raw : relay.out));
    // a read that needed nothing but that and the stream's reasoning templates, or the stream's
    // opening read (no token yet: DeepSeek's and SGLang's role chunk names reasoning and goes through
    // JSON; not one with usage or an error, which the next events likely carry too): offer the native
    // relay the reads after it. After the role chunk the next event is often reasoning that no
    // template fits yet; the native relay learns the template from it
    const { stats } = relay;
    const opening = stats.events === 0 && stats.completionTokens === undefined && stats.promptTokens === undefined && stats.error === undefined;
    if (this.framed && read.aligned && (relay.simple || opening) && this.handOffs < MAX_HAND_OFFS) this.handOff();
  }

  /**
   * Gives the stream's next reads to the native relay when the addon is there and neither socket
   * has bytes queued. It gives the stream back at the first read it would not forward unchanged
   * (the end, usage), which then goes through relayRead() like any other.
   */
  private handOff(): void {
    const upstream = this.call!.handOffSocket;
    const sink = this.g.sink;
    if (upstream === undefined || sink.lend === undefined) return;
    const client = sink.lend(this);
    if (client === undefined) return;
    const relay = this.relay!;
    this.native = NativeStream.start({
      upstream,
      client,
      reasoningSpecial: this.o.reasoningFields.length > 0,
      roleCheck: relay.stats.events === 0,
      dropUsage: this.injectedUsage,
      mayEnd: sink.letsHolderEnd?.() ?? false,
      templates: relay.encodedTemplates(),
      relayed: (marks, finish, usage) => this.o.metrics.nativeRelayed(relay.addRelayed(marks, finish, usage)),
      back: (held, unsent, ended) => {
        this.native = undefined;
        sink.giveBack!();
        if (unsent !== undefined) this.backpressure(sink.writeFramed!(unsent));
        if (ended) {
          this.endedNatively = true;
          this.call!.ended(); // onEnd() follows at once
        } else if (held !== undefined) this.call!.inject(held);
      },
    });
    if (this.native === undefined) sink.giveBack!();
    else this.handOffs++;
  }

  /** The client's socket is being destroyed (the sink's loan ends): the native relay lets go of it first. */
  stop(): void {
    this.native?.stop();
  }

  private backpressure(w: Promise<void> | void): void {
    if (!w) return;
    const call = this.call!;
    call.pause();
    void w.then(() => call.resume());
  }

  /** The relay's callback per token event: TTFT for the first, inter-token latency after. */
  tokenAt(now: number): void {
    if (this.prevTokenAt === 0) {
      this.g.record.ttftMs = now - this.g.t0;
      this.ins!.ttft(this.g.record.ttftMs / 1000);
    } else this.ins!.itl((now - this.prevTokenAt) / 1000);
    this.prevTokenAt = now;
  }

  onEnd(): void {
    try {
      if (this.mode === Mode.Stream) {
        this.endStream(); // writes the end before it returns
        if (this.g.sink.queued) this.call!.retainRead();
      } else if (this.mode === Mode.Error) this.upstreamError(this.res!.status, this.res!.headers, this.text());
      else this.relayWhole(this.text());
      this.done();
    } catch (e) {
      this.done(e);
    }
  }

  onError(e: Error): void {
    const { g, inst } = this;
    if (g.cancel.aborted) return this.done(e);
    inst.markFailed(e.message);
    if (g.sink.started) return this.done(new HttpError(502, `upstream ${inst.name} failed mid-stream: ${e.message}`, { code: "upstream_error" }));
    // nothing reached the client yet (for non-stream requests: nothing at all), so another instance may try
    this.done(new RetryableError(`${inst.name}: ${e.message}`));
  }

  private text(): string {
    return this.parts ? Buffer.concat(this.parts).toString("utf8") : "";
  }

  private upstreamError(status: number, headers: Record<string, string | string[] | undefined>, text: string): void {
    const err = normaliseErrorBody(status, text);
    if (status >= 500) {
      if (status === 503) this.inst.markFailed(`HTTP 503: ${err.error.message}`);
      throw new RetryableError(`${this.inst.name} answered HTTP ${status}: ${err.error.message}`);
    }
    const ra = headers["retry-after"];
    this.g.sink.json(status, err, typeof ra === "string" ? { "retry-after": ra } : {});
  }

  /** Ends the stream; the last read's relayed bytes (`tail`) leave with the end of the response. */
  private endStream(): void {
    const { g } = this;
    const relay = this.relay!;
    const left = relay.flush();
    const rest = this.tail && left ? Buffer.concat([this.tail, left]) : this.tail ?? left;
    if (!g.sink.started) {
      if (!rest) throw new RetryableError(`${this.inst.name} closed the stream without sending anything`);
      g.sink.startStream();
    }
    // the counts first: what ends the answer may report them (a key's tokens per minute)
    const s = relay.stats;
    g.record.promptTokens = s.promptTokens;
    g.record.completionTokens = s.completionTokens ?? s.events;
    g.record.finishReason = s.error ? "error" : s.finishReason ?? null;
    if (this.endedNatively) g.sink.endedFramed!();
    else g.sink.end(rest);
  }

  private relayWhole(text: string): void {
    const { g } = this;
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(text);
    } catch {
      throw new HttpError(502, `upstream ${this.inst.name} sent a body that is not JSON`, { code: "upstream_error" });
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
