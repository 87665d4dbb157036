/**
 * `response_format: {"type": "json_object"}` end to end: the built `dsr serve tiny-r1` (embedded
 * engine, in a worker thread) as a real child process, the official openai SDK as the client. tiny-r1
 * reasons first; the constraint applies after `</think>`, so reasoning_content stays free text and
 * content is one JSON object (finish "stop") or its cut prefix (finish "length").
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { startServe, type ServeProc } from "./helpers.js";

let gw: ServeProc;
const Q = "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}.";
const JSON_OBJECT = { type: "json_object" } as const;

beforeAll(async () => {
  gw = await startServe([TINY_R1, "--engine", "embedded"], { env: { XDG_CACHE_HOME: await tempDir() }, timeoutMs: 90_000 });
}, 120_000);

afterAll(async () => {
  if (gw?.proc.exitCode === null) await gw.stop();
});

const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
type Message = { content: string | null; reasoning_content?: string | null };
const isObject = (s: string) => {
  const v = JSON.parse(s) as unknown;
  return typeof v === "object" && v !== null && !Array.isArray(v);
};

describe("dsr serve tiny-r1: response_format json_object", () => {
  let greedy: Message;

  it("non-stream, temperature 0: reasoning_content is free text, content parses as an object, finish stop", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 600, response_format: JSON_OBJECT });
    const c = r.choices[0]!;
    greedy = c.message as unknown as Message;
    expect(c.finish_reason).toBe("stop");
    expect(greedy.reasoning_content).toMatch(/\d+ \+ \d+/); // the arithmetic reasoning, unconstrained
    expect(isObject(greedy.content!)).toBe(true);
  });

  it("stream, temperature 0: the deltas add up to the non-stream answer", async () => {
    const s = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 600, response_format: JSON_OBJECT, stream: true });
    let reasoning = "";
    let content = "";
    let finish;
    for await (const ch of s) {
      const d = ch.choices[0]?.delta as { content?: string; reasoning_content?: string } | undefined;
      reasoning += d?.reasoning_content ?? "";
      content += d?.content ?? "";
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe("stop");
    expect(content).toBe(greedy.content);
    expect(reasoning).toBe(greedy.reasoning_content);
  });

  it("sampled with a seed, n = 4, logprobs: every choice that stops is an object; same seed, same answers", async () => {
    const ask = () =>
      client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0.8, top_p: 0.95, seed: 1, n: 4, max_tokens: 400, logprobs: true, top_logprobs: 2, response_format: JSON_OBJECT });
    const r = await ask();
    expect(r.choices).toHaveLength(4);
    const stopped = r.choices.filter((c) => c.finish_reason === "stop");
    expect(stopped.length).toBeGreaterThan(0);
    for (const c of stopped) expect(isObject(c.message.content!)).toBe(true);
    for (const c of r.choices) expect(c.logprobs!.content!.length).toBeGreaterThan(0);
    expect((await ask()).choices.map((c) => c.message.content)).toEqual(r.choices.map((c) => c.message.content));
  });

  it("streamed and sampled with a seed: the same answer as non-stream", async () => {
    const body = { model: "tiny-r1", messages: [{ role: "user" as const, content: Q }], temperature: 0.8, top_p: 0.95, seed: 7, max_tokens: 400, response_format: JSON_OBJECT };
    const whole = await client().chat.completions.create(body);
    let content = "";
    let finish;
    for await (const ch of await client().chat.completions.create({ ...body, stream: true })) {
      content += ch.choices[0]?.delta.content ?? "";
      finish = ch.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe(whole.choices[0]!.finish_reason);
    expect(content).toBe(whole.choices[0]!.message.content ?? "");
    if (finish === "stop") expect(isObject(content)).toBe(true);
  });

  it("a budget that runs out in the reasoning: finish length, no content", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 20, response_format: JSON_OBJECT });
    expect(r.choices[0]!.finish_reason).toBe("length");
    expect(r.choices[0]!.message.content).toBeNull();
  });

  it("json_schema: 400 naming what is supported", async () => {
    const e = await client()
      .chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], response_format: { type: "json_schema", json_schema: { name: "x", schema: { type: "object" } } } })
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect((e as InstanceType<typeof OpenAI.BadRequestError>).message).toMatch(/json_schema is not supported by the embedded engine \(json_object and text are\)/);
    expect((e as { param?: string }).param).toBe("response_format");
  });
});
