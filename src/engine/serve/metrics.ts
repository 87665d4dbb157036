/**
 * Prometheus metrics, named after vLLM's V1 set with a `dsr:` prefix (facts §1.5) so dashboards
 * built for vLLM map one to one. Every series carries `model_name`; per-request series also carry
 * `instance` (the upstream or engine that served it). A private registry: nothing global.
 */
import { Counter, Gauge, Registry } from "prom-client";

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export type Instrument = {
  ttft(seconds: number): void;
  itl(seconds: number): void;
};

/** A request's own series (its model's), bound once per model. */
export interface ModelSeries {
  queueTime(seconds: number): void;
  e2e(seconds: number): void;
  tpot(seconds: number): void;
}

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly running: Gauge;
  readonly waiting: Gauge;
  readonly success: Counter;
  readonly failures: Counter;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly ttft: FastHistogram;
  readonly itl: FastHistogram;
  readonly tpot: FastHistogram;
  readonly e2e: FastHistogram;
  readonly queueTime: FastHistogram;
  readonly instanceHealthy: Gauge;
  readonly instanceOutstanding: Gauge;
  readonly instanceRestarts: Counter;
  readonly retries: Counter;
  readonly cacheLookups: Counter;
  readonly kvUsage: Gauge;
  readonly nativeTokens: Counter;
  /** Token events the native relay forwarded, not yet handed to prom-client (added per stream, moved over on collect). */
  private nativeTokensPending = 0;
  readonly keyRequests: Counter;
  readonly keyPromptTokens: Counter;
  readonly keyGenerationTokens: Counter;
  private readonly perInstance = new Map<string, Instrument>();
  private readonly perModel = new Map<string, ModelSeries>();
  /**
   * Counts of finished requests not yet handed to prom-client: its inc() validates and hashes the
   * label set on every call, so the per-request path adds to plain numbers and each counter's
   * collect() hook moves them over when the registry is read. Keyed by model, then reason.
   */
  private readonly unflushed = {
    success: new Map<string, Map<string, number>>(),
    prompt: new Map<string, number>(),
    generation: new Map<string, number>(),
    keyRequests: new Map<string, number>(),
    keyPrompt: new Map<string, number>(),
    keyGeneration: new Map<string, number>(),
  };
  /** The model_name of every series while one model is served (also the registry's default label). */
  private modelName: string;
  /** Several models behind the gateway: per-request series carry the request's model, the rest none. */
  private multi = false;
  /** Set by the gateway: refreshes point-in-time gauges before any exposition or cluster collection. */
  beforeCollect?: () => void;

  constructor(modelName: string) {
    this.modelName = modelName;
    const r = [this.registry];
    this.registry.setDefaultLabels({ model_name: modelName });
    this.running = new Gauge({ name: "dsr:num_requests_running", help: "Requests being generated.", registers: r });
    this.waiting = new Gauge({ name: "dsr:num_requests_waiting", help: "Requests waiting for a slot (gateway queue).", registers: r });
    const pending = this.unflushed;
    this.success = new Counter({
      name: "dsr:request_success_total",
      help: "Finished requests by finish reason.",
      labelNames: ["finished_reason", "model_name"],
      registers: r,
      collect() {
        for (const [model, reasons] of pending.success) for (const [reason, n] of reasons) this.inc({ finished_reason: reason, model_name: model }, n);
        pending.success.clear();
      },
    });
    this.failures = new Counter({ name: "dsr:request_failure_total", help: "Requests answered with an error, by HTTP status.", labelNames: ["status", "model_name"], registers: r });
    const drained = (name: string, help: string, key: "prompt" | "generation" | "keyRequests" | "keyPrompt" | "keyGeneration", label: string) =>
      new Counter({
        name,
        help,
        labelNames: [label],
        registers: r,
        collect() {
          for (const [value, n] of pending[key]) this.inc({ [label]: value }, n);
          pending[key].clear();
        },
      });
    this.promptTokens = drained("dsr:prompt_tokens_total", "Prefill tokens processed.", "prompt", "model_name");
    this.generationTokens = drained("dsr:generation_tokens_total", "Tokens generated.", "generation", "model_name");
    // per API key (its name, never the key): what each client of a shared endpoint used
    this.keyRequests = drained("dsr:api_key_requests_total", "Generation requests by API key name (any outcome after auth).", "keyRequests", "key");
    this.keyPromptTokens = drained("dsr:api_key_prompt_tokens_total", "Prefill tokens by API key name.", "keyPrompt", "key");
    this.keyGenerationTokens = drained("dsr:api_key_generation_tokens_total", "Tokens generated by API key name.", "keyGeneration", "key");
    const M = ["model_name"];
    this.ttft = new FastHistogram(this.registry, "dsr:time_to_first_token_seconds", "Time to the first generated token.", TTFT_BUCKETS, ["model_name", "instance"]);
    this.itl = new FastHistogram(this.registry, "dsr:inter_token_latency_seconds", "Gap between successive streamed chunks.", ITL_BUCKETS, M);
    this.tpot = new FastHistogram(this.registry, "dsr:request_time_per_output_token_seconds", "Per request: (latency - TTFT) / (output tokens - 1).", ITL_BUCKETS, M);
    this.e2e = new FastHistogram(this.registry, "dsr:e2e_request_latency_seconds", "End-to-end request latency.", E2E_BUCKETS, M);
    this.queueTime = new FastHistogram(this.registry, "dsr:request_queue_time_seconds", "Time spent in the gateway queue.", E2E_BUCKETS, M);
    this.instanceHealthy = new Gauge({ name: "dsr:instance_healthy", help: "1 when the instance passes its readiness check.", labelNames: ["instance"], registers: r, aggregator: "min" });
    this.instanceOutstanding = new Gauge({ name: "dsr:instance_outstanding_requests", help: "Requests in flight per instance.", labelNames: ["instance"], registers: r });
    this.instanceRestarts = new Counter({ name: "dsr:instance_restarts_total", help: "Supervised instance restarts.", labelNames: ["instance"], registers: r });
    this.retries = new Counter({ name: "dsr:request_retries_total", help: "Requests retried on another instance before the first byte.", registers: r });
    this.cacheLookups = new Counter({ name: "dsr:response_cache_lookups_total", help: "Response cache lookups.", labelNames: ["result"], registers: r });
    this.kvUsage = new Gauge({ name: "dsr:kv_cache_usage_perc", help: "KV cache usage, 0-1, where the engine reports it.", labelNames: ["instance"], registers: r, aggregator: "max" });
    const metrics = this;
    this.nativeTokens = new Counter({
      name: "dsr:relay_native_tokens_total",
      help: "Streamed token events forwarded by the native relay, with no JavaScript per read (the others went through the JS relay).",
      registers: r,
      collect() {
        this.inc(metrics.nativeTokensPending);
        metrics.nativeTokensPending = 0;
      },
    });
  }

  /** Token events of one stream the native relay forwarded. */
  nativeRelayed(tokens: number): void {
    this.nativeTokensPending += tokens;
  }

  /**
   * The served models, known once the upstreams answered /v1/models. One: every series is labelled
   * with it (the registry's default label, as vLLM's `model_name`). Several (an `--upstream` gateway
   * in front of servers of different models): per-request series carry the request's model, and
   * series that belong to no one model (instances, queue, cache) carry none. `perRequest` forces the
   * latter (a gateway that learns its models from upstreams that have not answered yet).
   */
  setModels(names: readonly string[], perRequest = names.length > 1): void {
    this.multi = perRequest;
    this.modelName = names[0] ?? this.modelName;
    this.registry.setDefaultLabels(this.multi ? {} : { model_name: this.modelName });
    // bound series carry the model they were made for
    this.perInstance.clear();
    this.perModel.clear();
  }

  /** The model_name of a request's series. */
  private label(model: string | undefined): string {
    return this.multi && model ? model : this.modelName;
  }

  /** A request that finished with 200: its finish reason and token counts. */
  succeeded(model: string | undefined, reason: string, promptTokens: number | undefined, completionTokens: number | undefined): void {
    const p = this.unflushed;
    const m = this.label(model);
    let reasons = p.success.get(m);
    if (!reasons) p.success.set(m, (reasons = new Map()));
    reasons.set(reason, (reasons.get(reason) ?? 0) + 1);
    if (promptTokens) p.prompt.set(m, (p.prompt.get(m) ?? 0) + promptTokens);
    if (completionTokens) p.generation.set(m, (p.generation.get(m) ?? 0) + completionTokens);
  }

  /** A generation request that passed the API-key check, under the key's name: its token counts when it got that far. */
  keyUsage(key: string, promptTokens: number | undefined, completionTokens: number | undefined): void {
    const p = this.unflushed;
    p.keyRequests.set(key, (p.keyRequests.get(key) ?? 0) + 1);
    if (promptTokens) p.keyPrompt.set(key, (p.keyPrompt.get(key) ?? 0) + promptTokens);
    if (completionTokens) p.keyGeneration.set(key, (p.keyGeneration.get(key) ?? 0) + completionTokens);
  }

  /** A request answered with an error status (its model when known). */
  failed(model: string | undefined, status: number): void {
    this.failures.inc({ status: String(status), model_name: this.label(model) });
  }

  /** A model's bound request series: the per-request path does no label lookups. */
  forModel(model: string | undefined): ModelSeries {
    const m = this.label(model);
    let x = this.perModel.get(m);
    if (!x) {
      const [q, e, t] = [this.queueTime.series(m), this.e2e.series(m), this.tpot.series(m)];
      x = { queueTime: (s) => q.observe(s), e2e: (s) => e.observe(s), tpot: (s) => t.observe(s) };
      this.perModel.set(m, x);
    }
    return x;
  }

  /** Bound histogram series per instance and model: the per-read path does no label lookups. */
  instrument(instance: string, model?: string): Instrument {
    const m = this.label(model);
    const key = this.multi ? `${instance}\u0000${m}` : instance; // one model: no string built per request
    let i = this.perInstance.get(key);
    if (!i) {
      const t = this.ttft.series(m, instance);
      const g = this.itl.series(m);
      i = { ttft: (s) => t.observe(s), itl: (s) => g.observe(s) };
      this.perInstance.set(key, i);
    }
    return i;
  }

  async json(): Promise<unknown[]> {
    this.beforeCollect?.();
    return this.registry.getMetricsAsJSON();
  }

  async render(): Promise<{ contentType: string; body: string }> {
    this.beforeCollect?.();
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

type Value = { labels: Record<string, string | number>; sharedLabels?: Record<string, string>; value: number; metricName: string };

/** One label set's bucket counts (not cumulative; +Inf last). */
class Series {
  readonly counts: Float64Array;
  sum = 0;
  count = 0;
  constructor(private readonly bounds: readonly number[], readonly labels: Record<string, string>) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  observe(v: number): void {
    if (!Number.isFinite(v)) return; // a clock glitch must not poison the sum
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > b[i]) i++;
    this.counts[i]++;
    this.sum += v;
    this.count++;
  }
}

/**
 * A Prometheus histogram recorded with one bucket search and three additions per observation, and
 * exposed through prom-client's Registry (and summed by its AggregatorRegistry across workers) like
 * prom-client's own: `get()` returns the same shape as Histogram.get(). Hand-written because
 * prom-client's observe() validates and hashes the label set and allocates a closure on every call,
 * even for a bound child, and these histograms are observed per streamed read and several times per
 * request (about 2.5% of the gateway's CPU at the throughput limit).
 */
export class FastHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  private readonly all = new Map<string, Series>();

  constructor(registry: Registry, readonly name: string, readonly help: string, private readonly bounds: readonly number[], private readonly labelNames: readonly string[] = []) {
    registry.registerMetric(this as unknown as Parameters<Registry["registerMetric"]>[0]);
  }

  /** The series of one set of label values, in `labelNames` order (bind it once: this is a lookup). */
  series(...values: string[]): Series {
    const key = values.join("\u0000");
    let s = this.all.get(key);
    if (!s) this.all.set(key, (s = new Series(this.bounds, Object.fromEntries(this.labelNames.map((n, i) => [n, values[i] ?? ""])))));
    return s;
  }

  /** The exposition's shape: `le` first, the series' own labels as prom-client's "shared" labels, so lines read as prom-client's do. */
  getForPromString(): { name: string; help: string; type: string; aggregator: string; values: Value[] } {
    const values: Value[] = [];
    const bucket = `${this.name}_bucket`;
    for (const s of this.all.values()) {
      let acc = 0;
      for (let i = 0; i <= this.bounds.length; i++) {
        acc += s.counts[i];
        values.push({ labels: { le: i < this.bounds.length ? this.bounds[i] : "+Inf" }, sharedLabels: s.labels, value: acc, metricName: bucket });
      }
      values.push({ labels: {}, sharedLabels: s.labels, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: {}, sharedLabels: s.labels, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** JSON for getMetricsAsJSON() and the cluster aggregator: labels merged, as Histogram.get() does. */
  get(): ReturnType<FastHistogram["getForPromString"]> {
    const m = this.getForPromString();
    m.values = m.values.map(({ sharedLabels, ...v }) => ({ ...v, labels: { ...v.labels, ...sharedLabels } }));
    return m;
  }

  /** prom-client's Registry.resetMetrics() calls this. */
  reset(): void {
    for (const s of this.all.values()) {
      s.counts.fill(0);
      s.sum = s.count = 0;
    }
  }
}
