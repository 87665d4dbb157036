/**
 * What reading a Responses API answer's books costs the gateway (src/engine/serve/responses-books.ts,
 * on the `/v1/responses` pass-through): 64-delta streamed answers fed one event per read, as vLLM
 * sends them, and non-streamed JSON answers. Usage: `npx tsx bench/responses-books.ts [--answers 20000]`;
 * prints one JSON document (µs per answer, ns per event).
 */
import { ResponsesBooks } from "../src/engine/serve/responses-books.js";
import type { RequestRecord } from "../src/engine/serve/types.js";

const i = process.argv.indexOf("--answers");
const ANSWERS = i >= 0 ? Number(process.argv[i + 1]) : 20_000;
const ev = (type: string, data: object) => Buffer.from(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
const response = { id: "resp_0123456789", object: "response", model: "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", status: "completed", usage: { input_tokens: 12, output_tokens: 64, total_tokens: 76 } };
const reads = [
  ev("response.created", { response: { ...response, status: "in_progress", usage: null } }),
  ...Array.from({ length: 64 }, (_, k) => ev("response.output_text.delta", { item_id: "msg_1", output_index: 0, content_index: 0, delta: ` tok${k}`, sequence_number: k + 2 })),
  ev("response.completed", { response }),
];
const json = Buffer.from(JSON.stringify(response));
const ins = { ttft: () => undefined, itl: () => undefined };
const time = (f: () => void) => {
  for (let w = 0; w < 2000; w++) f();
  const t0 = performance.now();
  for (let n = 0; n < ANSWERS; n++) f();
  return ((performance.now() - t0) * 1000) / ANSWERS; // µs per answer
};
const streamed = time(() => {
  const record: RequestRecord = {};
  const b = new ResponsesBooks(record, 0, ins, true);
  for (const r of reads) b.feed(r);
  b.end();
  if (record.completionTokens !== 64) throw new Error("books went wrong");
});
const whole = time(() => {
  const record: RequestRecord = {};
  const b = new ResponsesBooks(record, 0, ins, false);
  b.feed(json);
  b.end();
  if (record.promptTokens !== 12) throw new Error("books went wrong");
});
console.log(JSON.stringify({ schema: "dsr.bench.responses-books/1", answers: ANSWERS, streamed_us_per_answer: +streamed.toFixed(2), streamed_ns_per_event: Math.round((streamed * 1000) / reads.length), json_us_per_answer: +whole.toFixed(2) }));
