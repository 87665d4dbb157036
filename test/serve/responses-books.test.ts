/**
 * The generation books of a Responses API answer (src/engine/serve/responses-books.ts), read from the
 * bytes the gateway passes on: streamed answers cut anywhere (inside an event, inside a multi-byte
 * character, between a CR and its LF), with and without `event:` lines, lines ended by LF, CRLF or
 * CR, every terminal status; non-streamed JSON; and bytes
 * that are not what they should be never throw and give no books.
 */
import { describe, expect, it } from "vitest";
import type { Instrument } from "../../src/engine/serve/metrics.js";
import { ResponsesBooks } from "../../src/engine/serve/responses-books.js";
import type { RequestRecord } from "../../src/engine/serve/types.js";

function seeded(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

const ev = (type: string, data: object, named = true) => `${named ? `event: ${type}\n` : ""}data: ${JSON.stringify({ type, ...data })}\n\n`;

/** Feeds `text` cut at `cuts` (byte offsets); what the record and the instrument were told. */
function run(text: string, cuts: number[], stream = true) {
  const seen = { ttft: [] as number[], itl: [] as number[] };
  const ins: Instrument = { ttft: (s) => seen.ttft.push(s), itl: (s) => seen.itl.push(s) };
  const record: RequestRecord = {};
  const books = new ResponsesBooks(record, performance.now(), ins, stream);
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
      const text = Array.from({ length: Math.floor(rand() * 200) }, () => alphabet[Math.floor(rand() * alphabet.length)]).join("");
      const cuts = Array.from({ length: 3 }, () => Math.floor(rand() * Buffer.byteLength(text))).sort((a, b) => a - b);
      expect(() => run(text, cuts, rand() < 0.8)).not.toThrow();
      if (!text.includes("completed")) expect(run(text, cuts).record.finishReason).toBeUndefined();
    }
  });
});
