/**
 * The generation books of passed-through answers (src/engine/serve/answer-books.ts), OpenAI's
 * Responses API (responses-books.ts) and Anthropic's Messages API (messages-books.ts), read from the
 * bytes the gateway passes on: streamed answers cut anywhere (inside an event, inside a multi-byte
 * character, between a CR and its LF), with and without `event:` lines, lines ended by LF, CRLF or
 * CR, every terminal status or stop reason; non-streamed JSON; and bytes that are not what they
 * should be never throw and give no books.
 */
import { describe, expect, it } from "vitest";
import type { Instrument } from "../../src/engine/serve/metrics.js";
import { MessagesBooks } from "../../src/engine/serve/messages-books.js";
import { ResponsesBooks } from "../../src/engine/serve/responses-books.js";
import type { RequestRecord } from "../../src/engine/serve/types.js";

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

const ev = (type: string, data: object, named = true) => `${named ? `event: ${type}\n` : ""}data: ${JSON.stringify({ type, ...data })}\n\n`;

/** Up to 200 characters drawn from `alphabet`, and three places to cut its bytes. */
function randomAnswer(rand: () => number, alphabet: string): { text: string; cuts: number[] } {
  const text = Array.from({ length: Math.floor(rand() * 200) }, () => alphabet[Math.floor(rand() * alphabet.length)]).join("");
  return { text, cuts: Array.from({ length: 3 }, () => Math.floor(rand() * Buffer.byteLength(text))).sort((a, b) => a - b) };
}

/** Feeds `text` cut at `cuts` (byte offsets); what the record and the instrument were told. */
function run(text: string, cuts: number[], stream = true, Books: typeof ResponsesBooks | typeof MessagesBooks = ResponsesBooks) {
  const seen = { ttft: [] as number[], itl: [] as number[] };
  const ins: Instrument = { ttft: (s) => seen.ttft.push(s), itl: (s) => seen.itl.push(s) };
  const record: RequestRecord = {};
  const books = new Books(record, performance.now(), ins, stream);
  const bytes = Buffer.from(text);
  let at = 0;
  for (const c of [...cuts, bytes.length]) {
    books.feed(bytes.subarray(at, c));
    at = c;
  }
  books.end();
  return { record, seen };
}

describe("Responses API books", () => {
  const deltas = ["Bon", "jour ", "é", "t", "é"];
  const response = (status: string, extra: object = {}) => ({ response: { id: "r", status, usage: { input_tokens: 7, output_tokens: 5, total_tokens: 12 }, ...extra } });

  it("a streamed answer cut anywhere: TTFT once, a gap per later delta, the usage and finish reason from its last event", () => {
    const rand = seeded(5);
    for (const [named, eol] of [[true, "\n"], [false, "\n"], [true, "\r\n"], [true, "\r"]] as const) {
      const lf = ev("response.created", { response: { status: "in_progress" } }, named) + deltas.map((d) => ev("response.output_text.delta", { delta: d }, named)).join("") + ev("response.completed", response("completed"), named);
      const text = lf.replaceAll("\n", eol);
      const bytes = Buffer.byteLength(text);
      for (let k = 0; k < 300; k++) {
        const cuts = k === 0 ? [] : Array.from({ length: 1 + (k % 12) }, () => Math.floor(rand() * bytes)).sort((a, b) => a - b);
        const { record, seen } = run(text, cuts);
        expect(record).toMatchObject({ finishReason: "stop", promptTokens: 7, completionTokens: 5 });
        expect(record.ttftMs).toBeGreaterThanOrEqual(0);
        expect(seen.ttft).toHaveLength(1);
        expect(seen.itl).toHaveLength(deltas.length - 1);
      }
    }
  });

  it("reasoning deltas count as tokens; an incomplete answer is `length`, a failed one `error`; without usage the deltas are the output tokens", () => {
    const reasoning = ev("response.reasoning_text.delta", { delta: "hmm" }) + ev("response.output_text.delta", { delta: "ok" });
    expect(run(reasoning + ev("response.incomplete", response("incomplete", { incomplete_details: { reason: "max_output_tokens" } })), []).record.finishReason).toBe("length");
    expect(run(reasoning + ev("response.failed", response("failed")), []).record.finishReason).toBe("error");
    const bare = run(reasoning + ev("response.completed", { response: { status: "completed" } }), []);
    expect(bare.record).toMatchObject({ finishReason: "stop", completionTokens: 2 });
    expect(bare.seen.itl).toHaveLength(1);
  });

  it("a non-streamed answer: the usage and status of its JSON, however it arrived", () => {
    const body = JSON.stringify({ id: "r", object: "response", status: "completed", output: [], usage: { input_tokens: 3, output_tokens: 9 } });
    expect(run(body, [1, 10, 40], false).record).toEqual({ finishReason: "stop", promptTokens: 3, completionTokens: 9 });
    expect(run(body.slice(0, -1), [], false).record).toEqual({}); // not JSON: no books
  });

  it("fuzz: any bytes never throw, and an answer with no terminal event gives no finish reason", () => {
    const rand = seeded(77);
    const alphabet = "event: response.output_text.delta completed data: {}\"type\":\n\n é";
    for (let i = 0; i < 2000; i++) {
      const { text, cuts } = randomAnswer(rand, alphabet);
      expect(() => run(text, cuts, rand() < 0.8)).not.toThrow();
      if (!text.includes("completed")) expect(run(text, cuts).record.finishReason).toBeUndefined();
    }
  });
});

describe("Messages API books (Anthropic's, as vLLM serves it)", () => {
  const texts = ["Bon", "jour ", "é", "t", "é"];
  const start = ev("message_start", { message: { id: "m", type: "message", role: "assistant", content: [], stop_reason: null, usage: { input_tokens: 9, output_tokens: 1 } } });
  const deltas = (ts: string[]) => ts.map((t) => ev("content_block_delta", { index: 0, delta: { type: "text_delta", text: t } })).join("");
  const end = (stop: string, out = texts.length) => ev("content_block_stop", { index: 0 }) + ev("message_delta", { delta: { stop_reason: stop, stop_sequence: null }, usage: { output_tokens: out } }) + ev("message_stop", {});

  it("a streamed answer cut anywhere: TTFT once, a gap per later delta, input tokens from message_start, stop reason and output tokens from message_delta", () => {
    const rand = seeded(9);
    for (const eol of ["\n", "\r\n", "\r"]) {
      const text = (start + ev("content_block_start", { index: 0, content_block: { type: "text", text: "" } }) + ev("ping", {}) + deltas(texts) + end("end_turn")).replaceAll("\n", eol);
      const bytes = Buffer.byteLength(text);
      for (let k = 0; k < 300; k++) {
        const cuts = k === 0 ? [] : Array.from({ length: 1 + (k % 12) }, () => Math.floor(rand() * bytes)).sort((a, b) => a - b);
        const { record, seen } = run(text, cuts, true, MessagesBooks);
        expect(record).toMatchObject({ finishReason: "stop", promptTokens: 9, completionTokens: 5 });
        expect(seen.ttft).toHaveLength(1);
        expect(seen.itl).toHaveLength(texts.length - 1);
      }
    }
  });

  it("stop reasons in OpenAI's names; thinking and tool-input deltas are tokens, a thinking signature is not; an error event is an error", () => {
    const finish = (stop: string) => run(start + deltas(["a"]) + end(stop, 1), [], true, MessagesBooks).record.finishReason;
    expect(["end_turn", "stop_sequence", "max_tokens", "tool_use", "refusal"].map(finish)).toEqual(["stop", "stop", "length", "tool_calls", "content_filter"]);
    const mixed =
      start +
      ev("content_block_delta", { index: 0, delta: { type: "thinking_delta", thinking: "hmm" } }) +
      ev("content_block_delta", { index: 0, delta: { type: "signature_delta", signature: "EqQB" } }) +
      ev("content_block_delta", { index: 1, delta: { type: "input_json_delta", partial_json: "{\"a\"" } }) +
      deltas(["ok"]);
    const r = run(mixed + ev("message_delta", { delta: { stop_reason: "tool_use" } }), [], true, MessagesBooks);
    expect(r.record).toMatchObject({ finishReason: "tool_calls", promptTokens: 9, completionTokens: 3 }); // no usage: the deltas
    expect(r.seen.itl).toHaveLength(2);
    expect(run(start + deltas(["a"]) + ev("error", { error: { type: "overloaded_error", message: "Overloaded" } }), [], true, MessagesBooks).record.finishReason).toBe("error");
  });

  it("a non-streamed answer: its stop reason and usage, however it arrived; anything but a message gives no books", () => {
    const body = JSON.stringify({ id: "m", type: "message", role: "assistant", content: [{ type: "text", text: "hi" }], stop_reason: "max_tokens", stop_sequence: null, usage: { input_tokens: 3, output_tokens: 16 } });
    expect(run(body, [2, 30, 77], false, MessagesBooks).record).toEqual({ finishReason: "length", promptTokens: 3, completionTokens: 16 });
    expect(run(JSON.stringify({ type: "error", error: { type: "invalid_request_error", message: "x" } }), [], false, MessagesBooks).record).toEqual({});
    expect(run("[1,2]", [], false, MessagesBooks).record).toEqual({});
  });

  it("fuzz: any bytes never throw, and an answer with no message_delta or error gives no finish reason", () => {
    const rand = seeded(78);
    const alphabet = "event: content_block_delta message_delta error data: {}\"type\":\"stop_reason\n\n é";
    for (let i = 0; i < 2000; i++) {
      const { text, cuts } = randomAnswer(rand, alphabet);
      expect(() => run(text, cuts, rand() < 0.8, MessagesBooks)).not.toThrow();
      if (!text.includes("message_delta") && !text.includes("error")) expect(run(text, cuts, true, MessagesBooks).record.finishReason).toBeUndefined();
    }
  });
});
