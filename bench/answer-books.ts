/**
 * What reading a passed-through answer's books costs the gateway (src/engine/serve/answer-books.ts,
 * on the `/v1/responses` and `/v1/messages` pass-through): 64-delta streamed answers fed one event per
 * read, as vLLM sends them, and non-streamed JSON answers, for OpenAI's Responses API and Anthropic's
 * Messages API. Usage: `npx tsx bench/answer-books.ts [--answers 20000]`; prints one JSON document
 * (µs per answer, ns per event, per API).
 */
import { MessagesBooks } from "../src/engine/serve/messages-books.js";
import { ResponsesBooks } from "../src/engine/serve/responses-books.js";
import type { RequestRecord } from "../src/engine/serve/types.js";

const i = process.argv.indexOf("--answers");
const ANSWERS = i >= 0 ? Number(process.argv[i + 1]) : 20_000;
const ev = (type: string, data: object) => Buffer.from(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
const model = "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B";
const response = { id: "resp_0123456789", object: "response", model, status: "completed", usage: { input_tokens: 12, output_tokens: 64, total_tokens: 76 } };
const message = { id: "msg_0123456789", type: "message", role: "assistant", model, content: [], stop_reason: "end_turn", stop_sequence: null, usage: { input_tokens: 12, output_tokens: 64 } };
const apis = {
  responses: {
    Books: ResponsesBooks,
    reads: [
      ev("response.created", { response: { ...response, status: "in_progress", usage: null } }),
      ...Array.from({ length: 64 }, (_, k) => ev("response.output_text.delta", { item_id: "msg_1", output_index: 0, content_index: 0, delta: ` tok${k}`, sequence_number: k + 2 })),
      ev("response.completed", { response }),
    ],
    json: Buffer.from(JSON.stringify(response)),
  },
  messages: {
    Books: MessagesBooks,
    reads: [
      ev("message_start", { message: { ...message, stop_reason: null, usage: { input_tokens: 12, output_tokens: 1 } } }),
      ev("content_block_start", { index: 0, content_block: { type: "text", text: "" } }),
      ...Array.from({ length: 64 }, (_, k) => ev("content_block_delta", { index: 0, delta: { type: "text_delta", text: ` tok${k}` } })),
      ev("content_block_stop", { index: 0 }),
      ev("message_delta", { delta: { stop_reason: "end_turn", stop_sequence: null }, usage: { output_tokens: 64 } }),
      ev("message_stop", {}),
    ],
    json: Buffer.from(JSON.stringify(message)),
  },
};
const ins = { ttft: () => undefined, itl: () => undefined };
const time = (f: () => void) => {
  for (let w = 0; w < 2000; w++) f();
  const t0 = performance.now();
  for (let n = 0; n < ANSWERS; n++) f();
  return ((performance.now() - t0) * 1000) / ANSWERS; // µs per answer
};
const out: Record<string, unknown> = { schema: "dsr.bench.answer-books/1", answers: ANSWERS };
for (const [api, { Books, reads, json }] of Object.entries(apis)) {
  const streamed = time(() => {
    const record: RequestRecord = {};
    const b = new Books(record, 0, ins, true);
    for (const r of reads) b.feed(r);
    b.end();
    if (record.completionTokens !== 64 || record.promptTokens !== 12) throw new Error(`${api}: books went wrong`);
  });
  const whole = time(() => {
    const record: RequestRecord = {};
    const b = new Books(record, 0, ins, false);
    b.feed(json);
    b.end();
    if (record.promptTokens !== 12) throw new Error(`${api}: books went wrong`);
  });
  out[api] = { streamed_us_per_answer: +streamed.toFixed(2), streamed_ns_per_event: Math.round((streamed * 1000) / reads.length), json_us_per_answer: +whole.toFixed(2) };
}
console.log(JSON.stringify(out));
