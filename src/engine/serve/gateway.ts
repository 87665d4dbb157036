/**
 * The OpenAI-compatible HTTP front: routing, auth, body limits, validation, admission control,
 * response cache, metrics, request log and graceful drain. Generation itself is the backend's job
 * (an upstream router or a token engine); the gateway only hands it a validated request and a Sink.
 *
 * Its own HTTP/1.1 server (h1-server.ts) rather than a framework or node:http: the hot path (a
 * proxied SSE stream) must add well under a millisecond, and there are only eight routes.
 */
import type { AddressInfo } from "node:net";
import { randomUUID } from "node:crypto";
import { ApiKeys, type ApiKey } from "./auth.js";
import { Cancel } from "./cancel.js";
import { cacheKey, type ResponseCache } from "./cache.js";
import { Cors, type CorsOptions } from "./cors.js";
import { hasKeyLimits, KeyLimits, type KeyGate, type KeyLimitOptions, type KeyRelease } from "./key-limits.js";
import { HttpError } from "./http-error.js";
import { Limiter, type Lease } from "./limiter.js";
import { H1Server, type H1Request, type H1Response, type TlsOptions } from "./h1-server.js";
import { GatewayMetrics } from "./metrics.js";
import type { RequestLog, RequestLogEntry } from "./request-log.js";
import { parseRequest, type Endpoint } from "./schemas.js";
import { parseTokensRequest, type TokensOp } from "./tokenize.js";
import { ResponseSink } from "./sink.js";
import type { RequestSpan, RequestTracer } from "./tracing.js";
import type { Backend, GenerationRequest, RequestRecord } from "./types.js";

export interface GatewayOptions {
  backend: Backend;
  version: string;
  apiKeys?: readonly ApiKey[];
  /** Guard /health, /ready, /metrics and /version too. */
  protectAll?: boolean;
  maxConcurrency: number;
  maxQueue: number;
  queueTimeoutMs?: number;
  /** Per-request deadline (ms); 0 = none. */
  requestTimeoutMs?: number;
  maxBodyBytes: number;
  cache?: ResponseCache;
  requestLog?: RequestLog;
  logPrompts?: boolean;
  metrics?: GatewayMetrics;
  /** Limits per API key (`--key-rpm`, `--key-tpm`, `--key-max-parallel`). */
  keyLimits?: KeyLimitOptions;
  /** Where keys are admitted instead of a KeyLimits of this process (a gateway worker asks the primary). */
  keyGate?: KeyGate;
  /** Answer browsers from these origins (`--allowed-origins`); none when absent. */
  cors?: CorsOptions;
  /** Serve HTTPS with this PEM key and certificate chain (`--ssl-keyfile`, `--ssl-certfile`). */
  tls?: TlsOptions;
  /** Overrides /metrics (a cluster worker returns the cluster-wide sum from the primary). */
  metricsSource?: () => Promise<{ contentType: string; body: string }>;
  /** OpenTelemetry spans per request (`--otlp-traces-endpoint`). */
  tracer?: RequestTracer;
}

const ROUTES: Record<string, Endpoint> = { "/v1/chat/completions": "chat", "/v1/completions": "completions" };
/** vLLM's tokenizer endpoints (outside /v1 there too). Guarded by the API key like /v1/*, unlike vLLM, which leaves them open. */
const TOKENS_ROUTES: Record<string, TokensOp> = { "/tokenize": "tokenize", "/detokenize": "detokenize" };

export class Gateway {
  readonly metrics: GatewayMetrics;
  /** Replaced once (setBackend) when the gateway listened before its engine loaded. */
  private backend: Backend;
  private readonly server: H1Server;
  private keys: ApiKeys;
  private readonly cors: Cors | undefined;
  private readonly keyLimits: KeyGate | undefined;
  private readonly limiter: Limiter;
  private draining = false;
  private readonly inflight = new Set<Cancel>();
  private idleWaiters: (() => void)[] = [];

  constructor(private readonly o: GatewayOptions) {
    this.backend = o.backend;
    this.metrics = o.metrics ?? new GatewayMetrics(o.backend.models()[0]?.id ?? "unknown");
    this.metrics.beforeCollect = () => this.refreshGauges();
    this.keys = new ApiKeys(o.apiKeys ?? []);
    this.cors = o.cors && new Cors(o.cors);
    this.keyLimits = o.keyGate ?? (o.keyLimits && hasKeyLimits(o.keyLimits) ? new KeyLimits(o.keyLimits) : undefined);
    this.limiter = new Limiter({ maxConcurrency: o.maxConcurrency, maxQueue: o.maxQueue, queueTimeoutMs: o.queueTimeoutMs ?? 0 });
    this.server = new H1Server({ maxBodyBytes: o.maxBodyBytes, keepAliveTimeoutMs: 65_000, headersTimeoutMs: 30_000, tls: o.tls }, (req, res) => this.dispatch(req, res));
  }

  /** New API keys and certificate (SIGHUP): requests from now on are checked against these keys; new TLS connections get this certificate. */
  reload(s: { apiKeys: readonly ApiKey[]; tls?: TlsOptions }): void {
    this.keys = new ApiKeys(s.apiKeys);
    if (s.tls) this.server.setTls(s.tls);
  }

  /** The engine loaded: requests from now on go to `b` (see loading-backend.ts). */
  setBackend(b: Backend): void {
    this.backend = b;
  }

  listen(port: number, host: string): Promise<AddressInfo> {
    return this.server.listen(port, host);
  }

  get inFlight(): number {
    return this.inflight.size;
  }

  /**
   * Stops accepting, lets in-flight requests finish for up to `graceMs`, then cancels the rest.
   * Returns how many requests had to be cancelled.
   */
  async drain(graceMs: number): Promise<number> {
    this.draining = true;
    this.server.close();
    this.server.closeIdleConnections();
    if (this.inflight.size > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, graceMs);
        this.idleWaiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const cancelled = this.inflight.size;
    for (const c of this.inflight) c.abort(new HttpError(503, "server shutting down", { code: "shutting_down" }));
    // give aborted handlers a moment to write their in-band error before sockets are cut
    if (cancelled > 0) await new Promise((r) => setTimeout(r, 50));
    this.server.closeAllConnections();
    return cancelled;
  }

  /**
   * Not async: a generation request goes straight to generate(), which answers every failure itself,
   * so a request in flight holds one suspended async frame (generate's), not two.
   */
  private dispatch(req: H1Request, res: H1Response): void {
    const t0 = performance.now();
    const url = req.url;
    const q = url.indexOf("?");
    const path = q >= 0 ? url.slice(0, q) : url;
    const idHeader = req.headers["x-request-id"];
    const id = typeof idHeader === "string" && idHeader.length > 0 && idHeader.length <= 128 ? idHeader : randomUUID();
    res.setHeader("x-request-id", id);
    try {
      if (this.cors?.handle(req, res)) return; // a preflight, answered
      if (req.method === "OPTIONS") {
        res.writeHead(204, { allow: "GET, POST, OPTIONS" }).end();
        return;
      }
      // SageMaker's route is told apart by its body, read only once the key passed
      const endpoint = path === "/invocations" ? (this.keys.check(req.headers), invocationEndpoint(req)) : ROUTES[path];
      if (endpoint) {
        let keyName: string | undefined; // the name of the request's API key, when keys are configured
        try {
          if (req.method !== "POST") throw new HttpError(405, `${path} accepts POST only`, { code: "method_not_allowed" });
          keyName = this.keys.check(req.headers);
          if (this.draining) throw new HttpError(503, "server shutting down", { code: "shutting_down", headers: { connection: "close" } });
        } catch (e) {
          // refused before generation (method, auth, shutdown): logged and counted too, without the key
          const status = e instanceof HttpError ? e.status : 500;
          this.finish(id, path, req, status, t0, undefined, {}, { error: e instanceof Error ? e.message : String(e) });
          throw e;
        }
        void this.generate(endpoint, id, path, req, res, t0, keyName);
        return;
      }
      const op = TOKENS_ROUTES[path];
      if (op) {
        if (req.method !== "POST") throw new HttpError(405, `${path} accepts POST only`, { code: "method_not_allowed" });
        const keyName = this.keys.check(req.headers);
        if (this.draining) throw new HttpError(503, "server shutting down", { code: "shutting_down", headers: { connection: "close" } });
        void this.tokens(op, id, path, req, res, t0, keyName);
        return;
      }
      if (req.method === "POST" && path.startsWith("/v1/")) {
        const keyName = this.keys.check(req.headers);
        if (!this.backend.forward) throw new HttpError(404, `no route ${path}: this engine serves /v1/chat/completions and /v1/completions (other /v1 routes are passed to --upstream servers)`, { code: "not_found" });
        if (this.draining) throw new HttpError(503, "server shutting down", { code: "shutting_down", headers: { connection: "close" } });
        void this.passthrough(id, path, req, res, t0, keyName);
        return;
      }
      if (req.method !== "GET" && req.method !== "HEAD" && !(path === "/ping" && req.method === "POST")) throw new HttpError(405, `${path} accepts GET only`, { code: "method_not_allowed" });
      if (path.startsWith("/v1/") || this.o.protectAll) this.keys.check(req.headers);
      this.serveInfo(path, res).catch((e: unknown) => this.fail(res, e));
    } catch (e) {
      this.fail(res, e);
    }
  }

  /** Point-in-time gauges, set just before an exposition is rendered. */
  refreshGauges(): void {
    this.metrics.running.set(this.limiter.running);
    this.metrics.waiting.set(this.limiter.waiting);
    this.backend.describe(); // per-instance health / outstanding / KV gauges
  }

  private async serveInfo(path: string, res: H1Response): Promise<void> {
    switch (path) {
      case "/":
        return void res.writeHead(200, { "content-type": "text/plain" }).end("dsr serve is running\n");
      case "/health":
      case "/ping": // SageMaker's liveness (vLLM serves it too)
        return sendJson(res, this.draining ? 503 : 200, { status: this.draining ? "draining" : "ok" });
      case "/load": // vLLM's: requests in flight, for a balancer in front
        return sendJson(res, 200, { server_load: this.inflight.size });
      case "/ready": {
        const ready = !this.draining && this.backend.ready();
        return sendJson(res, ready ? 200 : 503, { ready, draining: this.draining, ...this.backend.describe() });
      }
      case "/version":
        return sendJson(res, 200, { version: this.o.version });
      case "/metrics": {
        const m = await (this.o.metricsSource ?? (() => this.metrics.render()))();
        return void res.writeHead(200, { "content-type": m.contentType }).end(m.body);
      }
      case "/v1/models":
        return sendJson(res, 200, { object: "list", data: this.backend.models() });
      default:
        if (path.startsWith("/v1/models/")) {
          const name = decodeURIComponent(path.slice("/v1/models/".length));
          const card = this.backend.models().find((m) => m.id === name);
          if (card) return sendJson(res, 200, card);
          throw modelNotFound(name);
        }
        throw new HttpError(404, `no route ${path}`, { code: "not_found" });
    }
  }

  /** Answers the request whatever happens: it never rejects (dispatch does not wait for it). */
  private async generate(endpoint: Endpoint, id: string, path: string, req: H1Request, res: H1Response, t0: number, keyName: string | undefined): Promise<void> {
    const { ac, timer } = this.track(res);
    const record: RequestRecord = {};
    const entry: Partial<RequestLogEntry> = { key: keyName };
    let status = 500;
    let queueMs: number | undefined;
    let lease: Lease | undefined;
    let keyDone: KeyRelease | undefined;
    const sink = new ResponseSink(res, ac);
    const span = this.span(id, path, req, t0);
    try {
      const rawBody = bodyOf(req, this.o.maxBodyBytes);
      const parsed = parseRequest(endpoint, jsonOf(rawBody));
      const model = this.resolveModel(parsed.model);
      const stream = parsed.stream === true;
      entry.model = model;
      entry.stream = stream;
      if (this.o.logPrompts) entry.prompt = endpoint === "chat" ? (parsed as { messages: unknown }).messages : (parsed as { prompt: unknown }).prompt;

      const cacheId = this.o.cache ? cacheKey(endpoint, model, parsed as Record<string, unknown>) : undefined;
      if (cacheId && this.o.cache) {
        const hit = await this.o.cache.get(cacheId);
        this.metrics.cacheLookups.inc({ result: hit ? "hit" : "miss" });
        entry.cache = hit ? "hit" : "miss";
        if (hit) {
          res.writeHead(200, { "content-type": hit.contentType, "x-dsr-cache": "hit" }).end(hit.body);
          status = 200;
          return;
        }
        sink.capture();
      }

      const release = (keyDone = await this.admitKey(keyName, res)); // before it takes a gateway slot
      // given back as the answer's last bytes go out, not after: with --workers the primary holds the
      // count, and the client's next request (on another worker) must not find the slot still taken
      if (release) sink.beforeEnd = () => release((record.promptTokens ?? 0) + (record.completionTokens ?? 0));
      const tq = performance.now();
      const got = this.limiter.acquire(ac);
      lease = got instanceof Promise ? await got : got;
      queueMs = performance.now() - tq;
      this.metrics.forModel(model).queueTime(queueMs / 1000);

      const g: GenerationRequest = { id, endpoint, req: parsed, rawBody, model, stream, headers: req.headers, cancel: ac, sink, record, t0 };
      await this.backend.handle(g);
      status = sink.status || 200;
      if (cacheId && this.o.cache && status === 200 && !ac.aborted && !sink.failedInBand) {
        const captured = sink.captured();
        // a failed cache write costs the next request a recomputation, not this answer
        if (captured) await this.o.cache.set(cacheId, captured).catch((e: Error) => (entry.error = `response cache write failed: ${e.message}`));
      }
      sink.finish();
    } catch (e) {
      const err = ac.aborted && ac.reason instanceof HttpError && !(e instanceof HttpError && e.status < 500) ? ac.reason : e;
      status = err instanceof HttpError ? err.status : 500;
      entry.error = err instanceof Error ? err.message : String(err);
      if (sink.started) sink.inBandError(err);
      else this.fail(res, err);
    } finally {
      // the bookkeeping may not throw out of here: nothing awaits this method
      try {
        sink.finish(); // a held answer goes out even when something above threw
        lease?.release();
        keyDone?.((record.promptTokens ?? 0) + (record.completionTokens ?? 0));
        this.untrack(ac, res, timer);
        this.finish(id, path, req, status, t0, queueMs, record, entry);
        span?.end({ status, operation: endpoint === "chat" ? "chat" : "text_completion", model: entry.model, instance: record.instance, promptTokens: record.promptTokens, completionTokens: record.completionTokens, finishReason: record.finishReason, ttftMs: record.ttftMs, queueMs, error: entry.error });
      } catch (e) {
        this.fail(res, e);
      }
    }
  }

  /** A request that holds a slot: cancelled by the client's close, the timeout or a drain; counted in flight. */
  private track(res: H1Response): { ac: Cancel; timer: NodeJS.Timeout | undefined } {
    const ac = new Cancel();
    this.inflight.add(ac);
    res.closeListener = ac;
    const ms = this.o.requestTimeoutMs;
    const timer = ms ? setTimeout(() => ac.abort(new HttpError(504, `request exceeded the ${ms} ms timeout`, { code: "timeout" })), ms) : undefined;
    return { ac, timer };
  }

  private untrack(ac: Cancel, res: H1Response, timer: NodeJS.Timeout | undefined): void {
    if (timer) clearTimeout(timer);
    res.closeListener = undefined;
    this.inflight.delete(ac);
    if (this.inflight.size === 0 && this.idleWaiters.length) for (const w of this.idleWaiters.splice(0)) w();
  }

  /** Per-key admission (a 429 when over a limit), with OpenAI's rate-limit headers on the answer; undefined without limits. */
  private async admitKey(keyName: string | undefined, res: H1Response): Promise<KeyRelease | undefined> {
    if (keyName === undefined || !this.keyLimits) return undefined;
    const admitted = this.keyLimits.admit(keyName);
    const release = admitted instanceof Promise ? await admitted : admitted;
    if (release.headers) for (const k in release.headers) res.setHeader(k, release.headers[k]);
    return release;
  }

  /**
   * Another `/v1` POST (`/v1/responses`, `/v1/embeddings`, `/v1/messages`, audio…) passed to the
   * backend's forward() as it came: admitted like a generation (per-key, gateway slot) and logged; a
   * Responses or Messages API answer also goes into the generation metrics (answer-books.ts). Never rejects.
   */
  private async passthrough(id: string, path: string, req: H1Request, res: H1Response, t0: number, keyName: string | undefined): Promise<void> {
    const { ac, timer } = this.track(res);
    const record: RequestRecord = {};
    const entry: Partial<RequestLogEntry> = { key: keyName };
    let status = 500;
    let lease: Lease | undefined;
    let keyDone: KeyRelease | undefined;
    const span = this.span(id, path, req, t0);
    try {
      const body = bodyOf(req, this.o.maxBodyBytes);
      // a JSON body names its model (routed and mapped as for generations); multipart audio does not
      const parsed = /json/i.test(req.headers["content-type"] ?? "") ? jsonOf(body) : undefined;
      const json = parsed !== null && typeof parsed === "object" && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : undefined;
      const model = typeof json?.model === "string" ? this.resolveModel(json.model) : undefined;
      entry.model = model;
      keyDone = await this.admitKey(keyName, res);
      const got = this.limiter.acquire(ac);
      lease = got instanceof Promise ? await got : got;
      status = await this.backend.forward!({ id, url: req.url, method: req.method, headers: req.headers, body, json, model, res, cancel: ac, record, t0 });
    } catch (e) {
      const err = ac.aborted && ac.reason instanceof HttpError ? ac.reason : e;
      status = err instanceof HttpError ? err.status : 500;
      entry.error = err instanceof Error ? err.message : String(err);
      this.fail(res, err); // after the first byte: the connection is cut
    } finally {
      try {
        lease?.release();
        keyDone?.();
        this.untrack(ac, res, timer);
        // a generation (the Responses API) goes into the generation metrics and logs its tokens
        if (record.finishReason !== undefined) this.finish(id, path, req, status, t0, undefined, record, entry);
        else this.o.requestLog?.write({ ts: new Date().toISOString(), id, method: "POST", path, status, ...clientOf(req), ...entry, instance: record.instance, retries: record.retries || undefined, latency_ms: round(performance.now() - t0) });
        span?.end({ status, model: entry.model, instance: record.instance, error: entry.error });
      } catch (e) {
        this.fail(res, e);
      }
    }
  }

  /** The request's span when tracing: the upstream is then sent this span's trace context instead of the client's. */
  private span(id: string, path: string, req: H1Request, t0: number): RequestSpan | undefined {
    const tracer = this.o.tracer;
    if (tracer === undefined) return undefined;
    const span = tracer.begin(id, path, req.headers, t0);
    if (span.traceparent) req.headers.traceparent = span.traceparent;
    if (span.tracestate) req.headers.tracestate = span.tracestate;
    else delete req.headers.tracestate;
    return span;
  }

  /** /tokenize and /detokenize: no admission control (no engine step), logged but not counted as generation requests. Never rejects. */
  private async tokens(op: TokensOp, id: string, path: string, req: H1Request, res: H1Response, t0: number, keyName: string | undefined): Promise<void> {
    const entry: Partial<RequestLogEntry> = { key: keyName };
    let status = 500;
    try {
      const rawBody = bodyOf(req, this.o.maxBodyBytes);
      const parsed = parseTokensRequest(op, jsonOf(rawBody));
      entry.model = this.resolveModel(parsed.model);
      const answer = await this.backend.tokens(op, parsed, rawBody, entry.model);
      status = answer.status;
      sendJson(res, status, answer.body);
    } catch (e) {
      status = e instanceof HttpError ? e.status : 500;
      entry.error = e instanceof Error ? e.message : String(e);
      this.fail(res, e);
    } finally {
      this.o.requestLog?.write({ ts: new Date().toISOString(), id, method: "POST", path, status, ...clientOf(req), ...entry, latency_ms: round(performance.now() - t0) });
    }
  }

  private resolveModel(requested: string | undefined): string {
    const ids = this.backend.modelIds();
    // none known yet: whatever was asked for may be served once an upstream answers
    if (ids.length === 0) throw new HttpError(503, "no model is known yet (no upstream has answered GET /v1/models)", { code: "no_healthy_instance", headers: { "retry-after": "1" } });
    if (!requested) return ids[0];
    if (ids.includes(requested)) return requested;
    throw modelNotFound(requested);
  }

  private finish(id: string, path: string, req: H1Request, status: number, t0: number, queueMs: number | undefined, r: RequestRecord, entry: Partial<RequestLogEntry>): void {
    const latency = performance.now() - t0;
    const m = this.metrics;
    if (entry.key !== undefined) m.keyUsage(entry.key, r.promptTokens, r.completionTokens);
    if (status === 200) {
      m.succeeded(entry.model, r.finishReason ?? "stop", r.promptTokens, r.completionTokens);
      const series = m.forModel(entry.model);
      series.e2e(latency / 1000);
      if (r.completionTokens && r.ttftMs !== undefined && r.completionTokens > 1) series.tpot((latency - r.ttftMs) / 1000 / (r.completionTokens - 1));
    } else {
      m.failed(entry.model, status);
    }
    this.o.requestLog?.write({
      ts: new Date().toISOString(),
      id,
      method: "POST",
      path,
      status,
      ...clientOf(req),
      ...entry,
      instance: r.instance,
      prompt_tokens: r.promptTokens,
      completion_tokens: r.completionTokens,
      finish_reason: r.finishReason,
      ttft_ms: r.ttftMs === undefined ? undefined : round(r.ttftMs),
      latency_ms: round(latency),
      queue_ms: queueMs === undefined ? undefined : round(queueMs),
      retries: r.retries || undefined,
    });
  }

  private fail(res: H1Response, e: unknown): void {
    const err = e instanceof HttpError ? e : new HttpError(500, `internal error: ${e instanceof Error ? e.message : String(e)}`, { code: "internal_error" });
    if (res.headersSent) {
      res.destroy();
      return;
    }
    // 499 is our internal "client went away": nobody is listening, just close.
    if (err.status === 499) {
      res.destroy();
      return;
    }
    sendJson(res, err.status, err.body(), err.headers);
  }
}

function modelNotFound(name: string): HttpError {
  return new HttpError(404, `The model \`${name}\` does not exist.`, { param: "model", code: "model_not_found" });
}

function sendJson(res: H1Response, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const s = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(s), ...headers }).end(s);
}

const round = (ms: number) => Math.round(ms * 100) / 100;

/** Who sent the request, for the request log. */
function clientOf(req: H1Request): Pick<RequestLogEntry, "client" | "forwarded_for" | "client_cert"> {
  const xff = req.headers["x-forwarded-for"];
  return { client: req.remoteAddress, forwarded_for: typeof xff === "string" && xff.length > 0 ? xff.slice(0, 256) : undefined, client_cert: req.clientCert };
}

/**
 * SageMaker's `POST /invocations` (vLLM serves it too): a chat request when the body has `messages`,
 * a completions request when it has `prompt`. Only this route reads the body to be routed; the
 * request is then parsed and validated as the endpoint's own.
 */
function invocationEndpoint(req: H1Request): Endpoint {
  if (req.method !== "POST") throw new HttpError(405, "/invocations accepts POST only", { code: "method_not_allowed" });
  const body = req.bodyTooLarge === undefined ? (jsonOf(req.body) as Record<string, unknown> | null) : {};
  if (body !== null && typeof body === "object" && "messages" in body) return "chat";
  if (body !== null && typeof body === "object" && "prompt" in body) return "completions";
  if (req.bodyTooLarge !== undefined) return "completions"; // answered 413 by generate()
  throw new HttpError(400, "/invocations: give `messages` (chat) or `prompt` (completions)", { param: "messages", code: "invalid_parameter" });
}

/** The body as JSON, or 400 invalid_json. */
function jsonOf(raw: Buffer): unknown {
  try {
    return JSON.parse(raw.toString("utf8"));
  } catch (e) {
    throw new HttpError(400, `invalid JSON in request body: ${(e as Error).message}`, { code: "invalid_json" });
  }
}

/** The request's body (the server read it already), or 413 when it was over the limit. */
function bodyOf(req: H1Request, limit: number): Buffer {
  if (req.bodyTooLarge !== undefined) throw new HttpError(413, `request body of ${req.bodyTooLarge}${req.headers["content-length"] ? "" : "+"} bytes exceeds the ${limit}-byte limit`, { code: "body_too_large" });
  return req.body;
}
