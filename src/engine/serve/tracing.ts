/**
 * OpenTelemetry traces of the gateway's requests (`--otlp-traces-endpoint URL`, vLLM's flag; or the
 * standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT). Each generation request (and each request passed to
 * an upstream) is one SERVER span, a child of the client's W3C `traceparent` when it sent one, named
 * and tagged after OpenTelemetry's GenAI conventions (`chat MODEL`, gen_ai.request.model,
 * gen_ai.usage.input_tokens / output_tokens, gen_ai.response.finish_reasons) with dsr's own timings
 * (TTFT, queue time, instance). The upstream gets a `traceparent` naming this span, so a vLLM child
 * started with the same flag puts its spans under it.
 *
 * Exported with the OpenTelemetry JS SDK (batched, in the background): `grpc://HOST:PORT` (or a bare
 * HOST:PORT, as vLLM's examples write it) speaks OTLP/gRPC; `http(s)://…` speaks OTLP/HTTP,
 * protobuf unless OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/json, to `/v1/traces` when the URL has no
 * path. The SDK's own environment (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_BSP_*) applies. The
 * SDK is loaded only when tracing is on: a gateway without it pays nothing per request.
 */
import type { Span } from "@opentelemetry/api";

/** What a finished request tells its span. */
export interface SpanEnd {
  status: number;
  /** gen_ai.operation.name: "chat", "text_completion", or undefined for a passed-through route. */
  operation?: string;
  model?: string;
  instance?: string;
  promptTokens?: number;
  completionTokens?: number;
  finishReason?: string | null;
  ttftMs?: number;
  queueMs?: number;
  error?: string;
}

/** One request's span: the context to forward upstream, and its end. */
export interface RequestSpan {
  /** The W3C trace context naming this span, for the upstream request. */
  readonly traceparent: string | undefined;
  readonly tracestate: string | undefined;
  end(e: SpanEnd): void;
}

export interface RequestTracer {
  /** A span for a request that arrived at `t0` (performance.now() ms), under the client's trace context if its headers carry one. */
  begin(id: string, path: string, headers: Record<string, string | undefined>, t0: number): RequestSpan;
  /** Exports what is queued and stops. */
  shutdown(): Promise<void>;
}

/** Where and how spans go, from the flag's URL (and OTEL_EXPORTER_OTLP_TRACES_PROTOCOL): throws a message naming the fault. */
export function otlpTarget(endpoint: string, protocolEnv: string | undefined): { protocol: "grpc" | "http/protobuf" | "http/json"; url: string } {
  const bare = !/^[a-z][a-z0-9+.-]*:\/\//i.test(endpoint);
  let u: URL;
  try {
    u = new URL(bare ? `grpc://${endpoint}` : endpoint);
  } catch {
    throw new Error(`${JSON.stringify(endpoint)} is not a URL (expected grpc://HOST:PORT or http://HOST:PORT/v1/traces)`);
  }
  const scheme = u.protocol.slice(0, -1).toLowerCase();
  if (scheme === "grpc" || scheme === "grpcs") {
    if (!u.port && !u.hostname) throw new Error(`${endpoint}: no host`);
    // the gRPC exporter takes http(s) URLs: grpc:// means plaintext, grpcs:// TLS
    return { protocol: "grpc", url: `${scheme === "grpcs" ? "https" : "http"}://${u.host}` };
  }
  if (scheme !== "http" && scheme !== "https") throw new Error(`${endpoint}: scheme ${scheme}:// is not one of grpc://, grpcs://, http://, https://`);
  const p = (protocolEnv ?? "").trim().toLowerCase();
  if (p === "grpc") return { protocol: "grpc", url: `${u.protocol}//${u.host}` };
  if (p !== "" && p !== "http/protobuf" && p !== "http/json") throw new Error(`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=${protocolEnv}: expected grpc, http/protobuf or http/json`);
  const path = u.pathname === "/" ? "/v1/traces" : u.pathname;
  return { protocol: p === "http/json" ? "http/json" : "http/protobuf", url: `${u.protocol}//${u.host}${path}${u.search}` };
}

/**
 * A CommonJS package's exports however it was loaded: Node gives its named exports beside
 * `default`, while a bundle split into chunks (the standalone build) gives only `default`. `key`,
 * one of the package's names, tells which (the API package's own `default` is another object).
 */
function namedExports<T extends object>(m: T, key: keyof T): T {
  return m[key] !== undefined ? m : ((m as { default?: T }).default ?? m);
}

/** Starts the SDK for `endpoint` (see otlpTarget). */
export async function createTracer(endpoint: string, env: Record<string, string | undefined>, version: string, note: (line: string) => void = () => undefined): Promise<RequestTracer> {
  const target = otlpTarget(endpoint, env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL);
  const [api, core, resources, sdk] = await Promise.all([
    import("@opentelemetry/api").then((m) => namedExports(m, "ROOT_CONTEXT")),
    import("@opentelemetry/core").then((m) => namedExports(m, "W3CTraceContextPropagator")),
    import("@opentelemetry/resources").then((m) => namedExports(m, "resourceFromAttributes")),
    import("@opentelemetry/sdk-trace-base").then((m) => namedExports(m, "BasicTracerProvider")),
  ]);
  const { OTLPTraceExporter } = namedExports(
    target.protocol === "grpc"
      ? await import("@opentelemetry/exporter-trace-otlp-grpc")
      : target.protocol === "http/json"
        ? await import("@opentelemetry/exporter-trace-otlp-http")
        : await import("@opentelemetry/exporter-trace-otlp-proto"),
    "OTLPTraceExporter",
  );
  // the SDK reports export failures (a collector down, a wrong URL) through its diag logger, silent
  // by default: they are said, at most once a minute, so a wrong endpoint does not go unnoticed
  let quietUntil = 0;
  const say = (...args: unknown[]) => {
    const now = Date.now();
    if (now < quietUntil) return;
    quietUntil = now + 60_000;
    // the SDK hands over errors as objects, or as their JSON: their message is what helps
    const message = (a: unknown) => (typeof (a as { message?: unknown })?.message === "string" ? (a as { message: string }).message : undefined);
    const text = (a: unknown) => {
      if (typeof a !== "string") return message(a) ?? JSON.stringify(a);
      if (!a.startsWith("{")) return a;
      try {
        return message(JSON.parse(a)) ?? a;
      } catch {
        return a;
      }
    };
    note(`traces: ${args.map(text).join(" ")} (exporting to ${target.url}; said at most once a minute)`);
  };
  api.diag.setLogger({ error: say, warn: say, info: () => undefined, debug: () => undefined, verbose: () => undefined }, api.DiagLogLevel.WARN);
  const exporter = new OTLPTraceExporter({ url: target.url });
  const resource = resources.resourceFromAttributes({ "service.name": env.OTEL_SERVICE_NAME || "dsr", "service.version": version });
  const provider = new sdk.BasicTracerProvider({ resource, spanProcessors: [new sdk.BatchSpanProcessor(exporter)] });
  const tracer = provider.getTracer("dsr.serve", version);
  const propagator = new core.W3CTraceContextPropagator();
  /** performance.now() ms → an epoch time the SDK takes. */
  const epoch = (ms: number) => performance.timeOrigin + ms;

  return {
    begin(id, path, headers, t0) {
      const parent = headers.traceparent ? propagator.extract(api.ROOT_CONTEXT, headers, api.defaultTextMapGetter) : api.ROOT_CONTEXT;
      const span: Span = tracer.startSpan(`POST ${path}`, { kind: api.SpanKind.SERVER, startTime: epoch(t0), attributes: { "http.request.method": "POST", "url.path": path, "dsr.request_id": id } }, parent);
      const carrier: Record<string, string> = {};
      propagator.inject(api.trace.setSpan(api.ROOT_CONTEXT, span), carrier, api.defaultTextMapSetter);
      return {
        traceparent: carrier.traceparent,
        tracestate: carrier.tracestate,
        end(e) {
          if (e.operation) span.updateName(e.model ? `${e.operation} ${e.model}` : e.operation);
          const a: Record<string, string | number | string[]> = { "http.response.status_code": e.status };
          if (e.operation) a["gen_ai.operation.name"] = e.operation;
          if (e.model) a["gen_ai.request.model"] = e.model;
          if (e.promptTokens !== undefined) a["gen_ai.usage.input_tokens"] = e.promptTokens;
          if (e.completionTokens !== undefined) a["gen_ai.usage.output_tokens"] = e.completionTokens;
          if (e.finishReason) a["gen_ai.response.finish_reasons"] = [e.finishReason];
          if (e.instance) a["dsr.instance"] = e.instance;
          if (e.ttftMs !== undefined) a["dsr.time_to_first_token_ms"] = Math.round(e.ttftMs * 1000) / 1000;
          if (e.queueMs !== undefined) a["dsr.queue_time_ms"] = Math.round(e.queueMs * 1000) / 1000;
          if (e.status >= 400) a["error.type"] = String(e.status);
          span.setAttributes(a);
          if (e.status >= 400 || e.error) span.setStatus({ code: api.SpanStatusCode.ERROR, message: e.error });
          span.end(epoch(performance.now()));
        },
      };
    },
    async shutdown() {
      await provider.shutdown();
    },
  };
}
