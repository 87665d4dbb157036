/**
 * `dsr serve --upstream` as a real child process in front of real loopback stand-in servers:
 * the official openai SDK (chat + completions, stream + non-stream), reasoning-field normalisation,
 * upstream error shapes, retries before the first byte, in-band errors after it, client disconnect
 * cancelling upstream, metrics checked by promtool, request log without keys.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createHash } from "node:crypto";
import OpenAI from "openai";
import { spawnSync } from "node:child_process";
import { connect } from "node:net";
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { runDsr } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { freePort, sseEvents, startServe, type ServeProc } from "./helpers.js";

let good: Standin;
let broken: Standin;
let gw: ServeProc;
let dir: string;
const KEY = "sk-test-secret-0123456789";

beforeAll(async () => {
  dir = await tempDir();
  good = await startStandin({ tokens: 12, paceMs: 2, reasoningTokens: 4, model: "r1-upstream" });
  broken = await startStandin({ tokens: 12, paceMs: 2, failStatus: 500, model: "r1-upstream" });
  await writeFile(join(dir, "keys.txt"), `# team keys\n${KEY}   team-a\nsk-other\n`);
  gw = await startServe([
    "--upstream", broken.url, good.url,
    "--served-model-name", "dsr-r1",
    "--api-key-file", join(dir, "keys.txt"),
    "--log-file", join(dir, "req.log"),
  ]);
});

afterAll(async () => {
  await gw?.stop();
  await good?.close();
  await broken?.close();
});

const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: KEY, maxRetries: 0 });

describe("dsr serve --upstream (proxy mode)", () => {
  it("lists the served name and maps it to the upstream's model id", async () => {
    const models = await client().models.list();
    expect(models.data.map((m) => m.id)).toEqual(["dsr-r1"]);
    expect((models.data[0] as unknown as { root: string }).root).toBe("r1-upstream");
    expect((models.data[0] as unknown as { max_model_len: number }).max_model_len).toBe(4096); // the upstream's card says so
  });

  it("chat non-stream via the SDK: both reasoning fields, content, usage; the failing instance is retried around", async () => {
    const before = broken.requests.length;
    const r = await client().chat.completions.create({ model: "dsr-r1", messages: [{ role: "user", content: "hi" }] });
    const msg = r.choices[0].message as unknown as Record<string, unknown>;
    expect(msg.reasoning).toBe(" t0 t1 t2 t3");
    expect(msg.reasoning_content).toBe(" t0 t1 t2 t3");
    expect(msg.content).toBe(" t4 t5 t6 t7 t8 t9 t10 t11");
    expect(r.usage).toMatchObject({ completion_tokens: 12 });
    // whichever instance the router tried first, the answer came from the good one exactly once
    const tried = broken.requests.length - before;
    expect(tried).toBeLessThanOrEqual(1);
  });

  it("chat stream via the SDK: reasoning deltas under both names, then content, no usage unless asked", async () => {
    const s = await client().chat.completions.create({ model: "dsr-r1", messages: [{ role: "user", content: "hi" }], stream: true });
    let reasoning = "";
    let content = "";
    let usageSeen = false;
    for await (const ch of s) {
      if (ch.usage) usageSeen = true;
      const d = ch.choices[0]?.delta as Record<string, string> | undefined;
      if (d?.reasoning) {
        expect(d.reasoning_content).toBe(d.reasoning);
        reasoning += d.reasoning;
      }
      content += d?.content ?? "";
    }
    expect(reasoning).toBe(" t0 t1 t2 t3");
    expect(content).toBe(" t4 t5 t6 t7 t8 t9 t10 t11");
    expect(usageSeen).toBe(false); // the gateway asked the upstream for usage but drops it for this client
    // …and the upstream really was asked for usage, so token metrics are exact
    expect(good.requests.at(-1)!.body.stream_options).toEqual({ include_usage: true });
  });

  it("completions stream and non-stream via the SDK, with usage when asked", async () => {
    const c = await client().completions.create({ model: "dsr-r1", prompt: "x", max_tokens: 5 });
    expect(c.choices[0].text).toBe(" t0 t1 t2 t3 t4");
    const s = await client().completions.create({ model: "dsr-r1", prompt: "x", max_tokens: 3, stream: true, stream_options: { include_usage: true } });
    let text = "";
    let usage;
    for await (const ch of s) {
      text += ch.choices[0]?.text ?? "";
      if (ch.usage) usage = ch.usage;
    }
    expect(text).toBe(" t0 t1 t2");
    expect(usage).toMatchObject({ completion_tokens: 3 });
  });

  it("OpenAI-shaped errors: 401 without/with a wrong key, 404 unknown model, 400 bad params and bad JSON, 413 huge body", async () => {
    const post = (body: string, headers: Record<string, string> = { authorization: `Bearer ${KEY}` }) =>
      fetch(`${gw.url}/v1/chat/completions`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
    const noKey = await post("{}", {});
    expect(noKey.status).toBe(401);
    expect((await noKey.json()).error.code).toBe("invalid_api_key");
    expect((await post("{}", { authorization: "Bearer sk-wrong" })).status).toBe(401);
    const unknown = await post(JSON.stringify({ model: "gpt-4", messages: [{ role: "user", content: "x" }] }));
    expect(unknown.status).toBe(404);
    expect((await unknown.json()).error).toMatchObject({ type: "not_found_error", param: "model" });
    const bad = await post(JSON.stringify({ model: "dsr-r1", messages: [{ role: "user", content: "x" }], temperature: 9 }));
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.param).toBe("temperature");
    const badJson = await post("{nope");
    expect(badJson.status).toBe(400);
    expect((await badJson.json()).error.code).toBe("invalid_json");
    const huge = await post(JSON.stringify({ model: "dsr-r1", messages: [{ role: "user", content: "x".repeat(5 * 1024 * 1024) }] }));
    expect(huge.status).toBe(413);
    // /health stays open without a key (vLLM semantics); /v1/models is guarded
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
    expect((await fetch(`${gw.url}/v1/models`)).status).toBe(401);
  });

  it("/tokenize and /detokenize go to an instance with the upstream's model name, behind the API key; an upstream without them is a 404 naming it", async () => {
    const post = (path: string, body: unknown, headers: Record<string, string> = { authorization: `Bearer ${KEY}` }) =>
      fetch(`${gw.url}${path}`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) });
    expect((await post("/tokenize", { prompt: "hé" }, {})).status).toBe(401);
    const t = await post("/tokenize", { model: "dsr-r1", prompt: "hé" });
    expect(t.status).toBe(200);
    expect(await t.json()).toEqual({ count: 3, max_model_len: 4096, tokens: [0x68, 0xc3, 0xa9], token_strs: null });
    const d = await post("/detokenize", { model: "dsr-r1", tokens: [0x68, 0xc3, 0xa9] });
    expect(await d.json()).toEqual({ prompt: "hé" });
    const chat = await post("/tokenize", { messages: [{ role: "user", content: "ab" }] });
    expect((await chat.json()).tokens).toEqual([0x61, 0x62]);
    // the served name is mapped to the upstream's; a body without a model goes as it came (to either instance)
    const seen = [...broken.tokenizerRequests, ...good.tokenizerRequests].map((r) => `${r.path} ${r.body.model}`).sort();
    expect(seen).toEqual(["/detokenize r1-upstream", "/tokenize r1-upstream", "/tokenize undefined"]);
    expect((await post("/tokenize", { model: "gpt-4", prompt: "x" })).status).toBe(404);
    const bad = await post("/tokenize", { prompt: 5 });
    expect(bad.status).toBe(400);
    expect((await bad.json()).error.param).toBe("prompt");
    expect((await post("/detokenize", { tokens: [-1] })).status).toBe(400);
    expect((await fetch(`${gw.url}/tokenize`, { headers: { authorization: `Bearer ${KEY}` } })).status).toBe(405);

    const bare = await startStandin({ noTokenizer: true, model: "r1-upstream" });
    const g2 = await startServe(["--upstream", bare.url]);
    try {
      const r = await fetch(`${g2.url}/tokenize`, { method: "POST", body: JSON.stringify({ prompt: "x" }) });
      expect(r.status).toBe(404);
      expect((await r.json()).error.message).toMatch(/^upstream .* has no \/tokenize endpoint/);
    } finally {
      await g2.stop();
      await bare.close();
    }
  });

  it("--served-model-name over upstreams that serve different models is refused at start, naming what each serves", async () => {
    const other = await startStandin({ model: "qwen-other" });
    try {
      const r = await runDsr(["serve", "--upstream", good.url, other.url, "--served-model-name", "r1", "--port", "0"]);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toContain(`--served-model-name names one model, but the upstreams serve different ones (${good.url} serves r1-upstream; ${other.url} serves qwen-other)`);
      expect(r.stderr).toContain("leave --served-model-name out to serve each model under its own name");
    } finally {
      await other.close();
    }
  });

  for (const workers of [1, 2]) {
    it(`--workers ${workers}: upstreams of different models: each model under its own name, routed only to the upstreams that list it, with its own metrics`, async () => {
      const a = await startStandin({ tokens: 3, paceMs: 1, model: "model-a" });
      const b = await startStandin({ tokens: 5, paceMs: 1, model: "model-b" });
      const g = await startServe(["--upstream", a.url, b.url, "--workers", String(workers)]);
      try {
        const sdk = new OpenAI({ baseURL: `${g.url}/v1`, apiKey: "none", maxRetries: 0 });
        expect((await sdk.models.list()).data.map((m) => m.id)).toEqual(["model-a", "model-b"]);
        for (let k = 0; k < 6; k++) {
          const ra = await sdk.completions.create({ model: "model-a", prompt: "x" });
          expect(ra.choices[0]!.text).toBe(" t0 t1 t2");
          let text = "";
          for await (const ch of await sdk.chat.completions.create({ model: "model-b", messages: [{ role: "user", content: "x" }], stream: true })) text += ch.choices[0]?.delta.content ?? "";
          expect(text).toBe(" t0 t1 t2 t3 t4");
        }
        expect(a.requests.every((r) => r.body.model === "model-a")).toBe(true);
        expect(b.requests.every((r) => r.body.model === "model-b")).toBe(true);
        expect([a.requests.length, b.requests.length]).toEqual([6, 6]);
        const t = await fetch(`${g.url}/tokenize`, { method: "POST", body: JSON.stringify({ model: "model-b", prompt: "hi" }) });
        expect((await t.json()).tokens).toEqual([0x68, 0x69]);
        expect(b.tokenizerRequests.map((r) => r.body.model)).toEqual(["model-b"]);
        const unknown = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "model-c", prompt: "x" }) });
        expect(unknown.status).toBe(404);
        const m = await (await fetch(`${g.url}/metrics`)).text();
        expect(m).toMatch(/dsr:request_success_total\{finished_reason="length",model_name="model-a"\} 6/);
        expect(m).toMatch(/dsr:request_success_total\{finished_reason="length",model_name="model-b"\} 6/);
        expect(m).toMatch(/dsr:generation_tokens_total\{model_name="model-b"\} 30/);
        expect(m).toMatch(/dsr:time_to_first_token_seconds_count\{model_name="model-b",instance="u1"\} 6/); // streamed
        expect(m).not.toMatch(/dsr:instance_healthy\{[^}]*model_name/); // instance series belong to no one model
        const lint = spawnSync("promtool", ["check", "metrics"], { input: m, encoding: "utf8" });
        for (const l of (lint.stdout + lint.stderr).split("\n").filter((x) => x.trim())) expect(l).toMatch(/^dsr:[a-z0-9_]+ metric names should not contain ':'$/);
        // a model whose only upstream is down: 503, the other model unaffected
        await b.close();
        const down = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "model-b", prompt: "x" }) });
        expect([502, 503]).toContain(down.status);
        expect((await sdk.completions.create({ model: "model-a", prompt: "x" })).choices[0]!.text).toBe(" t0 t1 t2");
      } finally {
        await g.stop();
        await a.close();
        await b.close().catch(() => undefined);
      }
    }, 60_000);
  }

  it("several models: an upstream that was down at start has its models learnt once its health check passes", async () => {
    const a = await startStandin({ tokens: 2, paceMs: 1, model: "model-a" });
    const b = await startStandin({ tokens: 2, paceMs: 1, model: "model-b" });
    const port = await freePort();
    const g = await startServe(["--upstream", a.url, b.url, `http://127.0.0.1:${port}`]);
    let late: Standin | undefined;
    try {
      const ids = async () => ((await (await fetch(`${g.url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id);
      expect(await ids()).toEqual(["model-a", "model-b"]);
      late = await startStandin({ tokens: 2, paceMs: 1, model: "model-c" }, port);
      for (let i = 0; i < 60 && !(await ids()).includes("model-c"); i++) await new Promise((r) => setTimeout(r, 100));
      expect(await ids()).toEqual(["model-a", "model-b", "model-c"]);
      const r = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "model-c", prompt: "x" }) });
      expect((await r.json()).choices[0].text).toBe(" t0 t1");
      expect(late.requests).toHaveLength(1);
    } finally {
      await g.stop();
      for (const s of [a, b, late]) await s?.close();
    }
  }, 30_000);

  it("fuzzed request bodies never crash the gateway and always get a JSON error or an answer (SageMaker's and passed-through routes too)", async () => {
    const seeds = ['{"model":"dsr-r1","messages":[{"role":"user","content":"hi"}]}', '{"prompt":"x","max_tokens":2}', '{"model":"dsr-r1","prompt":"hé"}', '{"tokens":[104,195,169]}', '{"messages":[{"role":"user","content":"hi"}],"max_tokens":2}', '{"model":"dsr-r1","input":"hé"}'];
    const paths = ["/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/invocations", "/v1/embeddings"];
    let rnd = 12345;
    const next = () => ((rnd = (rnd * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const mutations = ["", "{", "}", "[", "]", '"', ",", ":", "null", "-1", "1e999", "\u0000", "\\", "true", "💥", "[[[[[[", '"messages":'];
    const reqs: Promise<void>[] = [];
    for (let i = 0; i < 600; i++) {
      const base = seeds[i % seeds.length];
      const chars = [...base];
      for (let m = 0; m < 1 + Math.floor(next() * 4); m++) {
        const at = Math.floor(next() * chars.length);
        if (next() < 0.5) chars.splice(at, 1);
        else chars.splice(at, 0, mutations[Math.floor(next() * mutations.length)]);
      }
      const path = paths[i % paths.length];
      reqs.push(
        fetch(gw.url + path, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body: chars.join("") }).then(async (r) => {
          const body = await r.json();
          if (r.status === 200) expect(body.choices ?? body.tokens ?? body.prompt ?? body.data).toBeDefined();
          else {
            expect([400, 404, 413]).toContain(r.status);
            expect(typeof body.error.message).toBe("string");
          }
        }),
      );
    }
    await Promise.all(reqs);
    expect((await fetch(`${gw.url}/health`)).status).toBe(200);
  });

  it("client disconnect cancels the upstream stream at once", async () => {
    const slow = await startStandin({ tokens: 500, paceMs: 20, model: "m" });
    const g2 = await startServe(["--upstream", slow.url]);
    try {
      const ac = new AbortController();
      const r = await fetch(`${g2.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "x", stream: true }), signal: ac.signal });
      const reader = r.body!.getReader();
      await reader.read();
      ac.abort();
      await expect.poll(() => slow.cancelled, { timeout: 3000 }).toBe(1);
    } finally {
      await g2.stop();
      await slow.close();
    }
  });

  it("an upstream that dies mid-stream gives an in-band error event, never a replay on another instance", async () => {
    const dying = await startStandin({ tokens: 20, paceMs: 2, dieAfterTokens: 5, model: "m" });
    const spare = await startStandin({ tokens: 20, paceMs: 2, model: "m" });
    const g2 = await startServe(["--upstream", dying.url, spare.url]);
    try {
      for (let i = 0; i < 6; i++) {
        const r = await fetch(`${g2.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "x", stream: true }) });
        const events = await sseEvents(r);
        const texts = events.filter((e) => e !== "[DONE]").map((e) => JSON.parse(e));
        const tokens = texts.filter((t) => t.choices).map((t) => t.choices[0].text);
        // never duplicated: token k appears at most once, in order
        expect(tokens).toEqual(tokens.map((_, k) => ` t${k}`));
        if (tokens.length < 20) expect(texts.at(-1).error.code).toBe("upstream_error");
      }
      // non-stream requests are retried transparently: nothing was sent yet
      const ok = await fetch(`${g2.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "x" }) });
      expect(ok.status).toBe(200);
    } finally {
      await g2.stop();
      await dying.close();
      await spare.close();
    }
  });

  it("forwards the client's W3C trace context and request id to the upstream, stream and non-stream", async () => {
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for (const stream of [false, true]) {
      const rid = `trace-${stream}`;
      const r = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "x-request-id": rid, traceparent, tracestate: "dsr=1" }, body: JSON.stringify({ model: "dsr-r1", prompt: "x", max_tokens: 2, stream }) });
      await r.text();
      const seen = good.requests.find((q) => q.id === rid)!;
      expect(seen.headers.traceparent).toBe(traceparent);
      expect(seen.headers.tracestate).toBe("dsr=1");
    }
    const plain = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "x-request-id": "no-trace" }, body: JSON.stringify({ model: "dsr-r1", prompt: "x", max_tokens: 2 }) });
    await plain.text();
    expect(good.requests.find((q) => q.id === "no-trace")!.headers.traceparent).toBeUndefined();
  });

  it("normalises vLLM's flat error shape from an upstream 4xx", async () => {
    const r = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: { authorization: `Bearer ${KEY}` }, body: JSON.stringify({ model: "dsr-r1", prompt: "x", max_tokens: 2, extra: 1 }) });
    expect(r.status).toBe(200);
    const bad = await startStandin({ failStatus: 422, model: "m" });
    const g2 = await startServe(["--upstream", bad.url]);
    try {
      const e = await fetch(`${g2.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "x" }) });
      expect(e.status).toBe(422);
      expect(await e.json()).toEqual({ error: { message: "stand-in failure 422", type: "InternalServerError", param: null, code: 422 } });
    } finally {
      await g2.stop();
      await bad.close();
    }
  });

  it("/metrics passes promtool and carries dsr:* series with model and instance labels", async () => {
    const m = await (await fetch(`${gw.url}/metrics`)).text();
    expect(m).toMatch(/dsr:request_success_total\{finished_reason="length",model_name="dsr-r1"\} \d+/);
    expect(m).toMatch(/dsr:time_to_first_token_seconds_bucket\{le="[^"]+",model_name="dsr-r1",instance="u1"\}/);
    expect(m).toContain("dsr:request_retries_total");
    // promtool parses the exposition and lints it; its one complaint must be the deliberate `:` in
    // the names (vLLM's `vllm:` metrics draw the same lint). Parse errors or other lint would show here.
    const r = spawnSync("promtool", ["check", "metrics"], { input: m, encoding: "utf8" });
    const complaints = (r.stdout + r.stderr).split("\n").filter((l) => l.trim());
    expect(complaints.length).toBeGreaterThan(0);
    for (const l of complaints) expect(l).toMatch(/^dsr:[a-z0-9_]+ metric names should not contain ':'$/);
  });

  it("writes one JSON line per request to the log, never the API key", async () => {
    const behind = await fetch(`${gw.url}/v1/models/dsr-r1`, { headers: { authorization: `Bearer ${KEY}` } }); // not a generation: not logged
    expect(behind.status).toBe(200);
    const viaProxy = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "x-forwarded-for": "203.0.113.7", "x-request-id": "via-proxy" }, body: JSON.stringify({ model: "dsr-r1", prompt: "x" }) });
    expect(viaProxy.status).toBe(200);
    await new Promise((r) => setTimeout(r, 400)); // the log is flushed every 200 ms
    const text = await readFile(join(dir, "req.log"), "utf8");
    expect(text).not.toContain(KEY);
    const lines = text.trim().split("\n").map((l) => JSON.parse(l));
    const ok = lines.find((l) => l.status === 200 && l.stream === true);
    expect(ok).toMatchObject({ model: "dsr-r1", path: "/v1/chat/completions", instance: "u1", client: "127.0.0.1" });
    expect(ok.ttft_ms).toBeGreaterThan(0);
    const refused = lines.filter((l) => l.status === 401);
    expect(refused.length).toBeGreaterThanOrEqual(2); // refused requests are logged too…
    for (const l of refused) expect(l.error).toMatch(/API key/); // …with the reason, never the key
    expect(lines.some((l) => l.prompt !== undefined)).toBe(false);
    expect(lines.find((l) => l.id === "via-proxy")).toMatchObject({ client: "127.0.0.1", forwarded_for: "203.0.113.7", status: 200, key: "team-a" });
    // the other key has no name in the file: a hash prefix stands for it, never the key
    const other = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: { authorization: "Bearer sk-other", "x-request-id": "other-key" }, body: JSON.stringify({ model: "dsr-r1", prompt: "x" }) });
    expect(other.status).toBe(200);
    await new Promise((r) => setTimeout(r, 400));
    const again = (await readFile(join(dir, "req.log"), "utf8")).trim().split("\n").map((l) => JSON.parse(l));
    const hashed = `key-${createHash("sha256").update("sk-other").digest("hex").slice(0, 8)}`;
    expect(again.find((l) => l.id === "other-key").key).toBe(hashed);
    const m = await (await fetch(`${gw.url}/metrics`)).text();
    expect(Number(/dsr:api_key_requests_total\{key="team-a",model_name="dsr-r1"\} (\d+)/.exec(m)?.[1])).toBeGreaterThan(2);
    expect(Number(/dsr:api_key_generation_tokens_total\{key="team-a",model_name="dsr-r1"\} (\d+)/.exec(m)?.[1])).toBeGreaterThan(12);
    expect(m).toMatch(new RegExp(`dsr:api_key_prompt_tokens_total\\{key="${hashed}",model_name="dsr-r1"\\} 7`));
    expect(m).not.toContain("sk-other");
  });
});

describe("--protect-all and --request-timeout", () => {
  it("guards /health and /version too; a slow request gets 504 before its first byte, in-band after it", async () => {
    const slow = await startStandin({ tokens: 50, paceMs: 20, model: "m" }); // 1 s per request
    const g = await startServe(["--upstream", slow.url, "--api-key", "k1", "--protect-all", "--request-timeout", "0.4"]);
    const auth = { authorization: "Bearer k1" };
    try {
      expect((await fetch(`${g.url}/health`)).status).toBe(401);
      expect((await fetch(`${g.url}/metrics`)).status).toBe(401);
      expect(await (await fetch(`${g.url}/version`, { headers: auth })).json()).toEqual({ version: expect.stringMatching(/^\d+\.\d+\.\d+/) });
      const whole = await fetch(`${g.url}/v1/completions`, { method: "POST", headers: auth, body: JSON.stringify({ model: "m", prompt: "x" }) });
      expect(whole.status).toBe(504);
      expect((await whole.json()).error).toMatchObject({ type: "timeout_error", code: "timeout" });
      const s = await fetch(`${g.url}/v1/completions`, { method: "POST", headers: auth, body: JSON.stringify({ model: "m", prompt: "x", stream: true }) });
      expect(s.status).toBe(200);
      const events = await sseEvents(s);
      expect(events.at(-1)).toBe("[DONE]");
      expect(JSON.parse(events.at(-2)!).error.code).toBe("timeout");
      expect(events.length).toBeLessThan(40); // cut at 0.4 s, well before the 50 tokens
      await expect.poll(() => slow.cancelled, { timeout: 3000 }).toBe(2); // both upstream requests were cancelled
    } finally {
      await g.stop();
      await slow.close();
    }
  });
});

describe("SIGTERM while a request is still arriving", () => {
  it("a stream in flight finishes; a request completed during the drain gets 503 shutting_down with connection: close and is logged; exit 0", async () => {
    const slow = await startStandin({ tokens: 4, paceMs: 150, model: "m" });
    const g = await startServe(["--upstream", slow.url, "--log-file", join(dir, "drain.log")]);
    try {
      const body = JSON.stringify({ model: "m", prompt: "x", stream: true });
      const req = `POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
      const port = Number(new URL(g.url).port);
      const open = () => {
        const sock = connect(port, "127.0.0.1");
        const c = { sock, got: "", closed: new Promise((r) => sock.on("close", r)) };
        sock.on("data", (d: Buffer) => (c.got += d.toString("latin1")));
        return c;
      };
      const streaming = open(); // keeps the drain waiting
      streaming.sock.write(req);
      const late = open();
      late.sock.write(req.slice(0, 20)); // a request head still arriving: the connection is not idle
      await new Promise((r) => setTimeout(r, 200));
      const exit = g.stop("SIGTERM");
      await new Promise((r) => setTimeout(r, 100));
      late.sock.write(req.slice(20));
      await Promise.all([streaming.closed, late.closed]);
      expect(streaming.got).toMatch(/^HTTP\/1\.1 200 /);
      expect(streaming.got).toContain("data: [DONE]");
      expect(late.got).toMatch(/^HTTP\/1\.1 503 /);
      expect(late.got).toMatch(/\r\nconnection: close\r\n/i);
      expect(late.got).toContain('"code":"shutting_down"');
      expect(await exit).toBe(0);
      const lines = (await readFile(join(dir, "drain.log"), "utf8")).trim().split("\n").map((l) => JSON.parse(l));
      expect(lines.map((l) => l.status).sort()).toEqual([200, 503]);
    } finally {
      await g.stop();
      await slow.close();
    }
  }, 30_000);
});
