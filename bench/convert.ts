/**
 * Benchmark of `dsr convert --to bf16` against the disk's I/O floor, printed as one JSON document.
 *
 *   npx tsx bench/convert.ts [--dir DIR] [--gb 4] [--shard-gb 1] [--threads N] [--reps 2] [--cli dist/cli.mjs]
 *
 * 1. Generates a DeepSeek-R1 FP8-layout checkpoint of about --gb GB in DIR/src with the real R1
 *    tensor shapes (src/engine/arch's expectedTensors for the R1 config): dense layers 0–2, then
 *    MoE layer 3's attention, router, shared expert and as many routed experts as fit. FP8 bytes are
 *    random (≈0.8% are NaN codes; the kernel's speed does not depend on the values).
 * 2. I/O floor: for each shard `cat shard shard | dd of=… conv=fsync` — reads the input once from
 *    disk (the second read is from cache) and writes twice its size (= the BF16 output) with fsync.
 * 3. `dsr convert SRC --to bf16 --out OUT --json` as a child process (wall, CPU, peak RSS).
 * Steps 2 and 3 alternate --reps times and end with a floor run (floor, convert, …, floor), so drift
 * on a shared machine hits both; each convert run is compared with the floor runs around it.
 * Before every measurement: `sync`, the inputs are evicted from the page cache
 * (`dd iflag=nocache count=0`, i.e. posix_fadvise DONTNEED) and the residency is checked with
 * fincore; outputs are deleted. Everything generated is removed at the end.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { cpus, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { deepseekV3, parseModelConfig, type ExpectedTensor } from "../src/engine/arch/index.js";
import { SafetensorsWriter } from "../src/engine/tensors/write.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const DIR = resolve(opt("dir", ".bench-out/convert"));
const GB = Number(opt("gb", "4"));
const SHARD_GB = Number(opt("shard-gb", "1"));
const THREADS = opt("threads", String(cpus().length));
const CLI = resolve(opt("cli", "dist/cli.mjs"));
const REPS = Number(opt("reps", "2"));
const log = (s: string) => process.stderr.write(`[bench convert] ${s}\n`);

/** DeepSeek-R1's config.json fields that fix tensor shapes (facts/formats.md §4.2). */
const R1_CONFIG = {
  architectures: ["DeepseekV3ForCausalLM"],
  model_type: "deepseek_v3",
  vocab_size: 129280,
  hidden_size: 7168,
  intermediate_size: 18432,
  moe_intermediate_size: 2048,
  num_hidden_layers: 61,
  num_attention_heads: 128,
  num_key_value_heads: 128,
  n_routed_experts: 256,
  n_shared_experts: 1,
  num_experts_per_tok: 8,
  n_group: 8,
  topk_group: 4,
  routed_scaling_factor: 2.5,
  norm_topk_prob: true,
  scoring_func: "sigmoid",
  topk_method: "noaux_tc",
  first_k_dense_replace: 3,
  moe_layer_freq: 1,
  q_lora_rank: 1536,
  kv_lora_rank: 512,
  qk_nope_head_dim: 128,
  qk_rope_head_dim: 64,
  v_head_dim: 128,
  num_nextn_predict_layers: 1,
  max_position_embeddings: 163840,
  rms_norm_eps: 1e-6,
  rope_theta: 10000,
  tie_word_embeddings: false,
  torch_dtype: "bfloat16",
  bos_token_id: 0,
  eos_token_id: 1,
  hidden_act: "silu",
  quantization_config: { activation_scheme: "dynamic", fmt: "e4m3", quant_method: "fp8", weight_block_size: [128, 128] },
};

function bytesOf(t: ExpectedTensor): number {
  const n = t.shape.reduce((a, b) => a * b, 1);
  return n * (t.dtype === "F8_E4M3" ? 1 : t.dtype === "F32" ? 4 : 2);
}

/** The first layers' tensors in checkpoint order, cut at about `gb` GB, without embeddings and head. */
function pickTensors(gb: number): ExpectedTensor[] {
  const all = deepseekV3.expectedTensors(parseModelConfig(R1_CONFIG));
  const picked: ExpectedTensor[] = [];
  let total = 0;
  for (const t of all) {
    if (!t.name.startsWith("model.layers.")) continue;
    // Keep weight + scale together: stop before a weight whose pair would overflow the budget.
    if (t.dtype === "F8_E4M3" && total + bytesOf(t) > gb * 1e9) break;
    picked.push(t);
    total += bytesOf(t);
  }
  return picked;
}

async function generate(src: string, tensors: ExpectedTensor[]): Promise<string[]> {
  mkdirSync(src, { recursive: true });
  const groups: ExpectedTensor[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    if (size + bytesOf(t) > SHARD_GB * 1e9 && size > 0 && !t.name.endsWith("_scale_inv")) {
      groups.push([]);
      size = 0;
    }
    groups.at(-1)!.push(t);
    size += bytesOf(t);
  }
  const files: string[] = [];
  const weightMap: Record<string, string> = {};
  const chunk = Buffer.allocUnsafeSlow(64 << 20);
  for (let i = 0; i < groups.length; i++) {
    const file = `model-${String(i + 1).padStart(5, "0")}-of-${String(groups.length).padStart(5, "0")}.safetensors`;
    const w = await SafetensorsWriter.create(join(src, file), groups[i], { metadata: { format: "pt" } });
    for (const t of w.order) {
      const len = t.end - t.begin;
      for (let off = 0; off < len; off += chunk.byteLength) {
        const n = Math.min(chunk.byteLength, len - off);
        if (t.dtype === "F32") new Float32Array(chunk.buffer, 0, n / 4).fill(t.name.endsWith("_scale_inv") ? 2 ** -8 : 0);
        else randomFillSync(chunk, 0, n);
        await w.write(t.name, chunk.subarray(0, n));
      }
      weightMap[t.name] = file;
    }
    await w.finish();
    files.push(join(src, file));
  }
  const total = tensors.reduce((a, t) => a + bytesOf(t), 0);
  writeFileSync(join(src, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
  writeFileSync(join(src, "config.json"), JSON.stringify(R1_CONFIG, null, 2));
  return files;
}

/** sync, evict the inputs from the page cache, and report how much of them is still resident. */
function dropInputCache(files: string[]): number {
  execFileSync("sync");
  let resident = 0;
  for (const f of files) {
    execFileSync("dd", [`if=${f}`, "iflag=nocache", "count=0", "status=none"]);
    try {
      const out = execFileSync("fincore", ["--bytes", "--noheadings", "--output", "RES", f], { encoding: "utf8" });
      resident += Number(out.trim() || 0);
    } catch {
      resident = NaN; // no fincore on this machine: residency unknown (reported as null)
    }
  }
  return resident;
}

function time<T>(fn: () => T): { seconds: number; value: T } {
  const t0 = performance.now();
  const value = fn();
  return { seconds: (performance.now() - t0) / 1000, value };
}

function ioFloor(files: string[], outDir: string): { seconds: number; residentBefore: number } {
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(outDir, { recursive: true });
  const residentBefore = dropInputCache(files);
  const { seconds } = time(() => {
    for (const f of files) {
      const r = spawnSync("sh", ["-c", `cat "$1" "$1" | dd of="$2" bs=16M iflag=fullblock conv=fsync status=none`, "sh", f, join(outDir, f.split("/").at(-1)!)], { stdio: "inherit" });
      if (r.status !== 0) throw new Error(`floor copy of ${f} failed`);
    }
  });
  rmSync(outDir, { recursive: true, force: true });
  return { seconds, residentBefore };
}

async function main(): Promise<void> {
  rmSync(DIR, { recursive: true, force: true });
  const src = join(DIR, "src");
  const out = join(DIR, "out");
  try {
    const tensors = pickTensors(GB);
    log(`generating ${tensors.length} tensors (${(tensors.reduce((a, t) => a + bytesOf(t), 0) / 1e9).toFixed(2)} GB) in ${src}`);
    const files = await generate(src, tensors);
    const inputBytes = files.reduce((a, f) => a + statSync(f).size, 0);

    // floor, convert, floor, convert, …, floor: interleaved so drift on a shared machine hits both.
    const floors: { seconds: number; residentBefore: number }[] = [];
    const convs: { seconds: number; residentBefore: number; summary: Record<string, number> }[] = [];
    for (let rep = 0; rep < REPS; rep++) {
      log(`I/O floor (${rep + 1}/${REPS + 1})`);
      floors.push(ioFloor(files, join(DIR, "floor")));
      log(`  ${floors.at(-1)!.seconds.toFixed(1)} s`);
      log(`dsr convert --to bf16 --threads ${THREADS} (${rep + 1}/${REPS})`);
      const residentBefore = dropInputCache(files);
      const conv = time(() =>
        spawnSync(process.execPath, [CLI, "convert", src, "--to", "bf16", "--out", out, "--threads", THREADS, "--json"], { encoding: "utf8", maxBuffer: 64 << 20 }),
      );
      if (conv.value.status !== 0) throw new Error(`convert failed: ${conv.value.stderr || conv.value.stdout}`);
      convs.push({ seconds: conv.seconds, residentBefore, summary: JSON.parse(conv.value.stdout) });
      log(`  ${conv.seconds.toFixed(1)} s`);
      rmSync(out, { recursive: true, force: true });
    }
    log(`I/O floor (${REPS + 1}/${REPS + 1})`);
    floors.push(ioFloor(files, join(DIR, "floor")));
    log(`  ${floors.at(-1)!.seconds.toFixed(1)} s`);

    // Each convert run against the mean of the floor runs just before and after it.
    const ratios = convs.map((c, i) => c.seconds / ((floors[i].seconds + floors[i + 1].seconds) / 2));
    const median = (xs: number[]) => {
      const s = [...xs].sort((a, b) => a - b);
      return (s[Math.floor((s.length - 1) / 2)] + s[Math.ceil((s.length - 1) / 2)]) / 2;
    };
    const best = convs.reduce((a, c) => (c.seconds < a.seconds ? c : a));
    const conv = { seconds: median(convs.map((c) => c.seconds)) };
    const summary = best.summary;
    const residentBefore = best.residentBefore;
    const floor = median(floors.map((f) => f.seconds));
    const ratio = median(ratios);
    const cpuPerGB = summary.cpuSeconds / (inputBytes / 1e9);
    const R1_INPUT_GB = 689;
    const r1Scale = (R1_INPUT_GB * 1e9) / inputBytes;
    // 16-core NVMe server: I/O at assumed sequential rates (read and write sharing one drive, so
    // their times add), compute = this run's CPU-seconds per GB spread over 16 cores; the slower wins.
    const nvme = { readGBps: 3.0, writeGBps: 2.0, cores: 16 };
    const nvmeIo = R1_INPUT_GB / nvme.readGBps + (2 * R1_INPUT_GB) / nvme.writeGBps;
    const nvmeCpu = (cpuPerGB * R1_INPUT_GB) / nvme.cores;
    const result = {
      bench: "convert",
      machine: { cpus: cpus().length, model: cpus()[0]?.model, loadavg: loadavg() },
      checkpoint: { files: files.length, inputBytes, tensors: tensors.length, fp8Tensors: tensors.filter((t) => t.dtype === "F8_E4M3").length },
      convert: {
        threads: Number(THREADS),
        wallSeconds: convs.map((c) => c.seconds),
        medianWallSeconds: conv.seconds,
        inputGBps: inputBytes / 1e9 / conv.seconds,
        outputBytes: summary.outputBytes,
        peakRssBytes: Math.max(...convs.map((c) => c.summary.peakRssBytes)),
        cpuSeconds: summary.cpuSeconds,
        cpuSecondsPerInputGB: cpuPerGB,
        peakBufferBytes: summary.peakBufferBytes,
        inputResidentBeforeBytes: Number.isNaN(residentBefore) ? null : residentBefore,
      },
      ioFloor: {
        method: "per shard: cat shard shard | dd bs=16M conv=fsync (input read once from disk, 2x written + fsync)",
        seconds: floors.map((f) => f.seconds),
        medianSeconds: floor,
        inputResidentBeforeBytes: floors.map((f) => (Number.isNaN(f.residentBefore) ? null : f.residentBefore)),
      },
      ratioToFloor: { median: ratio, perRun: ratios },
      targets: { withinFloorX1_25: ratio <= 1.25, peakRssUnder1GB: summary.peakRssBytes < 1e9 },
      extrapolation: {
        r1InputGB: R1_INPUT_GB,
        thisMachineSeconds: conv.seconds * r1Scale,
        thisMachineFloorSeconds: floor * r1Scale,
        nvme16Core: { assumptions: nvme, ioSeconds: nvmeIo, cpuSeconds: nvmeCpu, seconds: Math.max(nvmeIo, nvmeCpu) },
      },
    };
    process.stdout.write(JSON.stringify(result, null, 2) + "\n");
  } finally {
    rmSync(DIR, { recursive: true, force: true });
  }
}

await main();
