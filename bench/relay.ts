/**
 * The SSE relay's CPU per event (src/engine/serve/sse-relay.ts), in process: 64-event chat streams,
 * chunk-framed as vLLM sends them, decoded and relayed read by read as the proxy does (output framed
 * as one chunk per read), for the stream shapes the gateway meets. The baseline in the same run is
 * the JSON path (`reasoning→both, no template`: every event's `created` differs, so no byte template
 * fits and each event is parsed and re-serialised, as every reasoning event was before session 8)
 * and plain content events, which pass through unchanged.
 *
 * Usage: `npx esbuild bench/relay.ts --bundle --platform=node --format=esm --outfile=.scratch/relay.mjs
 * && node .scratch/relay.mjs [--streams 5000] [--per-read 1,5]` — prints one JSON document. Bundled
 * rather than run through tsx, whose per-function wrappers add about half a microsecond per event.
 */
import { ChunkedDecoder, Ranges } from "../src/engine/serve/h1-chunked.js";
import type { ReasoningField } from "../src/engine/serve/reasoning.js";
import { SseRelay } from "../src/engine/serve/sse-relay.js";

const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : d;
};
const STREAMS = Number(arg("--streams", "5000"));
const PER_READ = arg("--per-read", "1,5").split(",").map(Number);
const EVENTS = 64;

const head = (created: number) => ({ id: "chatcmpl-0123456789abcdef0123456789abcdef", object: "chat.completion.chunk", created, model: "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" });
const ev = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;
const vllm = (delta: Record<string, unknown>, created = 1732312345) => ev({ ...head(created), choices: [{ index: 0, delta, logprobs: null, finish_reason: null }] });
const sglang = (delta: Record<string, unknown>) =>
  ev({ ...head(1732312345), choices: [{ index: 0, delta: { role: null, content: null, reasoning_content: null, tool_calls: null, ...delta }, logprobs: null, finish_reason: null, matched_stop: null }], usage: null });
const tok = (k: number) => ` tok${k}`;

const scenarios: { name: string; fields: ReasoningField[]; events: (k: number) => string }[] = [
  { name: "plain content", fields: ["reasoning_content", "reasoning"], events: (k) => vllm({ content: tok(k) }) },
  { name: "reasoning→both (vLLM ≥0.17)", fields: ["reasoning_content", "reasoning"], events: (k) => vllm({ reasoning: tok(k) }) },
  { name: "reasoning→both, no template (JSON path)", fields: ["reasoning_content", "reasoning"], events: (k) => vllm({ reasoning: tok(k) }, 1732312345 + k) },
  { name: "reasoning_content→reasoning_content (unchanged)", fields: ["reasoning_content"], events: (k) => vllm({ reasoning_content: tok(k) }) },
  { name: "DeepSeek API answer (null reasoning key)→both", fields: ["reasoning_content", "reasoning"], events: (k) => vllm({ content: tok(k), reasoning_content: null }) },
  { name: "SGLang reasoning (usage null)→both", fields: ["reasoning_content", "reasoning"], events: (k) => sglang({ reasoning_content: tok(k) }) },
];

const chunk = (e: string) => `${Buffer.byteLength(e).toString(16)}\r\n${e}\r\n`;

/** µs per event over STREAMS streams of `reads` (each a run of whole chunks). */
function measure(reads: Buffer[], fields: ReasoningField[]): number {
  let sink = 0;
  const t0 = performance.now();
  for (let i = 0; i < STREAMS; i++) {
    const r = new SseRelay({ fields, dropUsageChunk: true });
    const dec = new ChunkedDecoder();
    const ranges = new Ranges();
    for (const b of reads) {
      ranges.clear();
      dec.feed(b, 0, ranges);
      if (r.push(b, ranges, true)) sink += r.passedThrough ? b.length : r.out.length;
    }
    if (r.stats.events !== EVENTS) throw new Error(`relay counted ${r.stats.events} events of ${EVENTS}`);
  }
  if (sink === 0) throw new Error("nothing relayed");
  return ((performance.now() - t0) * 1000) / (STREAMS * EVENTS);
}

const results: Record<string, Record<string, number>> = {};
for (const per of PER_READ) {
  for (const s of scenarios) {
    const events = Array.from({ length: EVENTS }, (_, k) => s.events(k));
    const reads: Buffer[] = [];
    for (let i = 0; i < events.length; i += per) reads.push(Buffer.from(events.slice(i, i + per).map(chunk).join("")));
    measure(reads, s.fields); // warm-up: the JIT and the buffer pool
    const us = Math.min(measure(reads, s.fields), measure(reads, s.fields));
    (results[s.name] ??= {})[`events_per_read_${per}`] = Math.round(us * 1000) / 1000;
  }
}
console.log(JSON.stringify({ schema: "dsr.bench.relay/1", unit: "µs per event (best of 2 runs)", streams: STREAMS, events_per_stream: EVENTS, node: process.version, results }, null, 2));
