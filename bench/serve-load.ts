/**
 * Closed-loop load on a running `dsr serve` (or any OpenAI-compatible server), printed as one JSON
 * document: C clients, each sending its next streaming completion when the last one ends, until R
 * requests are done. Used by bench/torch-device.sh to compare one torch instance with one per GPU
 * (`--instances 2` on a 2-GPU host) under the same load.
 *
 *   node serve-load.mjs --url http://127.0.0.1:8000 --model NAME [--concurrency 64] [--requests 256]
 *                       [--max-tokens 128] [--prompt "…"]
 *
 * Reported: requests/s, output tokens/s (from each stream's usage), TTFT and end-to-end latency
 * p50/p99, and errors. Every request sets ignore_eos so each produces exactly --max-tokens tokens.
 */
import { parseArgs } from "node:util";
import { Agent, request } from "undici";

const { values: a } = parseArgs({
  options: {
    url: { type: "string" },
    model: { type: "string" },
    concurrency: { type: "string", default: "64" },
    requests: { type: "string", default: "256" },
    "max-tokens": { type: "string", default: "128" },
    prompt: { type: "string", default: "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}." },
  },
});
if (!a.url || !a.model) throw new Error("--url and --model are required");
const C = Number(a.concurrency);
const R = Number(a.requests);
const dispatcher = new Agent({ connections: C, pipelining: 1 });
const body = JSON.stringify({ model: a.model, prompt: a.prompt, max_tokens: Number(a["max-tokens"]), ignore_eos: true, temperature: 0, stream: true, stream_options: { include_usage: true } });

const ttft: number[] = [];
const e2e: number[] = [];
let tokens = 0;
let errors = 0;
let next = 0;

async function one(): Promise<void> {
  const t0 = performance.now();
  const r = await request(`${a.url}/v1/completions`, { method: "POST", body, headers: { "content-type": "application/json" }, dispatcher });
  if (r.statusCode !== 200) {
    errors++;
    await r.body.text();
    return;
  }
  let first = 0;
  let text = "";
  for await (const chunk of r.body) {
    if (!first) first = performance.now();
    text += chunk.toString();
  }
  const usage = /"completion_tokens":(\d+)/.exec(text.slice(text.lastIndexOf('"usage"')));
  tokens += usage ? Number(usage[1]) : 0;
  ttft.push(first - t0);
  e2e.push(performance.now() - t0);
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length ? Math.round(s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! * 10) / 10 : null;
};
const start = performance.now();
await Promise.all(
  Array.from({ length: C }, async () => {
    while (next < R) {
      next++;
      await one().catch(() => errors++);
    }
  }),
);
const wall = (performance.now() - start) / 1000;
await dispatcher.close();
console.log(
  JSON.stringify({
    bench: "serve-load",
    url: a.url,
    concurrency: C,
    requests: R,
    errors,
    wallS: Math.round(wall * 1000) / 1000,
    requestsPerS: Math.round((R - errors) / wall * 10) / 10,
    outputTokPerS: Math.round(tokens / wall),
    ttftMs: { p50: pct(ttft, 50), p99: pct(ttft, 99) },
    e2eMs: { p50: pct(e2e, 50), p99: pct(e2e, 99) },
  }),
);
