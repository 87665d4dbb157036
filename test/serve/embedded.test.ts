/**
 * `dsr serve tiny-r1 --instances 2` on the embedded engine, as real processes: the front gateway and
 * two supervised `dsr serve --engine embedded` children. Real clients (openai SDK, raw fetch); an
 * instance is SIGKILLed under load; the front is SIGTERMed mid-stream and must drain.
 *
 * tiny-r1 often mis-copies the operands of "What is A + B?" into its reasoning (the torch reference
 * output in its reference.json does too), so the answer is checked against the arithmetic in its own
 * last reasoning line: `So X + Y = Z` must be right and `\boxed{Z}` must carry it.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { runDsr, TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { loadTextModel } from "../../src/engine/text/index.js";
import { sseEvents, startServe, type ServeProc } from "./helpers.js";

let gw: ServeProc;
let cacheHome: string;
const Q = "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}.";

beforeAll(async () => {
  cacheHome = await tempDir();
  gw = await startServe([TINY_R1, "--instances", "2", "--max-concurrency", "32", "--grace", "20"], { env: { XDG_CACHE_HOME: cacheHome }, timeoutMs: 90_000 });
}, 120_000);

afterAll(async () => {
  if (gw?.proc.exitCode === null) await gw.stop();
});

const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });

/** The reasoning's final line does the arithmetic; the boxed answer must carry its (correct) result. */
function checkAnswer(reasoning: string, content: string): number {
  const m = /So (\d+) ([+-]) (\d+) = (-?\d+)\.?\s*$/.exec(reasoning);
  expect(m, reasoning).not.toBeNull();
  const [x, op, y, z] = [Number(m![1]), m![2], Number(m![3]), Number(m![4])];
  expect(z).toBe(op === "+" ? x + y : x - y);
  expect(content).toBe(`The answer is \\boxed{${z}}.`);
  return z;
}

async function ready(): Promise<{ children: { name: string; state: string; pid: number; restarts: number }[]; instances: { name: string; healthy: boolean; outstanding: number }[] }> {
  return (await fetch(`${gw.url}/ready`)).json();
}

describe("dsr serve while its engine is still loading", () => {
  // a fresh ONNX cache each time: the engine (or the first child) converts the checkpoint first, which takes a while
  const cases: { name: string; args: string[]; ready: (body: Record<string, unknown>) => void; retryAfter: string }[] = [
    { name: "--instances 2 (supervised children)", args: ["--instances", "2"], ready: (b) => expect((b.children as { name: string }[]).map((c) => c.name)).toEqual(["i0", "i1"]), retryAfter: "1" },
    { name: "--instances 2 --workers 2 (gateway workers probe the children)", args: ["--instances", "2", "--workers", "2"], ready: (b) => expect((b.instances as { name: string }[]).map((i) => i.name)).toEqual(["i0", "i1"]), retryAfter: "1" },
    { name: "one engine in process", args: [], ready: (b) => expect(b.loading).toMatchObject({ engine: "embedded", model: TINY_R1 }), retryAfter: "5" },
  ];
  for (const c of cases) {
    it(`${c.name}: listens at once: /health 200, /ready 503 saying what loads, /v1/models, a request 503 with Retry-After; then serves`, async () => {
      const cache = await tempDir();
      const proc = runDsr(["serve", TINY_R1, ...c.args, "--port", "0"], { env: { ...process.env, XDG_CACHE_HOME: cache }, buffer: false, stdout: "pipe", stderr: "pipe" });
      let err = "";
      proc.stderr!.on("data", (d: Buffer) => (err += d.toString()));
      proc.stdout!.resume();
      try {
        const early = async (): Promise<string> => {
          for (let i = 0; i < 600; i++) {
            const m = /^listening at (http:\/\/[^\s]+) while /m.exec(err);
            if (m) return m[1];
            await new Promise((r) => setTimeout(r, 10));
          }
          throw new Error(`no early listen line:\n${err}`);
        };
        const url = await early();
        expect(err).not.toMatch(/^serving /m);
        // the two answers that hold only while it loads (~300 ms for the in-process engine here) first
        const [ready, busy] = await Promise.all([fetch(`${url}/ready`), fetch(`${url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: "hi" }], max_tokens: 2 }) })]);
        expect(ready.status).toBe(503);
        c.ready((await ready.json()) as Record<string, unknown>);
        expect(busy.status).toBe(503);
        expect(busy.headers.get("retry-after")).toBe(c.retryAfter);
        expect((await fetch(`${url}/health`)).status).toBe(200);
        expect(((await (await fetch(`${url}/v1/models`)).json()) as { data: { id: string }[] }).data.map((m) => m.id)).toEqual(["tiny-r1"]);
        for (let i = 0; i < 1200 && !/^serving /m.test(err); i++) await new Promise((r) => setTimeout(r, 50));
        expect((await fetch(`${url}/ready`)).status).toBe(200);
        const ok = await fetch(`${url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: "hi" }], max_tokens: 2 }) });
        expect(ok.status).toBe(200);
      } finally {
        proc.kill("SIGTERM");
        await proc;
      }
    }, 120_000);
  }
});

describe("dsr serve tiny-r1 --instances 2 (embedded engine)", () => {
  let expected: { reasoning: string; content: string };

  it("chat, non-stream, via the SDK: <think> split into reasoning_content and reasoning, answer in content", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0 });
    const m = r.choices[0].message as unknown as { content: string; reasoning: string; reasoning_content: string };
    expect(m.reasoning_content).toBe(m.reasoning);
    expect(m.reasoning).not.toContain("think>");
    checkAnswer(m.reasoning, m.content);
    expect(r.choices[0].finish_reason).toBe("stop");
    expect(r.usage!.prompt_tokens).toBeGreaterThan(20);
    expect(r.usage!.completion_tokens).toBeGreaterThan(10);
    expected = { reasoning: m.reasoning, content: m.content };
  });

  it("/v1/models on the front carries the children's context length", async () => {
    const models = await client().models.list();
    expect(models.data.map((m) => [m.id, (m as unknown as { max_model_len: number }).max_model_len])).toEqual([["tiny-r1", 2048]]);
  });

  it("the front reports each child's engine load and KV use (/ready and dsr:kv_cache_usage_perc)", async () => {
    await expect.poll(async () => (await ready()).instances.every((i) => (i as unknown as { engine?: { kv_capacity_tokens?: number } }).engine?.kv_capacity_tokens), { timeout: 5000 }).toBe(true);
    const m = await (await fetch(`${gw.url}/metrics`)).text();
    expect(m).toMatch(/dsr:kv_cache_usage_perc\{instance="i0",model_name="tiny-r1"\} [0-9.e-]+/);
    expect(m).toMatch(/dsr:kv_cache_usage_perc\{instance="i1",model_name="tiny-r1"\} [0-9.e-]+/);
  });

  it("chat, stream, via the SDK: role chunk, reasoning deltas, content deltas — equal to the non-stream answer", async () => {
    const s = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, stream: true, stream_options: { include_usage: true } });
    let reasoning = "";
    let content = "";
    let first = true;
    let usage;
    let finish;
    for await (const ch of s) {
      if (ch.usage) usage = ch.usage;
      const c = ch.choices[0];
      if (!c) continue;
      if (first) expect(c.delta.role).toBe("assistant");
      first = false;
      const d = c.delta as { reasoning?: string; reasoning_content?: string; content?: string };
      reasoning += d.reasoning ?? "";
      expect(d.reasoning_content).toBe(d.reasoning);
      content += d.content ?? "";
      finish = c.finish_reason ?? finish;
    }
    expect({ reasoning, content }).toEqual(expected);
    expect(finish).toBe("stop");
    expect(usage).toMatchObject({ total_tokens: expect.any(Number) });
  });

  it("R1 advice: a system prompt is folded into the user turn (same answer as putting it there)", async () => {
    const a = await client().chat.completions.create({ model: "tiny-r1", temperature: 0, max_tokens: 24, messages: [{ role: "system", content: "Be brief." }, { role: "user", content: Q }] });
    const b = await client().chat.completions.create({ model: "tiny-r1", temperature: 0, max_tokens: 24, messages: [{ role: "user", content: `Be brief.\n\n${Q}` }] });
    expect(a.choices[0].message).toEqual(b.choices[0].message);
    expect(a.usage!.prompt_tokens).toBe(b.usage!.prompt_tokens);
  });

  it("completions (stream and non-stream), stop strings, n with a seed, logprobs", async () => {
    const prompt = `<｜begin▁of▁sentence｜><｜User｜>${Q}<｜Assistant｜><think>\n`;
    const c = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 6, temperature: 0, logprobs: 2 });
    expect(c.choices[0].finish_reason).toBe("length");
    expect(c.usage!.completion_tokens).toBe(6);
    const lp = c.choices[0].logprobs!;
    expect(lp.tokens!.length).toBe(6);
    expect(lp.tokens!.join("")).toBe(c.choices[0].text);
    expect(Object.keys(lp.top_logprobs![0]).length).toBeGreaterThanOrEqual(1);
    let streamed = "";
    for await (const ch of await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 6, temperature: 0, stream: true })) streamed += ch.choices[0]?.text ?? "";
    expect(streamed).toBe(c.choices[0].text);
    // vLLM's continuous usage: every chunk carries the tokens so far, the last one the totals
    const chunks = [];
    for await (const ch of await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 6, temperature: 0, stream: true, stream_options: { include_usage: true, continuous_usage_stats: true } } as OpenAI.CompletionCreateParamsStreaming)) chunks.push(ch);
    const counts = chunks.filter((ch) => ch.choices.length).map((ch) => ch.usage!.completion_tokens);
    expect(counts.length).toBeGreaterThan(1);
    expect(counts).toEqual([...counts].sort((a, b) => a - b));
    expect(chunks.at(-1)!.usage).toEqual({ prompt_tokens: c.usage!.prompt_tokens, completion_tokens: 6, total_tokens: c.usage!.prompt_tokens + 6 });
    expect(chunks.every((ch) => ch.usage!.prompt_tokens === c.usage!.prompt_tokens)).toBe(true);
    const stopped = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 60, temperature: 0, stop: ["\n"] });
    expect(stopped.choices[0].finish_reason).toBe("stop");
    expect(stopped.choices[0].text).not.toContain("\n");
    const kept = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 60, temperature: 0, stop: ["\n"], include_stop_str_in_output: true } as OpenAI.CompletionCreateParamsNonStreaming);
    expect(kept.choices[0].text).toBe(`${stopped.choices[0].text}\n`);
    expect(expected.reasoning.startsWith(stopped.choices[0].text.trim())).toBe(true);
    const two = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], n: 2, seed: 7, max_tokens: 8 });
    expect(two.choices.map((x) => x.index)).toEqual([0, 1]);
  });

  it("/tokenize gives the ids the generation endpoints use (template, R1 advice, special tokens); /detokenize reverses it", async () => {
    const text = await loadTextModel(TINY_R1);
    const post = async (path: string, body: unknown) => {
      const r = await fetch(`${gw.url}${path}`, { method: "POST", body: JSON.stringify(body) });
      return { status: r.status, body: await r.json() };
    };
    const plain = await post("/tokenize", { model: "tiny-r1", prompt: Q, return_token_strs: true });
    expect(plain.status).toBe(200);
    expect(plain.body).toEqual({ count: text.encode(Q).length, max_model_len: 2048, tokens: text.encode(Q), token_strs: text.tokenStrings(text.encode(Q)) });
    expect(await post("/detokenize", { tokens: plain.body.tokens })).toEqual({ status: 200, body: { prompt: Q } });
    // the completion's usage counts the same prompt
    const done = await client().completions.create({ model: "tiny-r1", prompt: Q, max_tokens: 1 });
    expect(done.usage!.prompt_tokens).toBe(plain.body.count);
    // chat: the system prompt folded into the user turn, the generation prompt added (opening <think>)
    const messages = [{ role: "system", content: "Be brief." }, { role: "user", content: Q }];
    const chat = await post("/tokenize", { messages });
    const folded = text.encode(text.applyChatTemplate([{ role: "user", content: `Be brief.\n\n${Q}` }], { addGenerationPrompt: true }));
    expect(chat.body.tokens).toEqual(folded);
    const answered = await client().chat.completions.create({ model: "tiny-r1", messages: messages as OpenAI.ChatCompletionMessageParam[], max_tokens: 1 });
    expect(answered.usage!.prompt_tokens).toBe(chat.body.count);
    const bare = await post("/tokenize", { messages, add_generation_prompt: false });
    expect(bare.body.count).toBeLessThan(chat.body.count);
    expect(folded.slice(0, bare.body.count)).toEqual(bare.body.tokens);
    // errors name the field
    expect((await post("/tokenize", {})).body.error.param).toBe("prompt");
    expect((await post("/tokenize", { messages, continue_final_message: true })).body.error.param).toBe("continue_final_message");
    expect((await post("/detokenize", { tokens: [1, 9_999_999] })).body.error).toMatchObject({ param: "tokens", message: expect.stringContaining("9999999 (tokens[1])") });
    expect((await post("/tokenize", { model: "nope", prompt: "x" })).status).toBe(404);
  });

  it("stop_token_ids ends a choice like EOS; logit_bias steers the draw; fields the token engines do not implement are a 400 naming them, never ignored", async () => {
    const prompt = `<｜begin▁of▁sentence｜><｜User｜>${Q}<｜Assistant｜><think>\n`;
    const first = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 1, temperature: 0 });
    const tok = await (await fetch(`${gw.url}/tokenize`, { method: "POST", body: JSON.stringify({ prompt: first.choices[0].text, add_special_tokens: false }) })).json();
    expect(tok.count).toBe(1);
    const stopped = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 6, temperature: 0, stop_token_ids: tok.tokens } as OpenAI.CompletionCreateParamsNonStreaming);
    expect([stopped.choices[0].finish_reason, stopped.choices[0].text]).toEqual(["stop", ""]);
    const refused = async (extra: Record<string, unknown>) => {
      const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: "hi" }], max_tokens: 2, ...extra }) });
      return { status: r.status, error: (await r.json()).error };
    };
    const tools = await refused({ tools: [{ type: "function", function: { name: "f", parameters: {} } }] });
    expect(tools).toMatchObject({ status: 400, error: { param: "tools", code: "unsupported_parameter", message: expect.stringContaining("not supported by the embedded and torch engines") } });
    // logit_bias is applied: +100 makes greedy pick `{`, -100 keeps greedy off its own first choice
    const brace = await (await fetch(`${gw.url}/tokenize`, { method: "POST", body: JSON.stringify({ prompt: "{", add_special_tokens: false }) })).json();
    const forced = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 1, temperature: 0, logit_bias: { [brace.tokens[0]]: 100 } });
    expect(forced.choices[0].text).toBe("{");
    const avoided = await client().completions.create({ model: "tiny-r1", prompt, max_tokens: 1, temperature: 0, logit_bias: { [tok.tokens[0]]: -100 } });
    expect(avoided.choices[0].text).not.toBe(first.choices[0].text);
    expect((await refused({ logit_bias: { nope: 1 } })).error).toMatchObject({ param: "logit_bias", message: expect.stringContaining('"nope" is not a token id') });
    expect((await refused({ logit_bias: { "5": 101 } })).error.param).toMatch(/^logit_bias/);
    expect((await refused({ guided_json: { type: "object" } })).error.message).toContain("use response_format json_schema");
    expect((await refused({ stop_token_ids: [99_999_999] })).error.param).toBe("stop_token_ids");
    expect((await refused({ tool_choice: "none" })).status).toBe(200); // inactive values are fine
  });

  it("min_tokens holds EOS back until that many tokens; more than max_tokens is a 400", async () => {
    const messages = [{ role: "user" as const, content: Q }];
    const free = await client().chat.completions.create({ model: "tiny-r1", messages, max_tokens: 600, temperature: 0 });
    expect(free.choices[0].finish_reason).toBe("stop");
    const n = free.usage!.completion_tokens;
    const longer = await client().chat.completions.create({ model: "tiny-r1", messages, max_tokens: n + 3, temperature: 0, min_tokens: n + 3 } as OpenAI.ChatCompletionCreateParamsNonStreaming);
    expect([longer.choices[0].finish_reason, longer.usage!.completion_tokens]).toEqual(["length", n + 3]);
    const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages, max_tokens: 4, min_tokens: 5 }) });
    expect([r.status, (await r.json()).error.param]).toEqual([400, "min_tokens"]);
  });

  it("context overflow is a 400 that names the numbers", async () => {
    const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: Q }], max_tokens: 5000 }) });
    expect(r.status).toBe(400);
    const e = (await r.json()).error;
    expect(e.code).toBe("context_length_exceeded");
    expect(e.message).toMatch(/maximum context length is 2048 tokens\. However, you requested \d+ tokens \(\d+ in the messages, 5000 in the completion\)/);
  });

  it("SIGKILL of an instance under load: every non-stream request answers once and correctly, streams never duplicate, the instance comes back", async () => {
    const before = await ready();
    const victim = before.children.find((c) => c.name === "i0")!;
    const N = 16;
    const nonStream = Array.from({ length: N }, () =>
      fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0 }) }).then(async (r) => ({ status: r.status, body: await r.json() })),
    );
    const streams = Array.from({ length: 4 }, () =>
      fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, stream: true }) }).then(sseEvents),
    );
    // kill only once the router has requests in flight on i0
    await expect.poll(async () => (await ready()).instances.find((i) => i.name === "i0")!.outstanding, { timeout: 10_000, interval: 20 }).toBeGreaterThan(0);
    process.kill(victim.pid, "SIGKILL");
    const results = await Promise.all(nonStream);
    for (const r of results) {
      expect(r.status, JSON.stringify(r.body)).toBe(200);
      expect(r.body.choices).toHaveLength(1);
      expect(r.body.choices[0].message.content).toBe(expected.content);
      expect(r.body.choices[0].message.reasoning).toBe(expected.reasoning);
    }
    for (const events of await Promise.all(streams)) {
      const objs = events.filter((e) => e !== "[DONE]").map((e) => JSON.parse(e));
      const reasoning = objs.map((o) => o.choices?.[0]?.delta?.reasoning ?? "").join("");
      const content = objs.map((o) => o.choices?.[0]?.delta?.content ?? "").join("");
      if (objs.at(-1).error) {
        // cut by the kill after bytes were sent: an in-band error, and what was sent is a prefix — never a replay
        expect(expected.reasoning.startsWith(reasoning)).toBe(true);
        expect(content === "" || expected.content.startsWith(content)).toBe(true);
      } else {
        expect({ reasoning, content }).toEqual(expected);
      }
    }
    await expect
      .poll(async () => {
        const c = (await ready()).children.find((x) => x.name === "i0")!;
        return c.state === "ready" && c.restarts >= 1;
      }, { timeout: 45_000, interval: 250 })
      .toBe(true);
    const after = (await ready()).children.find((c) => c.name === "i0")!;
    expect(after.pid).not.toBe(victim.pid);
    const m = await (await fetch(`${gw.url}/metrics`)).text();
    expect(m).toMatch(/dsr:instance_restarts_total\{instance="i0",model_name="tiny-r1"\} [1-9]/);
    // the kill hit requests in flight: some were retried on i1 before their first byte
    expect(Number(/dsr:request_retries_total\{model_name="tiny-r1"\} (\d+)/.exec(m)![1])).toBeGreaterThan(0);
  }, 90_000);

  it("SIGTERM drains: an in-flight stream finishes, new connections are refused, children stop, exit 0", async () => {
    const pids = (await ready()).children.map((c) => c.pid);
    const res = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, stream: true }) });
    const events = sseEvents(res);
    const exit = gw.stop("SIGTERM");
    const ev = await events;
    expect(ev.at(-1)).toBe("[DONE]");
    const objs = ev.slice(0, -1).map((e) => JSON.parse(e));
    expect(objs.some((o) => o.error)).toBe(false);
    expect(objs.map((o) => o.choices[0].delta.content ?? "").join("")).toBe(expected.content);
    expect(await exit).toBe(0);
    await expect(fetch(`${gw.url}/health`)).rejects.toThrow();
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
    expect(gw.log()).toMatch(/stopped cleanly/);
  }, 60_000);
});
