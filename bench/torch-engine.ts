/**
 * Throughput of the torch worker (native/dsr_worker) through dsr's TokenEngine client, printed as one
 * JSON document. Run on a GPU machine (bench/torch-device.sh does the whole device run):
 *
 *   node torch-engine.mjs --model DIR [--python python3] [--device cuda] [--dtype bfloat16]
 *                         [--prompt 128] [--decode 128] [--batches 1,8,32,64] [--max-context 1024] [--eager]
 *                         [--prefill-chunk 2048] [--constrained]
 *
 * For each batch size B: B requests of --prompt random token ids each, submitted at once, greedy,
 * exactly --decode new tokens each (no stop ids). Reported per B: wall time, output tokens/s over the
 * whole run, TTFT p50/p99, inter-token latency p50/p99 (per stream: gaps between its tokens), and the
 * worker's own counters (mean decode step in ms, prefill tokens/s). One warm-up run of B=1 first.
 * bench/hf_generate.py measures the same loads with transformers' generate() as the baseline.
 *
 *   node torch-engine.mjs --reference tiny-r1-DIR [--device cuda]
 *
 * instead checks correctness on that device: tiny-r1's reference.json cases in one batch, greedy 64
 * tokens, in float32 (must equal the transformers reference exactly) and bfloat16 (reported: how many
 * of the 64 tokens match before the first divergence). Then response_format on a real model: 32
 * arithmetic questions to tiny-r1 (fp32, greedy, ≤ 600 tokens), all at once, plain and with
 * json_object after `</think>`: output tok/s, how many answers parse as objects, and the worker's
 * check round trips (count, ms, redraws).
 *
 * `--constrained` (throughput mode) gives every request json_object from its first token. On a
 * random-weight model almost every draw is refused, so each row of each step is drawn again under a
 * mask: the constraint's worst case, reported beside the plain run of the same batch.
 */
import { parseArgs } from "node:util";
import { openTorchEngine } from "../src/engine/runtime/torch/index.js";
import { seededRandom } from "../src/engine/runtime/embedded/sampler.js";
import type { EngineCounters } from "../src/engine/runtime/engine-protocol.js";
import type { SamplingParams } from "../src/engine/runtime/types.js";

const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 };

const { values: a } = parseArgs({
  options: {
    model: { type: "string" },
    reference: { type: "string" },
    python: { type: "string", default: "python3" },
    device: { type: "string", default: "auto" },
    dtype: { type: "string", default: "auto" },
    prompt: { type: "string", default: "128" },
    decode: { type: "string", default: "128" },
    batches: { type: "string", default: "1,8,32,64" },
    "max-context": { type: "string", default: "1024" },
    eager: { type: "boolean", default: false },
    constrained: { type: "boolean", default: false },
    "prefill-chunk": { type: "string", default: "2048" },
  },
});
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const checkStats = (before: EngineCounters, after: EngineCounters, steps: number) => ({
  checks: (after.checks ?? 0) - (before.checks ?? 0),
  checkMsPerStep: r3(((after.checkMs ?? 0) - (before.checkMs ?? 0)) / Math.max(1, steps)),
  redraws: (after.redraws ?? 0) - (before.redraws ?? 0),
});
if (a.reference) {
  const { readFileSync } = await import("node:fs");
  const ref = JSON.parse(readFileSync(`${a.reference}/reference.json`, "utf8")) as { cases: { input_ids: number[]; greedy_64: number[] }[] };
  const out: Record<string, unknown> = {};
  for (const dtype of ["float32", "bfloat16"]) {
    const { engine, info } = await openTorchEngine(a.reference, { python: a.python, device: a.device, dtype, maxBatch: 4, maxContext: 256 });
    const got = await Promise.all(ref.cases.map(async (c) => {
      const ids: number[] = [];
      for await (const ch of engine.submit({ promptIds: c.input_ids, sampling: GREEDY, maxTokens: 64, stopIds: [] })) ids.push(...ch.ids);
      const same = ids.findIndex((t, i) => t !== c.greedy_64[i]);
      return same < 0 ? 64 : same;
    }));
    await engine.close();
    out[dtype] = { device: info.device, torch: info.torch, casesExact: got.filter((n) => n === 64).length, cases: got.length, tokensMatchingBeforeDivergence: got };
  }
  out.responseFormat = await jsonObjectOnTiny(a.reference);
  console.log(JSON.stringify({ bench: "torch-reference", model: a.reference, ...out }, null, 2));
  process.exit(0);
}
/** tiny-r1 answering 32 questions at once, plain and with response_format json_object after </think>. */
async function jsonObjectOnTiny(dir: string) {
  const { engine, text } = await openTorchEngine(dir, { python: a.python, device: a.device, dtype: "float32", maxBatch: 32, maxContext: 1024 });
  const prompts = Array.from({ length: 32 }, (_, i) => text.encode(text.applyChatTemplate([{ role: "user", content: `What is ${100 + 37 * i} + ${250 + 11 * i}? Please reason step by step, and put your final answer within \\boxed{}.` }])));
  const once = async (json: boolean) => {
    const before = { ...engine.counters };
    const start = performance.now();
    const outs = await Promise.all(prompts.map(async (promptIds) => {
      const ids: number[] = [];
      let finish: string | undefined;
      const constraint = json ? { kind: "json_object" as const, startAfterId: text.thinkEndId } : undefined;
      for await (const c of engine.submit({ promptIds, sampling: GREEDY, maxTokens: 600, stopIds: text.eosTokenIds, constraint })) {
        ids.push(...c.ids);
        finish = c.finish ?? finish;
      }
      return { ids, finish };
    }));
    const wall = (performance.now() - start) / 1000;
    const after = engine.counters;
    const tokens = outs.reduce((n, o) => n + o.ids.length, 0);
    const objects = outs.filter((o) => {
      try {
        const v = JSON.parse(text.decode(o.ids.slice(o.ids.indexOf(text.thinkEndId!) + 1))) as unknown;
        return typeof v === "object" && v !== null && !Array.isArray(v);
      } catch {
        return false;
      }
    }).length;
    const steps = after.decodeSteps - before.decodeSteps;
    return { wallS: r3(wall), outputTokens: tokens, outputTokPerS: Math.round(tokens / wall), answersParsingAsObjects: objects, finishStop: outs.filter((o) => o.finish === "stop").length, decodeSteps: steps, msPerDecodeStep: r3((after.decodeMs - before.decodeMs) / steps), ...checkStats(before, after, steps) };
  };
  await once(false); // warm-up
  const plain = await once(false);
  const jsonObject = await once(true);
  await engine.close();
  return { requests: prompts.length, plain, jsonObject };
}

if (!a.model) throw new Error("--model DIR is required");
const P = Number(a.prompt);
const G = Number(a.decode);
const batches = a.batches!.split(",").map(Number);


const t0 = performance.now();
const { engine, info } = await openTorchEngine(a.model, { python: a.python, device: a.device, dtype: a.dtype, maxBatch: Math.max(...batches), maxContext: Number(a["max-context"]), prefillChunk: Number(a["prefill-chunk"]), cudaGraphs: !a.eager, onLog: (l) => process.stderr.write(`[worker] ${l}\n`) });
const openMs = performance.now() - t0;
const rnd = seededRandom(1);
const vocab = info.vocab;

async function run(B: number, constrained = false) {
  const before = { ...engine.counters };
  const prompts = Array.from({ length: B }, () => Array.from({ length: P }, () => Math.floor(rnd() * Math.min(vocab, 32000))));
  const start = performance.now();
  const streams = await Promise.all(
    prompts.map(async (promptIds) => {
      const times: number[] = [];
      let n = 0;
      for await (const c of engine.submit({ promptIds, sampling: GREEDY, maxTokens: G, stopIds: [], constraint: constrained ? { kind: "json_object" } : undefined })) {
        for (let i = 0; i < c.ids.length; i++) times.push(performance.now());
        n += c.ids.length;
      }
      return { n, times };
    }),
  );
  const wall = performance.now() - start;
  const after = engine.counters;
  const tokens = streams.reduce((s, x) => s + x.n, 0);
  const ttft = streams.map((s) => s.times[0]! - start);
  const itl = streams.flatMap((s) => s.times.slice(1).map((t, i) => t - s.times[i]!));
  const steps = after.decodeSteps - before.decodeSteps;
  return {
    batch: B,
    wallS: r3(wall / 1000),
    outputTokens: tokens,
    outputTokPerS: Math.round(tokens / (wall / 1000)),
    ttftMs: { p50: r3(pct(ttft, 50)), p99: r3(pct(ttft, 99)) },
    itlMs: { p50: r3(pct(itl, 50)), p99: r3(pct(itl, 99)) },
    worker: {
      decodeSteps: steps,
      msPerDecodeStep: r3((after.decodeMs - before.decodeMs) / steps),
      prefillTokPerS: Math.round((after.prefillTokens - before.prefillTokens) / ((after.prefillMs - before.prefillMs) / 1000)),
      ...(constrained ? checkStats(before, after, steps) : {}),
    },
  };
}

await run(1); // warm-up: kernels, allocator
const results = [];
for (const B of batches) results.push(await run(B));
const constrained = [];
if (a.constrained) for (const B of batches) constrained.push(await run(B, true));
await engine.close();
console.log(JSON.stringify({ bench: "torch-engine", model: a.model, promptTokens: P, decodeTokens: G, openS: r3(openMs / 1000), worker: info, results, ...(a.constrained ? { jsonObjectFromFirstToken: constrained } : {}) }, null, 2));
