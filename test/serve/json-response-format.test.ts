/**
 * `response_format` json_object and json_schema end to end: the built `dsr serve tiny-r1` (embedded
 * engine, in a worker thread) as a real child process, the official openai SDK as the client. tiny-r1
 * reasons first; the constraint applies after `</think>`, so reasoning_content stays free text and
 * content is one JSON object / one value the schema accepts (finish "stop") or its cut prefix (finish
 * "length"). Schemas outside the embedded engine's subset are a 400 naming the keyword's path.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { startServe, type ServeProc } from "./helpers.js";
import { validate } from "../engine/json-schema-reference.js";

let gw: ServeProc;
const Q = "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}.";
const JSON_OBJECT = { type: "json_object" } as const;

beforeAll(async () => {
  gw = await startServe([TINY_R1, "--engine", "embedded", "--max-num-seqs", "8", "--max-num-batched-tokens", "32"], { env: { XDG_CACHE_HOME: await tempDir() }, timeoutMs: 90_000 });
}, 120_000);

afterAll(async () => {
  if (gw?.proc.exitCode === null) await gw.stop();
});

const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
type Message = { content: string | null; reasoning_content?: string | null };
/** A chat stream's deltas put together, with its last finish reason. */
async function gather(s: AsyncIterable<OpenAI.Chat.Completions.ChatCompletionChunk>) {
  let reasoning = "";
  let content = "";
  let finish: string | null | undefined;
  for await (const ch of s) {
    const d = ch.choices[0]?.delta as { content?: string; reasoning_content?: string } | undefined;
    reasoning += d?.reasoning_content ?? "";
    content += d?.content ?? "";
    finish = ch.choices[0]?.finish_reason ?? finish;
  }
  return { reasoning, content, finish };
}

const isObject = (s: string) => {
  const v = JSON.parse(s) as unknown;
  return typeof v === "object" && v !== null && !Array.isArray(v);
};

describe("dsr serve tiny-r1: response_format json_object", () => {
  let greedy: Message;

  it("the engine flags reach the embedded engine: --max-num-seqs sizes its batch", async () => {
    expect(gw.log()).toMatch(/embedded engine: .*batch ≤ 8,/);
    const ready = await (await fetch(`${gw.url}/ready`)).json();
    expect(ready.engine.kv_capacity_tokens).toBe(8 * ready.engine.max_context);
  });

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
    const { reasoning, content, finish } = await gather(s);
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
});

describe("dsr serve tiny-r1: response_format json_schema", () => {
  const schema = {
    type: "object",
    properties: {
      answer: { type: "integer", description: "the sum" },
      op: { enum: ["plus", "minus"] },
      checked: { type: "boolean" },
      note: { anyOf: [{ type: "null" }, { $ref: "#/$defs/Note" }] },
    },
    required: ["answer", "op", "checked"],
    additionalProperties: false,
    $defs: { Note: { type: "object", properties: { text: { type: "string" } }, required: ["text"], additionalProperties: false } },
  };
  const format = (s: Record<string, unknown> = schema) => ({ type: "json_schema" as const, json_schema: { name: "arith", schema: s, strict: true } });
  const ask = (extra: Record<string, unknown>) => client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], max_tokens: 600, response_format: format(), ...extra } as never) as Promise<OpenAI.Chat.ChatCompletion>;
  let greedy: Message;

  it("non-stream, temperature 0: reasoning is free text, content validates against the schema, finish stop", async () => {
    const r = await ask({ temperature: 0 });
    const c = r.choices[0]!;
    greedy = c.message as unknown as Message;
    expect(c.finish_reason).toBe("stop");
    expect(greedy.reasoning_content).toMatch(/\d+ \+ \d+/);
    expect(validate(schema, JSON.parse(greedy.content!)), greedy.content!).toBe(true);
  });

  it("stream, temperature 0: the deltas add up to the non-stream answer", async () => {
    const s = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 600, response_format: format(), stream: true });
    const { reasoning, content, finish } = await gather(s);
    expect(finish).toBe("stop");
    expect(content).toBe(greedy.content);
    expect(reasoning).toBe(greedy.reasoning_content);
  });

  it("sampled with a seed, n = 3, logprobs: every choice that stops validates; same seed, same answers", async () => {
    const body = { temperature: 0.8, top_p: 0.95, seed: 3, n: 3, max_tokens: 400, logprobs: true, top_logprobs: 2 };
    const r = await ask(body);
    expect(r.choices).toHaveLength(3);
    const stopped = r.choices.filter((c) => c.finish_reason === "stop");
    expect(stopped.length).toBeGreaterThan(0);
    for (const c of stopped) expect(validate(schema, JSON.parse(c.message.content!)), c.message.content!).toBe(true);
    for (const c of r.choices) expect(c.logprobs!.content!.length).toBeGreaterThan(0);
    expect((await ask(body)).choices.map((c) => c.message.content)).toEqual(r.choices.map((c) => c.message.content));
  });

  it("a schema whose top level is not an object: the content is one enum value", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 600, response_format: format({ enum: ["small", "large", 623] }) });
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(["small", "large", 623]).toContain(JSON.parse(r.choices[0]!.message.content!));
  });

  it("json_schema without a schema behaves as json_object", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 600, response_format: { type: "json_schema", json_schema: { name: "any" } } });
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(isObject(r.choices[0]!.message.content!)).toBe(true);
  });

  const refused = (response_format: unknown) =>
    client()
      .chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], response_format } as never)
      .then(() => {
        throw new Error("accepted");
      })
      .catch((x: unknown) => {
        expect(x).toBeInstanceOf(OpenAI.BadRequestError);
        return x as InstanceType<typeof OpenAI.BadRequestError>;
      });

  it("a keyword outside the subset: 400 naming its JSON path, what is supported, and where to go", async () => {
    const e = await refused(format({ type: "object", properties: { age: { type: "integer" }, name: { type: "string", pattern: "^[A-Z]" } } }));
    expect(e.message).toMatch(/response_format\.json_schema\.schema\.properties\.name\.pattern is not supported by the embedded and torch engines \(supported: type, properties, required/);
    expect(e.message).toMatch(/use --engine vllm or --upstream/);
    expect(e.param).toBe("response_format.json_schema.schema.properties.name.pattern");
    expect(e.code).toBe("unsupported_parameter");
    const e2 = await refused(format({ type: "object", properties: { n: { $ref: "#/$defs/nope" } } }));
    expect(e2.message).toMatch(/points to nothing/);
    expect(e2.param).toBe("response_format.json_schema.schema.properties.n.$ref");
  });

  it("OpenAI's shape: json_schema needs json_schema.name", async () => {
    const e = await refused({ type: "json_schema", json_schema: { schema: { type: "object" } } });
    expect(e.param).toBe("response_format.json_schema.name");
    expect((await refused({ type: "json_schema" })).param).toBe("response_format.json_schema");
  });

  it("json_object still works beside it", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, max_tokens: 600, response_format: JSON_OBJECT });
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(isObject(r.choices[0]!.message.content!)).toBe(true);
  });
});
