import { describe, expect, it } from "vitest";
import { chatRequest, completionRequest, parseRequest, type Endpoint } from "../../src/engine/serve/schemas.js";
import { HttpError } from "../../src/engine/serve/http-error.js";

/** parseRequest's answer, or its error's message and param. */
function outcome(endpoint: Endpoint, body: unknown): unknown {
  try {
    return { ok: parseRequest(endpoint, body) };
  } catch (e) {
    expect(e).toBeInstanceOf(HttpError);
    return { status: (e as HttpError).status, message: (e as HttpError).message, param: (e as HttpError).body().error.param };
  }
}

/** What zod alone decides for the same body (parseRequest's answer before its fast accept existed). */
function zodOutcome(endpoint: Endpoint, body: Record<string, unknown>): unknown {
  const r = (endpoint === "chat" ? chatRequest : completionRequest).safeParse(body);
  if (r.success) {
    if (endpoint === "completions" && r.data.suffix) return { status: 400, message: "`suffix` is not supported", param: "suffix" };
    return { ok: r.data };
  }
  const issue = r.error.issues[0];
  const param = issue.path.map(String).join(".") || null;
  return { status: 400, message: `invalid request: ${param ? `\`${param}\`: ` : ""}${issue.message}`, param };
}

// values that sit on and beyond every bound the schemas draw, plus wrong types
const VALUES: unknown[] = [
  undefined, null, true, false, 0, -0, 1, -1, -2, 2, 2.0000001, -2.0000001, 0.5, 1.5, 5, 6, 10, 10.5, 16, 17, 20, 21,
  2 ** 53, -(2 ** 53), 1e300, "", "x", "user", [], ["a"], ["a", ""], Array(17).fill("s"), [1, 2], [[1]], [-1], {}, { include_usage: true },
  { include_usage: "yes" }, { continuous_usage_stats: null, other: 1 }, { type: "json_object" }, { type: "nope" },
];
const FIELDS = [
  "model", "stream", "stream_options", "n", "stop", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed",
  "presence_penalty", "frequency_penalty", "repetition_penalty", "ignore_eos", "user", "max_completion_tokens",
  "logprobs", "top_logprobs", "response_format", "echo", "suffix", "prompt", "messages", "extra_field",
];
const MESSAGES: unknown[] = [
  [{ role: "user", content: "hi" }],
  [{ role: "system", content: null }, { role: "user", content: "q", name: "n" }],
  [{ role: "assistant", content: "a", reasoning_content: "r", reasoning: null, tool_calls: [] }],
  [{ role: "user", content: [{ type: "text", text: "t" }] }],
  [{ role: "robot", content: "x" }],
  [{ role: "user", content: 5 }],
  [{ role: "user", name: 3 }],
  [{ role: "user", reasoning: 1 }],
  [],
  "hi",
  [null],
];

describe("parseRequest", () => {
  it("answers exactly as zod does (same data, same error message and param) for 10000 bodies around every bound", () => {
    let seed = 12345;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), Math.floor(seed / 65536) % n); // high bits: the low ones cycle
    let fastAccepted = 0;
    for (let i = 0; i < 10000; i++) {
      const endpoint: Endpoint = i % 2 ? "chat" : "completions";
      const body: Record<string, unknown> = endpoint === "chat" ? { model: "m", messages: [{ role: "user", content: "hi" }] } : { model: "m", prompt: "hi" };
      for (let k = rnd(4); k > 0; k--) {
        const f = FIELDS[rnd(FIELDS.length)];
        body[f] = f === "messages" ? MESSAGES[rnd(MESSAGES.length)] : VALUES[rnd(VALUES.length)];
        if (body[f] === undefined && rnd(2)) delete body[f];
      }
      const got = outcome(endpoint, body);
      expect(got, JSON.stringify({ endpoint, body })).toEqual(zodOutcome(endpoint, body));
      if ((got as { ok?: unknown }).ok === body) fastAccepted++;
    }
    expect(fastAccepted).toBeGreaterThan(500); // the fast accept is really taken
  });

  it("a body that is not an object is refused before any schema", () => {
    expect(outcome("chat", [1])).toEqual({ status: 400, message: "request body must be a JSON object", param: null });
  });
});
