/**
 * Benchmark of the embedded engine on a DeepSeek-R1-Distill-Qwen-1.5B-shaped model, printed as one
 * JSON document.
 *
 *   npx tsx bench/engine.ts [--dir DIR] [--threads N] [--weights int4] [--block-size 32] [--decode 32] [--reps 3] [--keep]
 *                           [--model ONNX_DIR]   (reuse a model a previous --keep run left)
 *                           [--only-json]        (steps 1 and 6 only)
 *                           [--only-schema]      (steps 1 and 7 only)
 *
 * 1. Builds the model straight to int4 with seeded random weights (no fp32 checkpoint on disk):
 *    hidden 1536, 28 layers, 12 heads / 2 KV heads (head 128), MLP 8960, vocab 151936, q/k/v bias,
 *    untied lm_head (as R1-Distill-Qwen-1.5B), RTN MatMulNBits block 32, accuracy_level 4.
 * 2. Memory copy bandwidth (STREAM-style: read + written bytes/s of 256 MiB copies, one copying worker
 *    per onnxruntime thread) → the bandwidth bound on decode tok/s =
 *    bandwidth ÷ weight bytes read per token (every MatMulNBits weight + scales + zero points, lm_head
 *    included; the embedding row is negligible).
 * 3. Baseline and dsr single stream, interleaved --reps times (the machine is shared: interleaving
 *    puts the same drift on both): a bare loop of onnxruntime session.run on that graph (batch 1,
 *    128-token prompt then --decode greedy steps, no dsr scheduling), then the same through dsr's
 *    scheduler (the engine `dsr serve`/`dsr chat` use): TTFT of the 128-token prompt, prefill tok/s,
 *    decode tok/s. Medians are reported.
 * 4. The bare loop at batch 1 and 8 (32-token prompts): what the kernels allow for a batch.
 * 5. dsr with 4, 8 and 16 concurrent streams (aggregate decode tok/s in the window where all streams
 *    are decoding), each followed by a single-stream run for the ratio, with the mean step time and
 *    the part of it spent inside session.run.
 * 6. The cost of response_format json_object (json-constraint.ts): single-stream decode tok/s with and
 *    without the constraint on the same prompt, interleaved --reps times, and the constrained
 *    sampler alone on random logits (ms per token, free vs constrained; one cold full-mask build).
 *    The model has no tokenizer, so a synthetic byte-level vocabulary of the model's size stands in
 *    (syntheticTokenizer). Random weights wander into long strings, where most tokens are allowed, so
 *    the sampler-alone figures also give the worst case: a state that rejects the model's choice at
 *    every step (a check, then a draw under the state's cached full mask).
 * 7. The same for response_format json_schema (only with --only-schema): SCHEMA below, a strict
 *    OpenAI-style object (required keys, additionalProperties false, an enum array, anyOf with null,
 *    a $ref), so key positions allow only declared names; plus uncached full masks at three states
 *    (the start, after `{`, inside a key), each the median of 3 builds on a fresh vocabulary. (The
 *    sampler rows keep step 6's names: their *Json variants are the schema's here.)
 * The machine is shared (five agents on 2 cores): wall-clock rates swing several-fold between runs, so
 * the JSON also gives "bestCase" figures from the minimum step times (the least-disturbed step of
 * each kind, the closest to an idle machine); docs/BENCHMARKS.md reports both.
 * Everything generated is deleted at the end unless --keep.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { execFileSync } from "node:child_process";
import { Worker } from "node:worker_threads";
import * as ort from "onnxruntime-node";
import { parseModelConfig } from "../src/engine/arch/config.js";
import { buildOnnxFromSource, readManifest, type OnnxManifest } from "../src/engine/onnx/build.js";
import type { WeightFormat } from "../src/engine/onnx/layers.js";
import { syntheticWeights } from "../src/engine/onnx/weights.js";
import { DecoderSession } from "../src/engine/runtime/embedded/decoder-session.js";
import { JsonConstraint, JsonVocabulary } from "../src/engine/runtime/embedded/json-constraint.js";
import { Sampler, seededRandom } from "../src/engine/runtime/embedded/sampler.js";
import { Scheduler } from "../src/engine/runtime/embedded/scheduler.js";
import type { SamplingParams, SubmitRequest } from "../src/engine/runtime/types.js";
import { tokenByteTable, type TokenByteTable } from "../src/engine/text/token-bytes.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1]! : dflt;
};
const threads = Number(opt("threads", String(cpus().length)));
const weights = opt("weights", "int4") as WeightFormat;
const blockSize = Number(opt("block-size", "32"));
const decodeSteps = Number(opt("decode", "24"));
const reps = Number(opt("reps", "5"));
const reuse = opt("model", "");
const onlyJson = args.includes("--only-json");
const onlySchema = args.includes("--only-schema");
const root = mkdtempSync(join(opt("dir", tmpdir()), "dsr-bench-engine-"));
const log = (s: string) => process.stderr.write(`[bench/engine] ${s}\n`);

const CONFIG = {
  architectures: ["Qwen2ForCausalLM"],
  model_type: "qwen2",
  hidden_size: 1536,
  intermediate_size: 8960,
  num_hidden_layers: 28,
  num_attention_heads: 12,
  num_key_value_heads: 2,
  vocab_size: 151936,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: false,
  hidden_act: "silu",
  bos_token_id: 151646,
  eos_token_id: 151643,
};

function shapes(): Map<string, number[]> {
  const c = CONFIG;
  const hd = c.hidden_size / c.num_attention_heads;
  const m = new Map<string, number[]>();
  m.set("model.embed_tokens.weight", [c.vocab_size, c.hidden_size]);
  m.set("lm_head.weight", [c.vocab_size, c.hidden_size]);
  m.set("model.norm.weight", [c.hidden_size]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.self_attn.q_proj.weight`, [c.num_attention_heads * hd, c.hidden_size]);
    m.set(`${p}.self_attn.k_proj.weight`, [c.num_key_value_heads * hd, c.hidden_size]);
    m.set(`${p}.self_attn.v_proj.weight`, [c.num_key_value_heads * hd, c.hidden_size]);
    m.set(`${p}.self_attn.q_proj.bias`, [c.num_attention_heads * hd]);
    m.set(`${p}.self_attn.k_proj.bias`, [c.num_key_value_heads * hd]);
    m.set(`${p}.self_attn.v_proj.bias`, [c.num_key_value_heads * hd]);
    m.set(`${p}.self_attn.o_proj.weight`, [c.hidden_size, c.num_attention_heads * hd]);
    m.set(`${p}.mlp.gate_proj.weight`, [c.intermediate_size, c.hidden_size]);
    m.set(`${p}.mlp.up_proj.weight`, [c.intermediate_size, c.hidden_size]);
    m.set(`${p}.mlp.down_proj.weight`, [c.hidden_size, c.intermediate_size]);
    m.set(`${p}.input_layernorm.weight`, [c.hidden_size]);
    m.set(`${p}.post_attention_layernorm.weight`, [c.hidden_size]);
  }
  return m;
}

/** Bytes of quantized weights (+ fp32 scales + packed zero points) a decode step reads. */
function weightBytesPerToken(sh: Map<string, number[]>, bits: number, block: number): number {
  let total = 0;
  for (const [name, s] of sh) {
    if (s.length !== 2 || name === "model.embed_tokens.weight") continue;
    const [n, k] = s as [number, number];
    const kb = Math.ceil(k / block);
    total += n * kb * ((block * bits) / 8) + n * kb * 4 + n * Math.ceil((kb * bits) / 8);
  }
  return total;
}

/**
 * Copy bandwidth, STREAM convention (bytes read + bytes written per second), with `threads` workers
 * copying 256 MiB arrays at the same time (onnxruntime reads weights with that many threads). Best of
 * several rounds.
 */
async function copyBandwidth(): Promise<number> {
  const code = `
    const { parentPort } = require("node:worker_threads");
    const n = (256 << 20) / 8;
    const a = new Float64Array(n).fill(1), b = new Float64Array(n);
    b.set(a);
    parentPort.on("message", () => { const t = performance.now(); b.set(a); parentPort.postMessage({ bytes: 2 * n * 8, ms: performance.now() - t }); });
    parentPort.postMessage("ready");`;
  const workers = Array.from({ length: threads }, () => new Worker(code, { eval: true }));
  await Promise.all(workers.map((w) => new Promise((r) => w.once("message", r))));
  let best = 0;
  for (let round = 0; round < 8; round++) {
    const t = performance.now();
    const res = await Promise.all(workers.map((w) => new Promise<{ bytes: number }>((r) => (w.once("message", r), w.postMessage("go")))));
    const s = (performance.now() - t) / 1000;
    best = Math.max(best, res.reduce((a, x) => a + x.bytes, 0) / s);
  }
  await Promise.all(workers.map((w) => w.terminate()));
  return best;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function randomPrompt(len: number, seed: number): number[] {
  const r = seededRandom(seed);
  return Array.from({ length: len }, () => Math.floor(r() * 150000));
}

/**
 * The baseline: a bare loop of session.run on the same graph through DecoderSession (the thin session
 * wrapper: feeds, the KV buffers and the append of each step's new keys/values, which any caller of
 * this graph must do) with greedy argmax, and no scheduler, sampler, channels or slot bookkeeping.
 * `rows` sequences decode together: rows = 1 is the single-stream baseline (128-token prompt), larger
 * batches (32-token prompts, prefilled as one [rows, 32] run) show what the kernels allow for a batch.
 */
async function bareLoop(dir: string, m: OnnxManifest, rows: number, steps: number): Promise<{ rows: number; prefillTokPerS: number; decodeTokPerS: number; decodeMsMedian: number; decodeMsMin: number }> {
  const P = rows === 1 ? 128 : 32;
  const s = await DecoderSession.open(dir, m, { threads, maxBatch: rows, maxContext: 1024 });
  s.fit(P + steps + 1, new Array<number>(rows).fill(0));
  const argmax = (l: Float32Array) =>
    Array.from({ length: rows }, (_, r) => {
      const V = m.io.vocabSize;
      let best = 0;
      for (let j = 1; j < V; j++) if (l[r * V + j]! > l[r * V + best]!) best = j;
      return best;
    });
  const t0 = performance.now();
  let toks = argmax(await s.run(0, Array.from({ length: rows }, (_, r) => randomPrompt(P, rows === 1 ? 1 : 200 + r)), new Array<number>(rows).fill(0)));
  const prefillS = (performance.now() - t0) / 1000;
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t = performance.now();
    toks = argmax(await s.run(0, toks.map((x) => [x]), new Array<number>(rows).fill(P + i)));
    times.push(performance.now() - t);
  }
  await s.close();
  const steady = times.slice(2);
  return {
    rows,
    prefillTokPerS: (rows * P) / prefillS,
    decodeTokPerS: (rows * steady.length * 1000) / steady.reduce((a, b) => a + b, 0),
    decodeMsMedian: median(steady),
    decodeMsMin: Math.min(...steady),
  };
}

const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 };

/** n concurrent streams through the scheduler; aggregate decode tok/s while all n are decoding. */
async function streams(sched: Scheduler, n: number, promptLen: number, maxTokens: number) {
  const starts: number[] = [];
  const firsts: number[] = [];
  const ends: number[] = [];
  const stamps: number[][] = [];
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      stamps[i] = [];
      starts[i] = performance.now();
      for await (const c of sched.submit({ promptIds: randomPrompt(promptLen, 100 + i), sampling: GREEDY, maxTokens, stopIds: [] })) {
        if (c.ids.length) stamps[i]!.push(performance.now());
      }
      firsts[i] = stamps[i]![0]!;
      ends[i] = performance.now();
    }),
  );
  const from = Math.max(...firsts);
  const to = Math.min(...ends);
  const inWindow = stamps.reduce((a, s) => a + s.filter((t) => t > from && t <= to).length, 0);
  return {
    streams: n,
    aggregateDecodeTokPerS: to > from ? (inWindow * 1000) / (to - from) : 0,
    windowSeconds: (to - from) / 1000,
    ttftSeconds: (firsts[0]! - starts[0]!) / 1000,
    perStreamDecodeTokPerS: stamps.map((s) => ((s.length - 1) * 1000) / (s[s.length - 1]! - s[0]!)),
    /** Gaps between decode steps while all streams decode (stream 0's inter-token times in the window). */
    stepMs: stamps[0]!.slice(1).map((t, j) => t - stamps[0]![j]!).filter((_, j) => stamps[0]![j]! >= from && stamps[0]![j + 1]! <= to),
  };
}

/**
 * A tokenizer.json-shaped object with a byte-level BPE vocabulary of `size` ids, roughly Qwen2's mix:
 * the 256 single bytes, then word pieces with and without a leading space, digits, whitespace runs,
 * JSON-ish punctuation, CJK characters (3-byte UTF-8) and a few lone UTF-8 bytes; the last 200 ids
 * are added (special) tokens. Spelled with GPT-2's byte → character map, as tokenizer.json is.
 */
function syntheticTokenizer(size: number): Record<string, unknown> {
  const r = seededRandom(42);
  const int = (n: number) => Math.floor(r() * n);
  const charOf: string[] = [];
  let next = 256;
  for (let b = 0; b < 256; b++) charOf[b] = String.fromCodePoint((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae ? b : next++);
  const spell = (bytes: Uint8Array) => Array.from(bytes, (b) => charOf[b]).join("");
  const letters = "etaoinshrdlucmfwypvbgkqjxzETAOINSHRDLU_";
  const punct = ['{"', '":', '",', '"}', "},", "],", '":"', '": "', "{", "}", "[", "]", ",", ":", '"', "\n", "()", "();", "->", "==", "//", "#"];
  const piece = (): string => {
    const k = r();
    if (k < 0.55) return (r() < 0.6 ? " " : "") + Array.from({ length: 1 + int(9) }, () => letters[int(letters.length)]).join("");
    if (k < 0.65) return String(int(1000));
    if (k < 0.72) return r() < 0.5 ? "\n" + " ".repeat(int(12)) : " ".repeat(2 + int(14));
    if (k < 0.85) return punct[int(punct.length)]! + (r() < 0.3 ? punct[int(punct.length)]! : "");
    return Array.from({ length: 1 + int(3) }, () => String.fromCodePoint(0x4e00 + int(0x5000))).join("");
  };
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[charOf[b]!] = b;
  let id = 256;
  while (id < size - 200) {
    const s = spell(Buffer.from(piece()));
    if (!(s in vocab)) vocab[s] = id++;
  }
  const added = Array.from({ length: 200 }, (_, i) => ({ id: size - 200 + i, content: `<|special_${i}|>`, special: true }));
  return { model: { type: "BPE", vocab }, decoder: { type: "ByteLevel" }, added_tokens: added };
}

/** Step 7's schema: what an OpenAI strict-mode client sends for a small record. */
const SCHEMA = {
  type: "object",
  properties: {
    name: { type: "string" },
    age: { type: "integer" },
    email: { anyOf: [{ type: "string" }, { type: "null" }] },
    tags: { type: "array", items: { enum: ["alpha", "beta", "gamma"] }, maxItems: 4 },
    address: { $ref: "#/$defs/Address" },
  },
  required: ["name", "age", "email", "tags", "address"],
  additionalProperties: false,
  $defs: { Address: { type: "object", properties: { street: { type: "string" }, zip: { type: "string" } }, required: ["street", "zip"], additionalProperties: false } },
};

/**
 * Steps 6 and 7 (`name` "json": json_object; "schema": json_schema SCHEMA). (a) decode tok/s of one
 * stream with and without the constraint on the same prompt, sampled
 * (temperature 0.6, top-p 0.95, as R1's defaults) with a new seed per request; a constrained answer
 * can close its object early, so it is re-asked (at most 100 times) until it has as many decode steps
 * as the free run, and tok/s counts only the gaps between tokens of one request. (b) the sampler
 * alone on random logits: ms per token, free and constrained, greedy and sampled.
 */
async function jsonConstraintCost(dir: string, manifest: OnnxManifest, name: "json" | "schema" = "json") {
  const spec: NonNullable<SubmitRequest["constraint"]> = name === "json" ? { kind: "json_object" } : { kind: "json_schema", schema: SCHEMA };
  const V = manifest.io.vocabSize;
  const tokenizer = syntheticTokenizer(V);
  const t0 = performance.now();
  const table = tokenByteTable(tokenizer)!;
  const tableMs = performance.now() - t0;
  const session = await DecoderSession.open(dir, manifest, { threads, maxBatch: 1, maxContext: 1024 });
  const sched = new Scheduler(session, { maxBatch: 1, maxContext: 1024, prefillChunk: 64, prefillChunkIdle: 512 }, table);
  const prompt = randomPrompt(128, 1);
  const sampled: SamplingParams = { ...GREEDY, temperature: 0.6, topP: 0.95 };
  let seed = 0;
  const gapsOf = async (constraint: SubmitRequest["constraint"]) => {
    const gaps: number[] = [];
    let requests = 0;
    while (gaps.length < decodeSteps && requests < 100) {
      requests++;
      let last = 0;
      for await (const c of sched.submit({ promptIds: prompt, sampling: { ...sampled, seed: seed++ }, maxTokens: decodeSteps + 1, stopIds: [], constraint })) {
        const now = performance.now();
        if (c.ids.length && last) gaps.push(now - last);
        if (c.ids.length) last = now;
      }
    }
    return { gaps: gaps.slice(0, decodeSteps), requests };
  };
  await gapsOf(undefined); // warm-up
  const runs = [];
  for (let rep = 0; rep < reps; rep++) {
    log(`${name} constraint rep ${rep + 1}/${reps}…`);
    const free = await gapsOf(undefined);
    const json = await gapsOf(spec);
    const rate = (g: number[]) => (g.length * 1000) / g.reduce((a, b) => a + b, 0);
    runs.push({ freeDecodeTokPerS: rate(free.gaps), [`${name}DecodeTokPerS`]: rate(json.gaps), [`${name}Requests`]: json.requests, freeStepMsMin: Math.min(...free.gaps), [`${name}StepMsMin`]: Math.min(...json.gaps), constrainedTokPerS: rate(json.gaps), constrainedStepMsMin: Math.min(...json.gaps) });
  }
  await sched.close();

  // (b) The sampler alone: 16 rotating rows of N(0, 2²) logits, 2000 tokens per variant.
  const r = seededRandom(7);
  const rows = Array.from({ length: 16 }, () => Float32Array.from({ length: V }, () => 2 * Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r())));
  const words = new JsonVocabulary(table, V);
  const c0 = performance.now();
  new JsonConstraint(words, spec).mask();
  const coldMaskMs = performance.now() - c0;
  // Uncached masks at three states (a fresh vocabulary each time, so nothing is cached), after the warm-up above.
  const enc = (s: string) => Array.from(Buffer.from(s), (b) => b); // byte tokens: ids 0-255 are the single bytes
  const coldMasksMs = Object.fromEntries(
    Object.entries({ start: "", afterBrace: "{", inKey: '{"' }).map(([state, prefix]) => {
      const times = [0, 1, 2].map(() => {
        const v = new JsonVocabulary(table, V);
        const c = new JsonConstraint(v, spec);
        for (const id of enc(prefix)) c.accept(id);
        const t = performance.now();
        c.mask();
        return performance.now() - t;
      });
      return [state, median(times)];
    }),
  );
  /** `advance: false` keeps the constraint before its `{`, where nearly every choice is rejected. */
  const perToken = (p: SamplingParams, constrained: boolean, advance = true) => {
    const s = new Sampler(p, [], V);
    let c = new JsonConstraint(words, spec);
    let objects = 0;
    const n = advance ? 2000 : 200;
    const t = performance.now();
    for (let i = 0; i < n; i++) {
      const { id } = s.sample(rows[i % rows.length]!, constrained ? c : undefined);
      if (!constrained || !advance) continue;
      c.accept(id);
      if (c.done) (c = new JsonConstraint(words, spec)), objects++;
    }
    return { msPerToken: (performance.now() - t) / n, objectsClosed: objects };
  };
  const sampler = {
    greedyFree: perToken(GREEDY, false),
    greedyJson: perToken(GREEDY, true),
    sampledFree: perToken({ ...sampled, seed: 1 }, false),
    sampledJson: perToken({ ...sampled, seed: 1 }, true),
    greedyJsonWorstCase: perToken(GREEDY, true, false),
    sampledJsonWorstCase: perToken({ ...sampled, seed: 1 }, true, false),
    fullMaskBuilds: words.maskBuilds,
  };
  return {
    note: "synthetic byte-level vocabulary of the model's size; random weights; worst case = every step rejects the model's choices",
    ...(name === "schema" ? { schema: SCHEMA } : {}),
    tokenTableBuildMs: tableMs,
    coldFullMaskMs: coldMaskMs,
    coldMasksMs,
    decode: {
      runs: runs.map(({ constrainedTokPerS: _a, constrainedStepMsMin: _b, ...r }) => r),
      freeTokPerSMedian: median(runs.map((x) => x.freeDecodeTokPerS)),
      [`${name}TokPerSMedian`]: median(runs.map((x) => x.constrainedTokPerS)),
      [`${name}VsFree`]: median(runs.map((x) => x.constrainedTokPerS / x.freeDecodeTokPerS)),
      [`${name}VsFreeBestStep`]: Math.min(...runs.map((x) => x.freeStepMsMin)) / Math.min(...runs.map((x) => x.constrainedStepMsMin)),
    },
    sampler,
  };
}

async function main() {
  const loadBefore = loadavg();
  const uptimeBefore = execFileSync("uptime").toString().trim();
  const sh = shapes();
  const cfg = parseModelConfig(CONFIG);
  let dir = reuse;
  let manifest: OnnxManifest;
  let buildSeconds = 0;
  if (reuse) {
    manifest = (await readManifest(reuse))!;
  } else {
    log(`building ${weights} (block ${blockSize}) model in ${root}…`);
    const tBuild = performance.now();
    dir = join(root, "onnx");
    let lastPct = -1;
    manifest = await buildOnnxFromSource(cfg, syntheticWeights(sh), undefined, dir, {
      weights,
      blockSize,
      maxPositions: 4096,
      onProgress: (p) => {
        const pct = Math.floor((100 * p.done) / p.total);
        if (pct % 10 === 0 && pct !== lastPct) log(`build ${pct}%`), (lastPct = pct);
      },
    });
    buildSeconds = (performance.now() - tBuild) / 1000;
  }
  const machine = () => ({ cpu: cpus()[0]?.model, cores: cpus().length, threads, loadavgBefore: loadBefore, loadavgAfter: loadavg(), uptimeBefore, uptimeAfter: execFileSync("uptime").toString().trim() });
  const model = { shape: "DeepSeek-R1-Distill-Qwen-1.5B (random weights)", weights: manifest.weights, blockSize: manifest.blockSize, accuracyLevel: manifest.accuracyLevel, dataBytes: manifest.dataBytes, buildSeconds };
  if (onlyJson) {
    const jsonConstraint = await jsonConstraintCost(dir, manifest);
    process.stdout.write(JSON.stringify({ machine: machine(), versions: { node: process.version, onnxruntime: ort.env.versions?.common }, model, jsonConstraint }, null, 2) + "\n");
    return;
  }
  if (onlySchema) {
    const schemaConstraint = await jsonConstraintCost(dir, manifest, "schema");
    process.stdout.write(JSON.stringify({ machine: machine(), versions: { node: process.version, onnxruntime: ort.env.versions?.common }, model, schemaConstraint }, null, 2) + "\n");
    return;
  }
  const bits = manifest.weights === "int4" ? 4 : manifest.weights === "int8" ? 8 : 32;
  const bytesPerToken = bits < 32 ? weightBytesPerToken(sh, bits, manifest.blockSize ?? blockSize) : NaN;
  log("measuring copy bandwidth…");
  const bandwidth = await copyBandwidth();

  const maxContext = 1024;
  const session = await DecoderSession.open(dir, manifest, { threads, maxBatch: 16, maxContext });
  const sched = new Scheduler(session, { maxBatch: 16, maxContext, prefillChunk: 64, prefillChunkIdle: 512 });
  await streams(sched, 1, 16, 4); // warm-up
  const bareRuns: Awaited<ReturnType<typeof bareLoop>>[] = [];
  const singles: Awaited<ReturnType<typeof streams>>[] = [];
  for (let r = 0; r < reps; r++) {
    log(`rep ${r + 1}/${reps}: bare onnxruntime loop…`);
    bareRuns.push(await bareLoop(dir, manifest, 1, decodeSteps));
    log(`rep ${r + 1}/${reps}: dsr single stream…`);
    singles.push(await streams(sched, 1, 128, decodeSteps));
    log(`  bare ${bareRuns[r]!.decodeTokPerS.toFixed(2)} tok/s, dsr ${singles[r]!.perStreamDecodeTokPerS[0]!.toFixed(2)} tok/s`);
  }
  // Time spent inside onnxruntime (session.run, its output copies included) per decode step, so the
  // JSON separates the kernels' share of a step from dsr's own (sampling, slots, channels).
  let runMs = 0;
  const run = session.run.bind(session);
  session.run = async (...a: Parameters<typeof run>) => {
    const t = performance.now();
    try {
      return await run(...a);
    } finally {
      runMs += performance.now() - t;
    }
  };
  const bareBatches = [];
  for (const n of [1, 8]) {
    log(`bare onnxruntime loop, batch ${n}…`);
    bareBatches.push(await bareLoop(dir, manifest, n, 24));
  }
  const multi = [];
  for (const n of [4, 8, 16]) {
    log(`dsr ${n} streams…`);
    const c0 = { ...sched.counters };
    const r0 = runMs;
    const m = await streams(sched, n, 32, n >= 16 ? 24 : 32);
    const steps = sched.counters.decodeSteps - c0.decodeSteps;
    const stepMs = (sched.counters.decodeMs + sched.counters.prefillMs - c0.decodeMs - c0.prefillMs) / steps;
    const onnxMs = (runMs - r0) / steps;
    const s1 = await streams(sched, 1, 32, decodeSteps);
    const stepMin = Math.min(...m.stepMs);
    const singleMin = Math.min(...s1.stepMs);
    multi.push({
      streams: n,
      aggregateDecodeTokPerS: m.aggregateDecodeTokPerS,
      windowSeconds: m.windowSeconds,
      singleRightAfterTokPerS: s1.perStreamDecodeTokPerS[0]!,
      ratioToSingle: m.aggregateDecodeTokPerS / s1.perStreamDecodeTokPerS[0]!,
      // Best-case step times (least disturbed by other load): n tokens per step vs 1.
      stepMsMin: stepMin,
      singleStepMsMin: singleMin,
      aggregateTokPerSFromMinStep: (n * 1000) / stepMin,
      ratioToSingleFromMinStep: (n * singleMin) / stepMin,
      // Mean over the run's decode steps (prefill chunks included): whole scheduler step vs session.run.
      meanStepMs: stepMs,
      meanOnnxRunMs: onnxMs,
    });
  }
  await sched.close();
  log("json_object constraint…");
  const jsonConstraint = await jsonConstraintCost(dir, manifest);
  // Best single-stream step over every single-stream run (the reps and the runs between the batches).
  const singleMsMin = Math.min(...singles.flatMap((x) => x.stepMs), ...multi.map((m) => m.singleStepMsMin));
  const bare = median(bareRuns.map((b) => b.decodeTokPerS));
  const singleDecode = median(singles.map((x) => x.perStreamDecodeTokPerS[0]!));
  const ttft = median(singles.map((x) => x.ttftSeconds));
  const eight = multi.find((m) => m.streams === 8)!;
  const result = {
    machine: machine(),
    versions: { node: process.version, onnxruntime: ort.env.versions?.common },
    model,
    bandwidth: { copyBytesPerSecond: bandwidth, weightBytesPerToken: bytesPerToken, boundTokPerS: bandwidth / bytesPerToken },
    bareLoop: { runs: bareRuns, decodeTokPerSMedian: bare, prefillTokPerSMedian: median(bareRuns.map((b) => b.prefillTokPerS)), batches: bareBatches, batch8VsBatch1: bareBatches[1]!.decodeTokPerS / bareBatches[0]!.decodeTokPerS },
    dsr: {
      single: { runs: singles.map((x) => ({ ttftSeconds: x.ttftSeconds, decodeTokPerS: x.perStreamDecodeTokPerS[0] })), ttft128Seconds: ttft, prefillTokPerS: 128 / ttft, decodeTokPerS: singleDecode },
      concurrent: multi,
    },
    jsonConstraint,
    bestCase: {
      note: "minimum step times over all repetitions: the machine is shared, the least-disturbed step is the closest to an idle machine",
      bareDecodeMsMin: Math.min(...bareRuns.map((b) => b.decodeMsMin)),
      dsrDecodeMsMin: singleMsMin,
      ttft128SecondsMin: Math.min(...singles.map((x) => x.ttftSeconds)),
      singleVsBareLoop: Math.min(...bareRuns.map((b) => b.decodeMsMin)) / singleMsMin,
      dsrSingleDecodeTokPerS: 1000 / singleMsMin,
      aggregateDecodeTokPerS: Object.fromEntries(multi.map((m) => [m.streams, m.aggregateTokPerSFromMinStep])),
      streamsVsSingle: Object.fromEntries(multi.map((m) => [m.streams, (m.streams * singleMsMin) / m.stepMsMin])),
      singleVsBandwidthBound: 1000 / singleMsMin / (bandwidth / bytesPerToken),
    },
    ratios: {
      singleVsBareLoop: singleDecode / bare,
      perRepSingleVsBare: singles.map((x, i) => x.perStreamDecodeTokPerS[0]! / bareRuns[i]!.decodeTokPerS),
      eightStreamsVsSingle: eight.ratioToSingle,
      singleVsBandwidthBound: singleDecode / (bandwidth / bytesPerToken),
      bareVsBandwidthBound: bare / (bandwidth / bytesPerToken),
    },
    targets: {
      medians: { singleAtLeast90PctOfBare: singleDecode >= 0.9 * bare, eightStreamsAtLeast3xSingle: eight.ratioToSingle >= 3, ttft128Under1_5s: ttft < 1.5 },
      bestCase: {
        singleAtLeast90PctOfBare: Math.min(...bareRuns.map((b) => b.decodeMsMin)) / singleMsMin >= 0.9,
        eightStreamsAtLeast3xSingle: (8 * singleMsMin) / eight.stepMsMin >= 3,
        ttft128Under1_5s: Math.min(...singles.map((x) => x.ttftSeconds)) < 1.5,
      },
    },
  };
  process.stdout.write(JSON.stringify(result, null, 2) + "\n");
}

try {
  await main();
} finally {
  if (!args.includes("--keep")) rmSync(root, { recursive: true, force: true });
}
