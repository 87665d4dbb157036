/**
 * A real OpenAI-compatible server on loopback that stands in for vLLM: it streams `tokens` tokens at a
 * fixed pace (token k leaves at start + k × paceMs, so timers never drift), answers non-streaming
 * requests, /v1/models, /health, and /tokenize and /detokenize (one token per UTF-8 byte), and can misbehave on demand (status codes, dying mid-stream,
 * vLLM-style `reasoning` fields, the old flat error shape). Tests and bench/gateway.ts use it; run it
 * as a script (`tsx test/support/standin-upstream.ts --port 0 --tokens 64 --pace-ms 10
 * [--reasoning-tokens N --reasoning-field reasoning_content] [--deepseek-shape]`) to get a separate process that prints
 * `{"port":N}` on stdout.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface StandinOptions {
  tokens?: number;
  paceMs?: number;
  model?: string;
  /** Emit the first `reasoningTokens` tokens as `delta.reasoning` (vLLM ≥0.17 naming). */
  reasoningTokens?: number;
  reasoningField?: "reasoning" | "reasoning_content";
  /**
   * DeepSeek's API shape (SGLang keeps its contract): every chat delta names the absent part as
   * null — `{"content":null,"reasoning_content":"…"}` while thinking, `{"content":"…","reasoning_content":null}`
   * after — and the opening chunk is `{"role":"assistant","content":null,"reasoning_content":""}`.
   */
  deepseekShape?: boolean;
  /** Answer every generation request with this status and a vLLM-flat error body. */
  failStatus?: number;
  /** Destroy the socket after this many streamed tokens. */
  dieAfterTokens?: number;
  /** Require this bearer key. */
  apiKey?: string;
  /** No /tokenize or /detokenize: answer them as an unknown route (FastAPI's 404), as servers without them do. */
  noTokenizer?: boolean;
  /** LoRA adapter names served beside the model (vLLM's `--lora-modules NAME=PATH`): listed in /v1/models, accepted as `model`. */
  adapters?: string[];
  /** Keep each generation request in `requests` (tests look at them; a benchmark run would pile up millions). Default true. */
  record?: boolean;
}

export interface Standin {
  url: string;
  port: number;
  server: Server;
  /** Generation requests received (by x-request-id when sent). */
  requests: { id: string | undefined; body: Record<string, unknown>; headers: Record<string, string | string[] | undefined> }[];
  /** /tokenize and /detokenize bodies received. */
  tokenizerRequests: { path: string; body: Record<string, unknown> }[];
  /** Streams whose client went away before the end. */
  cancelled: number;
  options: StandinOptions;
  close(): Promise<void>;
}

export async function startStandin(options: StandinOptions = {}, port = 0): Promise<Standin> {
  const o = options;
  const state: Standin = { url: "", port: 0, server: undefined as unknown as Server, requests: [], tokenizerRequests: [], cancelled: 0, options: o, close: async () => undefined };
  const server = createServer({ keepAliveTimeout: 65_000 }, (req, res) => void handle(req, res, state));
  server.maxConnections = 100_000;
  await new Promise<void>((r) => server.listen({ port, host: "127.0.0.1", backlog: 4096 }, r));
  state.server = server;
  state.port = (server.address() as AddressInfo).port;
  state.url = `http://127.0.0.1:${state.port}`;
  state.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return state;
}

async function handle(req: IncomingMessage, res: ServerResponse, st: Standin): Promise<void> {
  const o = st.options;
  const model = o.model ?? "standin";
  const url = req.url ?? "/";
  if (req.method === "GET" && url === "/health") return void res.writeHead(200).end();
  if (req.method === "GET" && url === "/v1/models") {
    const adapters = (o.adapters ?? []).map((id) => ({ id, object: "model", created: 0, owned_by: "vllm", root: `/loras/${id}`, parent: model, max_model_len: 4096 }));
    return json(res, 200, { object: "list", data: [{ id: model, object: "model", created: 0, owned_by: "vllm", root: model, max_model_len: 4096 }, ...adapters] });
  }
  if (req.method === "POST" && (url === "/v1/embeddings" || url === "/v1/responses" || url === "/v1/messages")) return otherRoute(req, res, st, url, model);
  const chat = url === "/v1/chat/completions";
  const tokenizer = !o.noTokenizer && (url === "/tokenize" || url === "/detokenize");
  // an unknown route gets FastAPI's answer, as from vLLM
  if (req.method !== "POST" || (!chat && !tokenizer && url !== "/v1/completions")) return json(res, 404, { detail: "Not Found" });
  if (o.apiKey && req.headers.authorization !== `Bearer ${o.apiKey}`) return json(res, 401, { error: "Unauthorized" });
  if (tokenizer) return tokenizerAnswer(req, res, st, url, model);
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch {
    return json(res, 400, { object: "error", message: "bad json", type: "BadRequestError", param: null, code: 400 });
  }
  const rid = req.headers["x-request-id"];
  if (o.record !== false) st.requests.push({ id: typeof rid === "string" ? rid : undefined, body, headers: req.headers });
  if (o.failStatus) return json(res, o.failStatus, { object: "error", message: `stand-in failure ${o.failStatus}`, type: "InternalServerError", param: null, code: o.failStatus });
  if (body.model !== model && !o.adapters?.includes(String(body.model))) return json(res, 404, { error: { message: `The model \`${String(body.model)}\` does not exist.`, type: "NotFoundError", param: "model", code: 404 } });
  const answering = String(body.model); // the model or the adapter asked for, as vLLM answers

  const n = typeof body.max_tokens === "number" ? Math.min(body.max_tokens, o.tokens ?? 64) : o.tokens ?? 64;
  const pace = o.paceMs ?? 10;
  const rTok = chat ? o.reasoningTokens ?? 0 : 0; // reasoning exists only in chat
  const rField = o.reasoningField ?? "reasoning";
  const id = `cmpl-${Math.random().toString(36).slice(2, 12)}`;
  const created = Math.floor(Date.now() / 1000);
  const tok = (k: number) => ` t${k}`;
  const usage = { prompt_tokens: 7, completion_tokens: n, total_tokens: 7 + n };

  let closed = false;
  res.on("close", () => {
    if (!res.writableFinished) {
      closed = true;
      st.cancelled++;
    }
  });
  if (body.stream !== true) {
    await sleep(pace * n);
    if (closed) return;
    let reasoning = "";
    let content = "";
    for (let k = 0; k < n; k++) (k < rTok ? (reasoning += tok(k)) : (content += tok(k)));
    const choice = chat
      ? { index: 0, message: { role: "assistant", content, ...(rTok ? { [rField]: reasoning } : {}) }, finish_reason: "length", logprobs: null }
      : { index: 0, text: content, finish_reason: "length", logprobs: null };
    return json(res, 200, { id, object: chat ? "chat.completion" : "text_completion", created, model: answering, choices: [choice], usage });
  }

  res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  const head = `{"id":"${id}","object":"${chat ? "chat.completion.chunk" : "text_completion"}","created":${created},"model":"${answering}","choices":[`;
  const event = (k: number, finish: string | null) => {
    const piece = JSON.stringify(tok(k));
    const fin = finish ? `"${finish}"` : "null";
    const delta = o.deepseekShape
      ? k < rTok
        ? `"content":null,"${rField}":${piece}`
        : `"content":${piece},"${rField}":null`
      : k < rTok
        ? `"${rField}":${piece}`
        : `"content":${piece}`;
    const choice = chat ? `{"index":0,"delta":{${delta}},"logprobs":null,"finish_reason":${fin}}` : `{"index":0,"text":${piece},"logprobs":null,"finish_reason":${fin}}`;
    return `data: ${head}${choice}]}\n\n`;
  };
  const opening = o.deepseekShape ? `"role":"assistant","content":null,"${rField}":""` : `"role":"assistant","content":""`;
  if (chat) res.write(`data: ${head}{"index":0,"delta":{${opening}},"logprobs":null,"finish_reason":null}]}\n\n`);
  const t0 = performance.now();
  for (let k = 0; k < n; k++) {
    const wait = t0 + (k + 1) * pace - performance.now();
    if (wait > 0) await sleep(wait);
    if (closed) return;
    if (o.dieAfterTokens !== undefined && k >= o.dieAfterTokens) return void res.destroy();
    res.write(event(k, k === n - 1 ? "length" : null));
  }
  const so = body.stream_options as { include_usage?: boolean } | undefined;
  if (so?.include_usage) res.write(`data: ${head}],"usage":${JSON.stringify(usage)}}\n\n`);
  res.end("data: [DONE]\n\n");
}

/** vLLM's /tokenize and /detokenize shapes over a byte tokenizer: a prompt's (or the messages' joined contents') UTF-8 bytes are its tokens. */
/**
 * Three of vLLM's other routes, for the gateway's pass-through: `/v1/embeddings` (a fixed vector per
 * input), `/v1/responses` (OpenAI's Responses API: JSON, or its typed SSE events with `stream`) and
 * `/v1/messages` (Anthropic's Messages API, likewise).
 */
async function otherRoute(req: IncomingMessage, res: ServerResponse, st: Standin, url: string, model: string): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>;
  const rid = req.headers["x-request-id"];
  if (st.options.record !== false) st.requests.push({ id: typeof rid === "string" ? rid : undefined, body, headers: req.headers });
  if (body.model !== model && !st.options.adapters?.includes(String(body.model))) return json(res, 404, { error: { message: `The model \`${String(body.model)}\` does not exist.`, type: "NotFoundError", param: "model", code: 404 } });
  if (url === "/v1/embeddings") {
    return json(res, 200, { object: "list", model: body.model, data: [{ object: "embedding", index: 0, embedding: [0.25, -0.5, 1] }], usage: { prompt_tokens: 3, total_tokens: 3 } });
  }
  const text = ["Hello", ",", " world"];
  if (url === "/v1/messages") return messagesAnswer(res, st, body, text);
  const budget = typeof body.max_output_tokens === "number" ? body.max_output_tokens : text.length;
  const said = text.slice(0, budget);
  const done = {
    id: "resp-1",
    object: "response",
    model: body.model,
    status: said.length < text.length ? "incomplete" : "completed",
    incomplete_details: said.length < text.length ? { reason: "max_output_tokens" } : null,
    output: [{ type: "message", role: "assistant", content: [{ type: "output_text", text: said.join("") }] }],
    usage: { input_tokens: 4, output_tokens: said.length, total_tokens: 4 + said.length },
  };
  if (!body.stream) return json(res, 200, done);
  res.writeHead(200, { "content-type": "text/event-stream", "x-standin": "responses" });
  for (const delta of said) {
    res.write(`event: response.output_text.delta\ndata: ${JSON.stringify({ type: "response.output_text.delta", delta })}\n\n`);
    await sleep(st.options.paceMs ?? 10);
  }
  res.end(`event: response.${done.status}\ndata: ${JSON.stringify({ type: `response.${done.status}`, response: done })}\n\n`);
}

/** Anthropic's Messages API as vLLM serves it: a message, or its typed events (`max_tokens` cuts the text, stop_reason max_tokens). */
async function messagesAnswer(res: ServerResponse, st: Standin, body: Record<string, unknown>, text: string[]): Promise<void> {
  const said = text.slice(0, typeof body.max_tokens === "number" ? body.max_tokens : text.length);
  const stop = said.length < text.length ? "max_tokens" : "end_turn";
  const message = { id: "msg_1", type: "message", role: "assistant", model: body.model, content: [{ type: "text", text: said.join("") }], stop_reason: stop, stop_sequence: null, usage: { input_tokens: 4, output_tokens: said.length } };
  if (!body.stream) return json(res, 200, message);
  const send = (type: string, data: object) => res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
  res.writeHead(200, { "content-type": "text/event-stream", "x-standin": "messages" });
  send("message_start", { message: { ...message, content: [], stop_reason: null, usage: { input_tokens: 4, output_tokens: 1 } } });
  send("content_block_start", { index: 0, content_block: { type: "text", text: "" } });
  send("ping", {});
  for (const piece of said) {
    send("content_block_delta", { index: 0, delta: { type: "text_delta", text: piece } });
    await sleep(st.options.paceMs ?? 10);
  }
  send("content_block_stop", { index: 0 });
  send("message_delta", { delta: { stop_reason: stop, stop_sequence: null }, usage: { output_tokens: said.length } });
  res.end(`event: message_stop\ndata: {"type":"message_stop"}\n\n`);
}

async function tokenizerAnswer(req: IncomingMessage, res: ServerResponse, st: Standin, url: string, model: string): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  const body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Record<string, unknown>;
  st.tokenizerRequests.push({ path: url, body });
  if (body.model !== undefined && body.model !== model) return json(res, 404, { error: { message: `The model \`${String(body.model)}\` does not exist.`, type: "NotFoundError", param: "model", code: 404 } });
  if (url === "/detokenize") return json(res, 200, { prompt: Buffer.from(body.tokens as number[]).toString("utf8") });
  const text = typeof body.prompt === "string" ? body.prompt : (body.messages as { content: string }[]).map((m) => m.content).join("\n");
  const tokens = [...Buffer.from(text, "utf8")];
  json(res, 200, { count: tokens.length, max_model_len: 4096, tokens, token_strs: null });
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const s = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(s) }).end(s);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Script mode: a separate process for the benchmark. `--workers N` runs N processes (node:cluster)
// sharing the port, so on a many-core machine the stand-in is not the bottleneck of the proxies it feeds.
if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, "/"))) {
  const arg = (name: string, d: number) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? Number(process.argv[i + 1]) : d;
  };
  const mi = process.argv.indexOf("--model");
  const model = mi >= 0 ? process.argv[mi + 1] : undefined;
  const workers = arg("--workers", 1);
  const cluster = (await import("node:cluster")).default;
  if (workers > 1 && cluster.isPrimary) {
    let up = 0;
    cluster.on("listening", (_w, a) => {
      if (++up === workers) process.stdout.write(JSON.stringify({ port: a.port, url: `http://127.0.0.1:${a.port}`, workers }) + "\n");
    });
    for (let i = 0; i < workers; i++) cluster.fork();
    process.on("SIGTERM", () => {
      for (const w of Object.values(cluster.workers ?? {})) w?.kill();
      process.exit(0);
    });
  } else {
    const fi = process.argv.indexOf("--reasoning-field");
    const reasoningField = fi >= 0 ? (process.argv[fi + 1] as StandinOptions["reasoningField"]) : undefined;
    const adapters = process.argv.flatMap((a, i) => (a === "--adapter" ? [process.argv[i + 1]] : []));
    const deepseekShape = process.argv.includes("--deepseek-shape");
    const s = await startStandin({ tokens: arg("--tokens", 64), paceMs: arg("--pace-ms", 10), model, adapters, reasoningTokens: arg("--reasoning-tokens", 0), reasoningField, deepseekShape, record: false }, arg("--port", 0));
    if (cluster.isPrimary) process.stdout.write(JSON.stringify({ port: s.port, url: s.url }) + "\n");
  }
}
