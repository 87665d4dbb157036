/**
 * One OpenAI-compatible upstream (vLLM, SGLang, Ollama, another dsr, a dsr child instance): a
 * keep-alive connection pool, a health probe, and the in-flight count the router balances on.
 * `gate` lets a supervisor hold the instance unhealthy while its process is down or starting.
 */
import { Pool } from "undici";

export interface UpstreamOptions {
  /** Liveness path probed periodically: /health (vLLM, SGLang, dsr); falls back to /v1/models on 404. */
  healthPath?: string;
  probeIntervalMs?: number;
  apiKey?: string;
  gate?: () => boolean;
}

export interface EngineLoad {
  running?: number;
  waiting?: number;
  kv_used_tokens?: number;
  kv_capacity_tokens?: number;
}

export class UpstreamInstance {
  readonly origin: string;
  readonly pool: Pool;
  outstanding = 0;
  probeOk = true;
  lastError?: string;
  modelIds: string[] = [];
  /** The context length each listed model reports (`max_model_len` in vLLM's, SGLang's and dsr's cards). */
  readonly maxModelLen = new Map<string, number>();
  /** GET /v1/models answered once (`modelIds` is what it listed). */
  modelsKnown = false;
  /** Counts the answers to GET /v1/models (a backend that derives names from `modelIds` rereads them when it moves). */
  modelsVersion = 0;
  /** Ask /v1/models again after a successful probe while `modelsKnown` is false (a gateway over several models routes by them). */
  learnModels = false;
  /** Load reported by a dsr instance's /ready (running, waiting, KV tokens). */
  engine?: EngineLoad;
  /** Where the probe asks (it falls back to /v1/models on a server without /health). */
  healthPath: string;
  private timer?: NodeJS.Timeout;

  constructor(readonly name: string, url: string, readonly o: UpstreamOptions = {}) {
    const u = new URL(url);
    this.origin = u.origin;
    this.healthPath = o.healthPath ?? "/health";
    // HTTP/1.1 has one stream per connection: no cap, so 1000 concurrent streams get 1000 sockets.
    this.pool = new Pool(this.origin, { connections: null, pipelining: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 600_000, connectTimeout: 5_000, headersTimeout: 0, bodyTimeout: 0 });
  }

  get healthy(): boolean {
    return this.probeOk && (this.o.gate ? this.o.gate() : true);
  }

  authHeaders(): Record<string, string> {
    return this.o.apiKey ? { authorization: `Bearer ${this.o.apiKey}` } : {};
  }

  /** Marks the instance down after a failed request; the next successful probe brings it back. */
  markFailed(reason: string): void {
    this.probeOk = false;
    this.lastError = reason;
  }

  async probe(signal?: AbortSignal): Promise<boolean> {
    try {
      let r = await this.pool.request({ path: this.healthPath, method: "GET", headers: this.authHeaders(), signal, headersTimeout: 5_000, bodyTimeout: 5_000 });
      if (this.healthPath === "/ready") {
        // a dsr instance: its /ready carries the engine's load and KV use
        const j = (await r.body.json().catch(() => undefined)) as { engine?: EngineLoad } | undefined;
        this.engine = j?.engine;
      } else await r.body.dump();
      if (r.statusCode === 404 && this.healthPath !== "/v1/models") {
        this.healthPath = "/v1/models"; // a generic OpenAI server without /health
        r = await this.pool.request({ path: this.healthPath, method: "GET", headers: this.authHeaders(), signal, headersTimeout: 5_000, bodyTimeout: 5_000 });
        await r.body.dump();
      }
      this.probeOk = r.statusCode === 200;
      this.lastError = this.probeOk ? undefined : `${this.healthPath} answered HTTP ${r.statusCode}`;
      if (this.probeOk && this.learnModels && !this.modelsKnown) await this.fetchModels().catch(() => undefined);
    } catch (e) {
      this.probeOk = false;
      this.lastError = (e as Error).message;
    }
    return this.probeOk;
  }

  /** Model ids the upstream serves (GET /v1/models), remembered for model-name mapping. */
  async fetchModels(): Promise<string[]> {
    const r = await this.pool.request({ path: "/v1/models", method: "GET", headers: this.authHeaders(), headersTimeout: 10_000, bodyTimeout: 10_000 });
    const text = await r.body.text();
    if (r.statusCode !== 200) throw new Error(`GET ${this.origin}/v1/models answered HTTP ${r.statusCode}: ${text.slice(0, 200)}`);
    const j = JSON.parse(text) as { data?: { id?: unknown; max_model_len?: unknown }[] };
    this.modelIds = (j.data ?? []).map((m) => m.id).filter((x): x is string => typeof x === "string");
    for (const m of j.data ?? []) if (typeof m.id === "string" && typeof m.max_model_len === "number") this.maxModelLen.set(m.id, m.max_model_len);
    this.modelsKnown = true;
    this.modelsVersion++;
    return this.modelIds;
  }

  /** Whether this upstream listed `model` in its /v1/models. */
  serves(model: string): boolean {
    return this.modelIds.includes(model);
  }

  startProbing(): void {
    if (this.timer) return;
    const tick = () => {
      void this.probe().finally(() => {
        if (this.timer) this.timer = setTimeout(tick, this.o.probeIntervalMs ?? 2_000).unref();
      });
    };
    this.timer = setTimeout(tick, this.o.probeIntervalMs ?? 2_000).unref();
  }

  async close(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await this.pool.destroy().catch(() => undefined);
  }
}
