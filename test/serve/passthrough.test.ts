/**
 * Other `/v1` routes through `dsr serve --upstream`, as nginx would pass them: `/v1/responses`
 * (OpenAI's Responses API, the official SDK as client, streamed and not) and `/v1/embeddings`, with
 * the served name mapped to the upstream's model, the API key checked (and not passed on), the
 * client's other headers passed on, unknown models refused. A token engine has no such routes: 404.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { startServe, type ServeProc } from "./helpers.js";

let up: Standin;
let gw: ServeProc;
let log: string;
const KEY = "sk-pass";

beforeAll(async () => {
  up = await startStandin({ tokens: 3, paceMs: 5, model: "r1-upstream" });
  const dir = await tempDir();
  await writeFile(join(dir, "keys.txt"), `${KEY} team-p\n`);
  log = join(dir, "req.log");
  gw = await startServe(["--upstream", up.url, "--served-model-name", "dsr-r1", "--api-key-file", join(dir, "keys.txt"), "--log-file", log]);
});
afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

const sdk = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY, maxRetries: 0 });

describe("other /v1 routes are passed to the upstream", () => {
  it("/v1/responses via the SDK, non-stream and stream: the upstream's answer and typed events, the model mapped", async () => {
    const r = await sdk().responses.create({ model: "dsr-r1", input: "hi" });
    expect(r.output_text).toBe("Hello, world");
    const deltas: string[] = [];
    let completed = false;
    for await (const ev of await sdk().responses.create({ model: "dsr-r1", input: "hi", stream: true })) {
      if (ev.type === "response.output_text.delta") deltas.push(ev.delta);
      if (ev.type === "response.completed") completed = true;
    }
    expect(deltas.join("")).toBe("Hello, world");
    expect(completed).toBe(true);
    const seen = up.requests.filter((q) => q.body.input === "hi");
    expect(seen.map((q) => q.body.model)).toEqual(["r1-upstream", "r1-upstream"]);
  });

  it("/v1/responses answers are generations in /metrics and the request log: finish reason, input and output tokens, TTFT and gaps when streamed", async () => {
    const metric = async (re: RegExp) => Number(re.exec(await (await fetch(`${gw.url}/metrics`)).text())?.[1] ?? 0);
    const success = (reason: string) => metric(new RegExp(`^dsr:request_success_total\\{[^}]*finished_reason="${reason}"[^}]*\\} (\\d+)`, "m"));
    const before = { stop: await success("stop"), length: await success("length"), prompt: await metric(/^dsr:prompt_tokens_total\{[^}]*\} (\d+)/m), generation: await metric(/^dsr:generation_tokens_total\{[^}]*\} (\d+)/m), ttft: await metric(/^dsr:time_to_first_token_seconds_count\{[^}]*\} (\d+)/m), itl: await metric(/^dsr:inter_token_latency_seconds_count\{[^}]*\} (\d+)/m) };
    await sdk().responses.create({ model: "dsr-r1", input: "books" }); // 3 output tokens, completed
    for await (const _ of await sdk().responses.create({ model: "dsr-r1", input: "books", stream: true, max_output_tokens: 2 })); // 2, incomplete
    expect(await success("stop")).toBe(before.stop + 1);
    expect(await success("length")).toBe(before.length + 1);
    expect(await metric(/^dsr:prompt_tokens_total\{[^}]*\} (\d+)/m)).toBe(before.prompt + 8);
    expect(await metric(/^dsr:generation_tokens_total\{[^}]*\} (\d+)/m)).toBe(before.generation + 5);
    expect(await metric(/^dsr:time_to_first_token_seconds_count\{[^}]*\} (\d+)/m)).toBe(before.ttft + 1); // the stream's first delta
    expect(await metric(/^dsr:inter_token_latency_seconds_count\{[^}]*\} (\d+)/m)).toBe(before.itl + 1); // the gap to its second
    await new Promise((r) => setTimeout(r, 400)); // the log is written in batches
    const { readFile } = await import("node:fs/promises");
    const lines = (await readFile(log, "utf8")).trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    const books = lines.filter((l) => l.path === "/v1/responses" && l.prompt_tokens !== undefined).slice(-2);
    expect(books[0]).toMatchObject({ status: 200, model: "dsr-r1", prompt_tokens: 4, completion_tokens: 3, finish_reason: "stop" });
    expect(books[1]).toMatchObject({ status: 200, prompt_tokens: 4, completion_tokens: 2, finish_reason: "length" });
    expect(books[1].ttft_ms).toBeGreaterThan(0);
  });

  it("/v1/messages (Anthropic's API, an x-api-key client): the answer as it came, the key not passed on, and a generation in /metrics and the log", async () => {
    const metric = async (re: RegExp) => Number(re.exec(await (await fetch(`${gw.url}/metrics`)).text())?.[1] ?? 0);
    const success = (reason: string) => metric(new RegExp(`^dsr:request_success_total\\{[^}]*finished_reason="${reason}"[^}]*\\} (\\d+)`, "m"));
    const before = { stop: await success("stop"), length: await success("length"), generation: await metric(/^dsr:generation_tokens_total\{[^}]*\} (\d+)/m) };
    const post = (body: object) =>
      fetch(`${gw.url}/v1/messages`, { method: "POST", headers: { "x-api-key": KEY, "anthropic-version": "2023-06-01", "content-type": "application/json" }, body: JSON.stringify({ model: "dsr-r1", messages: [{ role: "user", content: "hi" }], ...body }) });
    const whole = await post({ max_tokens: 64 });
    expect(whole.status).toBe(200);
    expect(await whole.json()).toMatchObject({ type: "message", content: [{ type: "text", text: "Hello, world" }], stop_reason: "end_turn", usage: { input_tokens: 4, output_tokens: 3 } });
    const streamed = await post({ max_tokens: 2, stream: true });
    const events = (await streamed.text()).split("\n\n").filter((e) => e.startsWith("event: ")).map((e) => e.slice(7, e.indexOf("\n")));
    expect(events).toEqual(["message_start", "content_block_start", "ping", "content_block_delta", "content_block_delta", "content_block_stop", "message_delta", "message_stop"]);
    const seen = up.requests.filter((q) => q.body.messages !== undefined && q.body.max_tokens === 2).pop()!;
    expect(seen.body.model).toBe("r1-upstream");
    expect(seen.headers["anthropic-version"]).toBe("2023-06-01");
    expect(seen.headers["x-api-key"]).toBeUndefined(); // dsr's key, not the upstream's
    expect(await success("stop")).toBe(before.stop + 1);
    expect(await success("length")).toBe(before.length + 1);
    expect(await metric(/^dsr:generation_tokens_total\{[^}]*\} (\d+)/m)).toBe(before.generation + 5);
    await new Promise((r) => setTimeout(r, 400)); // the log is written in batches
    const { readFile } = await import("node:fs/promises");
    const lines = (await readFile(log, "utf8")).trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    const books = lines.filter((l) => l.path === "/v1/messages").slice(-2);
    expect(books[0]).toMatchObject({ status: 200, prompt_tokens: 4, completion_tokens: 3, finish_reason: "stop" });
    expect(books[1]).toMatchObject({ status: 200, prompt_tokens: 4, completion_tokens: 2, finish_reason: "length" });
    expect(books[1].ttft_ms).toBeGreaterThan(0);
  });

  it("/v1/embeddings via the SDK; the client's headers go on, its key does not; logged with the route", async () => {
    const e = await sdk().embeddings.create({ model: "dsr-r1", input: "hello", encoding_format: "float" }, { headers: { "x-team": "blue", traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" } });
    expect(e.data[0]!.embedding).toEqual([0.25, -0.5, 1]);
    const seen = up.requests.find((q) => q.body.input === "hello")!;
    expect(seen.body.model).toBe("r1-upstream");
    expect(seen.headers["x-team"]).toBe("blue");
    expect(seen.headers.traceparent).toBe("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
    expect(seen.headers.authorization).toBeUndefined();
    expect(seen.headers["x-request-id"]).toBeTruthy();
    await new Promise((r) => setTimeout(r, 400)); // the log is written in batches
    const { readFile } = await import("node:fs/promises");
    const lines = (await readFile(log, "utf8")).trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.find((l) => l.path === "/v1/embeddings")).toMatchObject({ status: 200, model: "dsr-r1", key: "team-p", instance: "u0" });
  });

  it("the key is checked first, an unknown model is a 404 naming it, and the upstream's own answer to a route it lacks comes back", async () => {
    const post = (path: string, body: object, key: string | null = KEY) => fetch(`${gw.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...(key ? { authorization: `Bearer ${key}` } : {}) }, body: JSON.stringify(body) });
    expect((await post("/v1/embeddings", { model: "dsr-r1", input: "x" }, null)).status).toBe(401);
    const unknown = await post("/v1/embeddings", { model: "nope", input: "x" });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as { error: { message: string } }).error.message).toContain("nope");
    const missing = await post("/v1/audio/speech", { model: "dsr-r1", input: "x" });
    expect(missing.status).toBe(404);
    expect(await missing.json()).toEqual({ detail: "Not Found" }); // FastAPI's, from the upstream
  });
});
