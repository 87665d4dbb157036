/**
 * `dsr serve --otlp-traces-endpoint`: spans reach real OTLP receivers on loopback — an HTTP server
 * taking OTLP/HTTP (JSON, decoded and checked field by field; protobuf, checked for its content
 * type and strings) and a gRPC server (@grpc/grpc-js) taking the collector's Export call — with
 * the client's trace as parent, the upstream sent this span's context, GenAI attributes, errors
 * marked, and the last spans flushed on SIGTERM.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import OpenAI from "openai";
import { otlpTarget } from "../../src/engine/serve/tracing.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { startServe } from "./helpers.js";

interface Received {
  contentType: string;
  body: Buffer;
}

/** An OTLP/HTTP receiver: keeps each POST to /v1/traces. */
async function otlpHttp(): Promise<{ url: string; got: Received[]; server: Server }> {
  const got: Received[] = [];
  const server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on("data", (d: Buffer) => parts.push(d));
    req.on("end", () => {
      if (req.url === "/v1/traces") got.push({ contentType: String(req.headers["content-type"]), body: Buffer.concat(parts) });
      const json = String(req.headers["content-type"]).includes("json");
      res.writeHead(req.url === "/v1/traces" ? 200 : 404, { "content-type": json ? "application/json" : "application/x-protobuf" }).end(json ? "{}" : "");
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got, server };
}

type Attr = { key: string; value: { stringValue?: string; intValue?: string | number; doubleValue?: number; arrayValue?: { values: { stringValue: string }[] } } };
type JsonSpan = { traceId: string; spanId: string; parentSpanId?: string; name: string; kind: number; attributes: Attr[]; status?: { code?: number; message?: string } };

function spansOf(got: Received[]): { service: string | undefined; span: JsonSpan }[] {
  const out: { service: string | undefined; span: JsonSpan }[] = [];
  for (const r of got) {
    const req = JSON.parse(r.body.toString("utf8")) as { resourceSpans: { resource: { attributes: Attr[] }; scopeSpans: { spans: JsonSpan[] }[] }[] };
    for (const rs of req.resourceSpans) {
      const service = rs.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue;
      for (const ss of rs.scopeSpans) for (const span of ss.spans) out.push({ service, span });
    }
  }
  return out;
}

const attr = (s: JsonSpan, key: string) => {
  const v = s.attributes.find((a) => a.key === key)?.value;
  return v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : (v?.doubleValue ?? v?.arrayValue?.values.map((x) => x.stringValue)));
};

const until = async (f: () => boolean, ms = 10_000) => {
  for (const end = Date.now() + ms; !f(); ) {
    if (Date.now() > end) throw new Error("timed out waiting for spans");
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe("OTLP endpoint URLs", () => {
  it("grpc:// (or a bare host:port) speaks OTLP/gRPC, http:// OTLP/HTTP to /v1/traces unless a path is given; anything else is named", () => {
    expect(otlpTarget("grpc://localhost:4317", undefined)).toEqual({ protocol: "grpc", url: "http://localhost:4317" });
    expect(otlpTarget("localhost:4317", undefined)).toEqual({ protocol: "grpc", url: "http://localhost:4317" });
    expect(otlpTarget("grpcs://collector:4317", undefined)).toEqual({ protocol: "grpc", url: "https://collector:4317" });
    expect(otlpTarget("http://localhost:4318", undefined)).toEqual({ protocol: "http/protobuf", url: "http://localhost:4318/v1/traces" });
    expect(otlpTarget("https://c.example/otlp/v1/traces", "http/json")).toEqual({ protocol: "http/json", url: "https://c.example/otlp/v1/traces" });
    expect(otlpTarget("http://localhost:4317", "grpc")).toEqual({ protocol: "grpc", url: "http://localhost:4317" });
    expect(() => otlpTarget("ftp://x", undefined)).toThrow(/scheme ftp/);
    expect(() => otlpTarget("http://x:4318", "thrift")).toThrow(/OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=thrift/);
  });
});

describe("dsr serve --otlp-traces-endpoint", () => {
  let standin: Standin;
  let receiver: Awaited<ReturnType<typeof otlpHttp>>;
  beforeAll(async () => {
    standin = await startStandin({ tokens: 8, paceMs: 2, model: "standin-model" });
    receiver = await otlpHttp();
  });
  afterAll(async () => {
    await standin?.close();
    receiver?.server.close();
  });

  it("OTLP/HTTP JSON: a SERVER span per request under the client's trace, GenAI attributes, the upstream sent this span's context, errors marked", async () => {
    const gw = await startServe(["--upstream", standin.url, "--otlp-traces-endpoint", receiver.url], { env: { OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/json", OTEL_BSP_SCHEDULE_DELAY: "50" } });
    try {
      const traceId = "4bf92f3577b34da6a3ce929d0e0e4736";
      const clientSpan = "00f067aa0ba902b7";
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "x", maxRetries: 0, defaultHeaders: { traceparent: `00-${traceId}-${clientSpan}-01` } });
      const stream = await client.chat.completions.create({ model: "standin-model", messages: [{ role: "user", content: "hi" }], stream: true });
      for await (const _ of stream);
      const plain = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "x", maxRetries: 0 });
      await plain.completions.create({ model: "standin-model", prompt: "hi", max_tokens: 8 });
      await expect(plain.completions.create({ model: "nope", prompt: "hi" })).rejects.toThrow(/404/);
      await plain.embeddings.create({ model: "standin-model", input: "hi" }); // a route passed to the upstream as it came
      await until(() => spansOf(receiver.got).length >= 4);
      expect(receiver.got[0].contentType).toContain("application/json");
      const spans = spansOf(receiver.got);
      expect(new Set(spans.map((s) => s.service))).toEqual(new Set(["dsr"]));

      const chat = spans.find((s) => s.span.name === "chat standin-model")!.span;
      expect(chat.traceId).toBe(traceId);
      expect(chat.parentSpanId).toBe(clientSpan);
      expect(chat.kind).toBe(2); // SERVER
      expect(attr(chat, "gen_ai.operation.name")).toBe("chat");
      expect(attr(chat, "gen_ai.request.model")).toBe("standin-model");
      expect(attr(chat, "gen_ai.usage.input_tokens")).toBe(7);
      expect(attr(chat, "gen_ai.usage.output_tokens")).toBe(8);
      expect(attr(chat, "gen_ai.response.finish_reasons")).toEqual(["length"]);
      expect(attr(chat, "http.response.status_code")).toBe(200);
      expect(attr(chat, "dsr.instance")).toBe("u0");
      expect(attr(chat, "dsr.time_to_first_token_ms")).toBeGreaterThan(0);
      expect(chat.status?.code ?? 0).not.toBe(2);
      // the upstream joined this span: same trace, this span as parent
      const up = standin.requests.find((r) => String(r.headers.traceparent ?? "").includes(traceId));
      expect(up?.headers.traceparent).toBe(`00-${traceId}-${chat.spanId}-01`);

      const completion = spans.find((s) => s.span.name === "text_completion standin-model")!.span;
      expect(completion.parentSpanId ?? "").toBe(""); // no client context: a root span
      expect(completion.traceId).not.toBe(traceId);

      const passed = spans.find((s) => s.span.name === "POST /v1/embeddings")!.span;
      expect(attr(passed, "gen_ai.request.model")).toBe("standin-model");
      expect(attr(passed, "http.response.status_code")).toBe(200);

      const failed = spans.find((s) => attr(s.span, "http.response.status_code") === 404)!.span;
      expect(failed.status?.code).toBe(2); // ERROR
      expect(failed.status?.message).toMatch(/nope/);
      expect(attr(failed, "error.type")).toBe("404");
    } finally {
      await gw.stop();
    }
  });

  it("OTLP/HTTP protobuf by default; the spans still queued at SIGTERM are exported before exit", async () => {
    const before = receiver.got.length;
    // a batch delay far longer than the test: only the shutdown's flush can send the span
    const gw = await startServe(["--upstream", standin.url], { env: { OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/v1/traces`, OTEL_BSP_SCHEDULE_DELAY: "600000", OTEL_SERVICE_NAME: "edge-gw" } });
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "x", maxRetries: 0 });
    await client.chat.completions.create({ model: "standin-model", messages: [{ role: "user", content: "hi" }] });
    await new Promise((r) => setTimeout(r, 300));
    expect(receiver.got.length).toBe(before);
    expect(await gw.stop()).toBe(0);
    const got = receiver.got.slice(before);
    expect(got.length).toBeGreaterThan(0);
    expect(got[0].contentType).toBe("application/x-protobuf");
    const bytes = got[0].body.toString("latin1");
    expect(bytes).toContain("edge-gw");
    expect(bytes).toContain("chat standin-model");
    expect(bytes).toContain("gen_ai.usage.output_tokens");
  });

  it("OTLP/gRPC: the collector's Export call arrives at a gRPC server", async () => {
    const calls: Buffer[] = [];
    const server = new grpc.Server();
    const identity = (b: Buffer) => b;
    server.addService(
      {
        Export: {
          path: "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
          requestStream: false,
          responseStream: false,
          requestSerialize: identity,
          requestDeserialize: identity,
          responseSerialize: identity,
          responseDeserialize: identity,
        },
      },
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          calls.push(call.request);
          cb(null, Buffer.alloc(0)); // an empty ExportTraceServiceResponse
        },
      },
    );
    const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
    const gw = await startServe(["--upstream", standin.url, "--otlp-traces-endpoint", `grpc://127.0.0.1:${port}`], { env: { OTEL_BSP_SCHEDULE_DELAY: "50" } });
    try {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "x", maxRetries: 0 });
      await client.completions.create({ model: "standin-model", prompt: "hi" });
      await until(() => calls.some((c) => c.toString("latin1").includes("text_completion standin-model")));
    } finally {
      await gw.stop();
      server.forceShutdown();
    }
  });

  it("a collector it cannot reach is said on stderr (once), and serving goes on", async () => {
    const gw = await startServe(["--upstream", standin.url, "--otlp-traces-endpoint", "http://127.0.0.1:1"], { env: { OTEL_BSP_SCHEDULE_DELAY: "50", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: "500" } });
    try {
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "x", maxRetries: 0 });
      await client.completions.create({ model: "standin-model", prompt: "hi" });
      await until(() => /traces: connect ECONNREFUSED 127\.0\.0\.1:1 \(exporting to http:\/\/127\.0\.0\.1:1\/v1\/traces/.test(gw.log()), 15_000);
      await client.completions.create({ model: "standin-model", prompt: "again" });
    } finally {
      expect(await gw.stop()).toBe(0);
    }
    expect(gw.log().match(/traces: connect ECONNREFUSED/g)?.length).toBe(1); // the second request's failure is not said again
    expect(gw.log()).toContain("traces: the last spans were not exported"); // the flush at exit
  });

  it("a URL it cannot use is a usage error naming the flag", async () => {
    await expect(startServe(["--upstream", standin.url, "--otlp-traces-endpoint", "ftp://collector"])).rejects.toThrow(/--otlp-traces-endpoint: ftp:\/\/collector: scheme ftp/);
  });
});
