/**
 * Checkpoint fixtures generated in code: tiny Qwen2, Llama and DeepSeek-V3-FP8 checkpoints (real
 * safetensors with seeded data, index, config, tokenizer files), corrupt variants of each (every
 * integrity finding inspect reports), and the 163-shard R1-shaped repo whose headers are real (R1
 * names, shapes, dtypes from the arch registry) but whose tensor bytes are never materialised:
 * lazy content for the loopback hub, sparse files on disk.
 */
import { appendFile, mkdir, open, rm, truncate, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseModelConfig, resolveArch, type ExpectedTensor } from "../../src/engine/arch/index.js";
import { encodeFromF32 } from "../../src/engine/tensors/codecs.js";
import { tensorByteSize, type Dtype } from "../../src/engine/tensors/dtypes.js";
import { encodeHeader } from "../../src/engine/tensors/safetensors.js";
import { SafetensorsWriter } from "../../src/engine/tensors/write.js";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";

export type TinyKind = "qwen2" | "llama" | "deepseek-v3-fp8";
export const TINY_KINDS: TinyKind[] = ["qwen2", "llama", "deepseek-v3-fp8"];

/** Seeded PRNG for fixtures: the engine's own mulberry32, so failures reproduce. */
export const mulberry32 = seededRandom;

export const R1_CONFIG = {
  architectures: ["DeepseekV3ForCausalLM"], model_type: "deepseek_v3", vocab_size: 129280, hidden_size: 7168, intermediate_size: 18432,
  moe_intermediate_size: 2048, num_hidden_layers: 61, num_attention_heads: 128, num_key_value_heads: 128, n_routed_experts: 256,
  n_shared_experts: 1, num_experts_per_tok: 8, n_group: 8, topk_group: 4, routed_scaling_factor: 2.5, norm_topk_prob: true,
  scoring_func: "sigmoid", topk_method: "noaux_tc", first_k_dense_replace: 3, moe_layer_freq: 1, q_lora_rank: 1536, kv_lora_rank: 512,
  qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128, num_nextn_predict_layers: 1, max_position_embeddings: 163840,
  rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false, torch_dtype: "bfloat16", bos_token_id: 0, eos_token_id: 1,
  rope_scaling: { type: "yarn", factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 1 },
  quantization_config: { activation_scheme: "dynamic", fmt: "e4m3", quant_method: "fp8", weight_block_size: [128, 128] },
};

/** Tiny configs; the DeepSeek one has dims that are not multiples of 128 so scales have edge blocks. */
export function tinyConfig(kind: TinyKind): Record<string, unknown> {
  if (kind === "deepseek-v3-fp8") {
    return {
      ...R1_CONFIG, vocab_size: 300, hidden_size: 160, intermediate_size: 192, moe_intermediate_size: 48, num_hidden_layers: 3,
      num_attention_heads: 2, num_key_value_heads: 2, n_routed_experts: 4, num_experts_per_tok: 2, n_group: 1, topk_group: 1,
      first_k_dense_replace: 1, q_lora_rank: 96, kv_lora_rank: 64, qk_nope_head_dim: 32, qk_rope_head_dim: 16, v_head_dim: 32,
      max_position_embeddings: 4096, rope_scaling: undefined,
    };
  }
  const base = { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 256, max_position_embeddings: 2048, rms_norm_eps: 1e-6, hidden_act: "silu", bos_token_id: 1, eos_token_id: 2 };
  return kind === "qwen2"
    ? { ...base, architectures: ["Qwen2ForCausalLM"], model_type: "qwen2", rope_theta: 1000000, torch_dtype: "bfloat16", tie_word_embeddings: false }
    : { ...base, architectures: ["LlamaForCausalLM"], model_type: "llama", rope_parameters: { rope_theta: 500000, rope_type: "default" }, dtype: "bfloat16", tie_word_embeddings: true };
}

export function expectedFor(config: Record<string, unknown>): ExpectedTensor[] {
  const cfg = parseModelConfig(config);
  return resolveArch(cfg).expectedTensors(cfg);
}

/** Seeded, valid data: BF16/F32 small normals, FP8 codes that are never NaN, positive F32 scales. */
function tensorData(t: ExpectedTensor, rnd: () => number): Uint8Array {
  const size = tensorByteSize(t.dtype, t.shape)!;
  const out = new Uint8Array(size);
  if (t.dtype === "F8_E4M3") {
    for (let i = 0; i < size; i++) out[i] = Math.floor(rnd() * 0x7f) | (rnd() < 0.5 ? 0x80 : 0); // 0x7f/0xff are NaN
    return out;
  }
  const n = size / (t.dtype === "F32" ? 4 : 2);
  const f = Float32Array.from({ length: n }, () => (t.role === "quant_aux" ? 1e-3 + rnd() * 1e-2 : t.role === "norm" ? 1 : (rnd() - 0.5) * 0.1));
  encodeFromF32(t.dtype as "F32" | "BF16", f, out);
  return out;
}

export interface RawEntry {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

/** Writes a safetensors file from explicit header entries (any offsets, even invalid ones) and data. */
export async function writeRaw(path: string, entries: RawEntry[], data: Uint8Array, metadata: Record<string, string> = { format: "pt" }): Promise<void> {
  const header = encodeHeader(entries, metadata);
  const fh = await open(path, "w");
  try {
    await fh.write(header, 0, header.byteLength, 0);
    if (data.byteLength) await fh.write(data, 0, data.byteLength, header.byteLength);
  } finally {
    await fh.close();
  }
}

export interface WrittenShard {
  file: string;
  entries: RawEntry[];
  data: Uint8Array;
}

export interface TinyCheckpoint {
  dir: string;
  kind: TinyKind;
  config: Record<string, unknown>;
  shards: WrittenShard[];
  index: { metadata: { total_size: number }; weight_map: Record<string, string> } | undefined;
  writeIndex(): Promise<void>;
  rewrite(shard: WrittenShard): Promise<void>;
}

const TEMPLATE = "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}";

/** Writes a tiny checkpoint: `shards` ≥ 2 adds model.safetensors.index.json. */
export async function writeTinyCheckpoint(dir: string, kind: TinyKind, opts: { shards?: number; seed?: number } = {}): Promise<TinyCheckpoint> {
  const nShards = opts.shards ?? (kind === "deepseek-v3-fp8" ? 3 : 2);
  const config = tinyConfig(kind);
  const rnd = mulberry32(opts.seed ?? 1234);
  const tensors = expectedFor(config);
  await mkdir(dir, { recursive: true });
  const per = Math.ceil(tensors.length / nShards);
  const shards: WrittenShard[] = [];
  for (let s = 0; s < nShards; s++) {
    const part = tensors.slice(s * per, (s + 1) * per);
    const file = nShards === 1 ? "model.safetensors" : `model-${String(s + 1).padStart(5, "0")}-of-${String(nShards).padStart(5, "0")}.safetensors`;
    const { placed } = SafetensorsWriter.layout(part.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })));
    const byName = new Map(part.map((t) => [t.name, t]));
    const data = new Uint8Array(placed.at(-1)?.end ?? 0);
    for (const p of placed) data.set(tensorData(byName.get(p.name)!, rnd), p.begin);
    shards.push({ file, entries: placed.map(({ name, dtype, shape, begin, end }) => ({ name, dtype, shape, begin, end })), data });
  }
  const ck: TinyCheckpoint = {
    dir,
    kind,
    config,
    shards,
    index:
      nShards > 1
        ? { metadata: { total_size: shards.reduce((a, s) => a + s.data.byteLength, 0) }, weight_map: Object.fromEntries(shards.flatMap((s) => s.entries.map((e) => [e.name, s.file]))) }
        : undefined,
    writeIndex: () => writeFile(join(dir, "model.safetensors.index.json"), JSON.stringify(ck.index, null, 2)),
    rewrite: (s) => writeRaw(join(dir, s.file), s.entries, s.data),
  };
  for (const s of shards) await ck.rewrite(s);
  if (ck.index) await ck.writeIndex();
  await writeFile(join(dir, "config.json"), JSON.stringify(config, null, 2));
  await writeFile(join(dir, "generation_config.json"), JSON.stringify({ bos_token_id: 1, eos_token_id: 2, do_sample: true, temperature: 0.6, top_p: 0.95 }));
  await writeFile(join(dir, "tokenizer_config.json"), JSON.stringify({ bos_token: "<｜begin▁of▁sentence｜>", eos_token: { content: "<｜end▁of▁sentence｜>" }, model_max_length: 16384, chat_template: TEMPLATE }));
  await writeFile(join(dir, "tokenizer.json"), JSON.stringify({ version: "1.0", model: { type: "BPE", vocab: {}, merges: [] } }));
  return ck;
}

/** A corrupt variant: what it breaks and the finding inspect must report (code, file, tensor). */
export interface Corruption {
  id: string;
  kinds: TinyKind[];
  code: string;
  apply(ck: TinyCheckpoint): Promise<{ file?: string; tensor?: string }>;
}

const ALL = TINY_KINDS;
const drop = (s: WrittenShard, name: string): RawEntry => {
  const i = s.entries.findIndex((e) => e.name === name);
  const [e] = s.entries.splice(i, 1);
  // Close the gap so the shard stays internally valid: only the cross-file check should fire.
  const size = e.end - e.begin;
  const data = new Uint8Array(s.data.byteLength - size);
  data.set(s.data.subarray(0, e.begin), 0);
  data.set(s.data.subarray(e.end), e.begin);
  s.data = data;
  for (const x of s.entries) if (x.begin >= e.end) (x.begin -= size), (x.end -= size);
  return e;
};
const firstNamed = (s: WrittenShard, re: RegExp) => s.entries.find((e) => re.test(e.name))!;

export const CORRUPTIONS: Corruption[] = [
  { id: "missing-shard", kinds: ALL, code: "DSR_SHARD_MISSING", apply: async (ck) => {
      const s = ck.shards[1];
      await rm(join(ck.dir, s.file));
      return { file: s.file, tensor: Object.keys(ck.index!.weight_map).find((k) => ck.index!.weight_map[k] === s.file) };
    } },
  { id: "truncated-shard", kinds: ALL, code: "DSR_ST_INCOMPLETE_BUFFER", apply: async (ck) => {
      const s = ck.shards[0];
      await truncate(join(ck.dir, s.file), encodeHeader(s.entries, { format: "pt" }).byteLength + s.data.byteLength - 7);
      return { file: s.file, tensor: [...s.entries].sort((a, b) => b.end - a.end)[0].name };
    } },
  { id: "trailing-bytes", kinds: ["qwen2"], code: "DSR_ST_INCOMPLETE_BUFFER", apply: async (ck) => {
      await appendFile(join(ck.dir, ck.shards[1].file), new Uint8Array(16));
      return { file: ck.shards[1].file };
    } },
  { id: "overlapping-offsets", kinds: ALL, code: "DSR_ST_INVALID_OFFSET", apply: async (ck) => {
      const s = ck.shards[0];
      const [a, b] = [...s.entries].sort((x, y) => x.begin - y.begin);
      const size = b.end - b.begin;
      b.begin = a.end - 2; // starts inside its predecessor
      b.end = b.begin + size;
      await ck.rewrite(s);
      return { file: s.file, tensor: b.name };
    } },
  { id: "offset-out-of-range", kinds: ALL, code: "DSR_ST_INVALID_OFFSET", apply: async (ck) => {
      const s = ck.shards[1];
      const last = [...s.entries].sort((x, y) => y.end - x.end)[0];
      const size = last.end - last.begin;
      last.begin = s.data.byteLength + 4096; // points past the end of the data
      last.end = last.begin + size;
      await ck.rewrite(s);
      return { file: s.file, tensor: last.name };
    } },
  { id: "byte-size-mismatch", kinds: ALL, code: "DSR_ST_TENSOR_INVALID_INFO", apply: async (ck) => {
      const s = ck.shards[0];
      const e = firstNamed(s, /_proj\.weight$/);
      e.shape = [e.shape[0] + 1, e.shape[1]];
      await ck.rewrite(s);
      return { file: s.file, tensor: e.name };
    } },
  { id: "header-not-json", kinds: ["qwen2", "deepseek-v3-fp8"], code: "DSR_ST_INVALID_HEADER", apply: async (ck) => {
      const s = ck.shards[1];
      const fh = await open(join(ck.dir, s.file), "r+");
      await fh.write(Buffer.from("]]]]"), 0, 4, 40);
      await fh.close();
      return { file: s.file };
    } },
  { id: "index-phantom-tensor", kinds: ALL, code: "DSR_INDEX_TENSOR_ABSENT", apply: async (ck) => {
      const file = ck.shards[0].file;
      ck.index!.weight_map["model.layers.0.mlp.phantom_proj.weight"] = file;
      await ck.writeIndex();
      return { file, tensor: "model.layers.0.mlp.phantom_proj.weight" };
    } },
  { id: "tensor-not-in-index", kinds: ALL, code: "DSR_TENSOR_NOT_IN_INDEX", apply: async (ck) => {
      const e = ck.shards[1].entries[0];
      delete ck.index!.weight_map[e.name];
      await ck.writeIndex();
      return { file: ck.shards[1].file, tensor: e.name };
    } },
  { id: "duplicate-across-shards", kinds: ALL, code: "DSR_TENSOR_DUPLICATE", apply: async (ck) => {
      const [a, b] = ck.shards;
      const e = firstNamed(a, /norm\.weight$/);
      const bytes = a.data.subarray(e.begin, e.end);
      const data = new Uint8Array(b.data.byteLength + bytes.byteLength);
      data.set(b.data, 0);
      data.set(bytes, b.data.byteLength);
      b.entries.push({ ...e, shape: [...e.shape], begin: b.data.byteLength, end: data.byteLength });
      b.data = data;
      await ck.rewrite(b);
      return { file: b.file, tensor: e.name };
    } },
  { id: "wrong-total-size", kinds: ALL, code: "DSR_INDEX_TOTAL_SIZE", apply: async (ck) => {
      ck.index!.metadata.total_size += 1000;
      await ck.writeIndex();
      return { file: "model.safetensors.index.json" };
    } },
  { id: "missing-expected-tensor", kinds: ALL, code: "DSR_TENSOR_MISSING", apply: async (ck) => {
      const s = ck.shards[0];
      const e = drop(s, firstNamed(s, /\.self_attn\.o_proj\.weight$/).name);
      if (ck.kind === "deepseek-v3-fp8") drop(s, e.name + "_scale_inv");
      for (const n of [e.name, e.name + "_scale_inv"]) delete ck.index!.weight_map[n];
      ck.index!.metadata.total_size = ck.shards.reduce((a, x) => a + x.data.byteLength, 0);
      await ck.rewrite(s);
      await ck.writeIndex();
      return { tensor: e.name };
    } },
  { id: "wrong-shape", kinds: ALL, code: "DSR_TENSOR_SHAPE", apply: async (ck) => {
      const s = ck.shards[0];
      const e = firstNamed(s, /\.mlp\.(down_proj|experts\.0\.down_proj)\.weight$/);
      e.shape = [e.shape[1], e.shape[0]]; // same bytes, transposed
      await ck.rewrite(s);
      return { file: s.file, tensor: e.name };
    } },
  { id: "fp8-scale-wrong-shape", kinds: ["deepseek-v3-fp8"], code: "DSR_FP8_SCALE_SHAPE", apply: async (ck) => {
      const s = ck.shards.find((x) => x.entries.some((e) => e.name.endsWith("kv_a_proj_with_mqa.weight_scale_inv")))!;
      const e = firstNamed(s, /kv_a_proj_with_mqa\.weight_scale_inv$/);
      e.shape = [e.shape[1], e.shape[0]];
      await ck.rewrite(s);
      return { file: s.file, tensor: e.name };
    } },
  { id: "fp8-scale-missing", kinds: ["deepseek-v3-fp8"], code: "DSR_FP8_SCALE_MISSING", apply: async (ck) => {
      const s = ck.shards.find((x) => x.entries.some((e) => /experts\.1\.up_proj\.weight_scale_inv$/.test(e.name)))!;
      const e = drop(s, firstNamed(s, /experts\.1\.up_proj\.weight_scale_inv$/).name);
      delete ck.index!.weight_map[e.name];
      ck.index!.metadata.total_size = ck.shards.reduce((a, x) => a + x.data.byteLength, 0);
      await ck.rewrite(s);
      await ck.writeIndex();
      const w = e.name.slice(0, -"_scale_inv".length);
      return { file: ck.index!.weight_map[w], tensor: w };
    } },
];

// ---- the R1-shaped repo ---------------------------------------------------------------------------

export interface LazyFile {
  path: string;
  size: number;
  lfs: boolean;
  /** Bytes [start, end); tensor data reads as zeros and is counted in `dataReads`. */
  read(start: number, end: number): Uint8Array;
}

export interface ShapedRepo {
  files: LazyFile[];
  shards: { file: string; header: Uint8Array; size: number }[];
  /** Σ (8 + N) over shards. */
  headerBytes: number;
  tensorCount: number;
  tensorBytes: number;
  /** Reads that touched tensor data (must stay 0 for header-only inspect). */
  dataReads: { count: number; bytes: number };
}

const text = (path: string, body: string): LazyFile => {
  const b = Buffer.from(body);
  return { path, size: b.byteLength, lfs: false, read: (s, e) => b.subarray(s, e) };
};

let r1Cache: ShapedRepo | undefined;

/**
 * 163 shards named like R1's (model-00001-of-000163.safetensors), tensors from the arch registry
 * with R1's config, packed in layer order into shards of ≤ 4.24 GB (the MTP layer lands in the last
 * ones), each header laid out like the reference writer's. Built once per process (~1 s).
 */
export function r1ShapedRepo(): ShapedRepo {
  if (r1Cache) return r1Cache;
  const tensors = expectedFor(R1_CONFIG);
  const N = 163;
  const sizes = tensors.map((t) => tensorByteSize(t.dtype, t.shape)!);
  const total = sizes.reduce((a, b) => a + b, 0);
  // Greedy fill like huggingface_hub's splitter, with the shard limit chosen so that exactly 163
  // shards of ≤ 4.24 GB come out and the last one holds the remainder (2.7 GB).
  const limit = total / 162.2;
  const groups: ExpectedTensor[][] = [[]];
  let fill = 0;
  tensors.forEach((t, i) => {
    if (fill + sizes[i] > limit && groups.length < N) {
      groups.push([]);
      fill = 0;
    }
    groups[groups.length - 1].push(t);
    fill += sizes[i];
  });
  const dataReads = { count: 0, bytes: 0 };
  const weightMap: Record<string, string> = {};
  const shards = groups.map((g, i) => {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(N).padStart(6, "0")}.safetensors`;
    const { header, fileSize } = SafetensorsWriter.layout(g.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape })), { metadata: { format: "pt" } });
    for (const t of g) weightMap[t.name] = file;
    return { file, header, size: fileSize };
  });
  const shardFiles: LazyFile[] = shards.map((s) => ({
    path: s.file,
    size: s.size,
    lfs: true,
    read: (start, end) => {
      const out = new Uint8Array(end - start);
      if (start < s.header.byteLength) out.set(s.header.subarray(start, Math.min(end, s.header.byteLength)), 0);
      if (end > s.header.byteLength) {
        dataReads.count++;
        dataReads.bytes += end - Math.max(start, s.header.byteLength);
      }
      return out;
    },
  }));
  r1Cache = {
    files: [
      text("config.json", JSON.stringify(R1_CONFIG, null, 2)),
      text("generation_config.json", JSON.stringify({ bos_token_id: 0, eos_token_id: 1, do_sample: true, temperature: 0.6, top_p: 0.95 })),
      text("tokenizer_config.json", JSON.stringify({ bos_token: { content: "<｜begin▁of▁sentence｜>" }, eos_token: { content: "<｜end▁of▁sentence｜>" }, model_max_length: 131072, chat_template: TEMPLATE })),
      text("tokenizer.json", JSON.stringify({ version: "1.0", model: { type: "BPE", vocab: {}, merges: [] } })),
      text("model.safetensors.index.json", JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)),
      ...shardFiles,
    ],
    shards,
    headerBytes: shards.reduce((a, s) => a + s.header.byteLength, 0),
    tensorCount: tensors.length,
    tensorBytes: total,
    dataReads,
  };
  return r1Cache;
}

/** Lays a shaped repo out on disk: small files written, shards as sparse files (header + a hole). */
export async function writeSparseRepo(dir: string, repo: ShapedRepo): Promise<void> {
  await mkdir(dir, { recursive: true });
  for (const f of repo.files) if (!f.lfs) await writeFile(join(dir, f.path), f.read(0, f.size));
  for (const s of repo.shards) {
    await writeFile(join(dir, s.file), s.header);
    await truncate(join(dir, s.file), s.size);
  }
}
