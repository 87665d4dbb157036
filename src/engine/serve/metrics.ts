/**
 * Prometheus metrics, named after vLLM's V1 set with a `dsr:` prefix (facts §1.5) so dashboards
 * built for vLLM map one to one. Every series carries `model_name`; per-request series also carry
 * `instance` (the upstream or engine that served it). A private registry: nothing global.
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";

const TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560];
const ITL_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
const E2E_BUCKETS = [0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680];

export type Instrument = {
  ttft(seconds: number): void;
  itl(seconds: number): void;
};

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly running: Gauge;
  readonly waiting: Gauge;
  readonly success: Counter;
  readonly failures: Counter;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;
  readonly ttft: Histogram;
  readonly itl: Histogram;
  readonly tpot: Histogram;
  readonly e2e: Histogram;
  readonly queueTime: Histogram;
  readonly instanceHealthy: Gauge;
  readonly instanceOutstanding: Gauge;
  readonly instanceRestarts: Counter;
  readonly retries: Counter;
  readonly cacheLookups: Counter;
  readonly kvUsage: Gauge;
  private readonly perInstance = new Map<string, Instrument>();
  /** Set by the gateway: refreshes point-in-time gauges before any exposition or cluster collection. */
  beforeCollect?: () => void;

  constructor(readonly modelName: string) {
    const r = [this.registry];
    this.registry.setDefaultLabels({ model_name: modelName });
    this.running = new Gauge({ name: "dsr:num_requests_running", help: "Requests being generated.", registers: r });
    this.waiting = new Gauge({ name: "dsr:num_requests_waiting", help: "Requests waiting for a slot (gateway queue).", registers: r });
    this.success = new Counter({ name: "dsr:request_success_total", help: "Finished requests by finish reason.", labelNames: ["finished_reason"], registers: r });
    this.failures = new Counter({ name: "dsr:request_failure_total", help: "Requests answered with an error, by HTTP status.", labelNames: ["status"], registers: r });
    this.promptTokens = new Counter({ name: "dsr:prompt_tokens_total", help: "Prefill tokens processed.", registers: r });
    this.generationTokens = new Counter({ name: "dsr:generation_tokens_total", help: "Tokens generated.", registers: r });
    this.ttft = new Histogram({ name: "dsr:time_to_first_token_seconds", help: "Time to the first generated token.", labelNames: ["instance"], buckets: TTFT_BUCKETS, registers: r });
    // no instance label: observed once per streamed chunk, the hottest metric, so it takes the label-free path
    this.itl = new Histogram({ name: "dsr:inter_token_latency_seconds", help: "Gap between successive streamed chunks.", buckets: ITL_BUCKETS, registers: r });
    this.tpot = new Histogram({ name: "dsr:request_time_per_output_token_seconds", help: "Per request: (latency - TTFT) / (output tokens - 1).", buckets: ITL_BUCKETS, registers: r });
    this.e2e = new Histogram({ name: "dsr:e2e_request_latency_seconds", help: "End-to-end request latency.", buckets: E2E_BUCKETS, registers: r });
    this.queueTime = new Histogram({ name: "dsr:request_queue_time_seconds", help: "Time spent in the gateway queue.", buckets: E2E_BUCKETS, registers: r });
    this.instanceHealthy = new Gauge({ name: "dsr:instance_healthy", help: "1 when the instance passes its readiness check.", labelNames: ["instance"], registers: r, aggregator: "min" });
    this.instanceOutstanding = new Gauge({ name: "dsr:instance_outstanding_requests", help: "Requests in flight per instance.", labelNames: ["instance"], registers: r });
    this.instanceRestarts = new Counter({ name: "dsr:instance_restarts_total", help: "Supervised instance restarts.", labelNames: ["instance"], registers: r });
    this.retries = new Counter({ name: "dsr:request_retries_total", help: "Requests retried on another instance before the first byte.", registers: r });
    this.cacheLookups = new Counter({ name: "dsr:response_cache_lookups_total", help: "Response cache lookups.", labelNames: ["result"], registers: r });
    this.kvUsage = new Gauge({ name: "dsr:kv_cache_usage_perc", help: "KV cache usage, 0-1, where the engine reports it.", labelNames: ["instance"], registers: r, aggregator: "max" });
  }

  /** The served name is known only after an upstream answered /v1/models. */
  setModelName(name: string): void {
    this.registry.setDefaultLabels({ model_name: name });
  }

  /** Bound histogram children per instance: the per-chunk path does no label lookups. */
  instrument(instance: string): Instrument {
    let i = this.perInstance.get(instance);
    if (!i) {
      const t = this.ttft.labels({ instance });
      const g = this.itl;
      i = { ttft: (s) => t.observe(s), itl: (s) => g.observe(s) };
      this.perInstance.set(instance, i);
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
