/**
 * `dsr convert SRC --to T --out DIR`: flags → a target from the TARGETS table → engine → render.
 * Each `--to` value maps to one runner, so another output kind (e.g. `onnx`, built in
 * src/engine/onnx) is one more entry in the table plus its own module.
 */
import { existsSync } from "node:fs";
import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { usageError } from "../engine/errors.js";
import { convertCheckpoint, planCheckpointConversion, type ConvertSummary } from "../engine/transform/convert.js";
import type { TargetDtype } from "../engine/transform/kernels.js";
import { DEFAULT_KEEP_DTYPE } from "../engine/transform/plan.js";
import { parseByteSize, parseIntFlag } from "./flags.js";
import { Progress } from "../ui/progress.js";
import { formatBytes, formatDuration, renderTable } from "../ui/table.js";
import type { CommandContext } from "./context.js";
import { runOnnx } from "./convert-onnx.js";

export interface ConvertFlags {
  to: string;
  out: string;
  maxShardSize?: string;
  dropMtp?: boolean;
  threads?: string;
  keepDtype?: string[];
  castAll?: boolean;
  overwrite?: boolean;
  dryRun?: boolean;
  /** --to onnx only (src/commands/convert-onnx.ts). */
  weights?: string;
  blockSize?: string;
}

type TargetRunner = (src: string, flags: ConvertFlags, ctx: CommandContext) => Promise<void>;

/** `--to` values. Add a new output kind here. */
export const TARGETS: Record<string, { summary: string; run: TargetRunner }> = {
  bf16: { summary: "BF16 safetensors (DeepSeek FP8 blocks dequantised, floats cast)", run: (s, f, c) => runDtype("BF16", s, f, c) },
  fp16: { summary: "FP16 safetensors", run: (s, f, c) => runDtype("F16", s, f, c) },
  fp32: { summary: "FP32 safetensors", run: (s, f, c) => runDtype("F32", s, f, c) },
  onnx: { summary: "ONNX decoder for the embedded CPU engine (qwen2/llama; --weights, --block-size)", run: (s, f, c) => runOnnx(s, f, c) },
};

export function register(program: Command, ctx: () => CommandContext): void {
  program
    .command("convert")
    .summary("FP8→BF16 and dtype casts, re-sharding, ONNX for the embedded engine")
    .description(
      "Convert a local safetensors checkpoint: dequantise DeepSeek FP8 (e4m3, 128×128 weight_scale_inv blocks) or cast between " +
        "F32/F16/BF16, re-shard, drop the MTP layer. Streams with bounded memory on all cores; an interrupted run resumes.",
    )
    .argument("<src>", "checkpoint folder (config.json, *.safetensors, model.safetensors.index.json)")
    .requiredOption("--to <target>", `output kind: ${Object.keys(TARGETS).join(", ")}`)
    .requiredOption("--out <dir>", "output folder (new, empty, or an interrupted run of the same conversion)")
    .option("--max-shard-size <size>", "re-shard to at most this many tensor bytes per file, e.g. 5GB (decimal) or 4GiB")
    .option("--drop-mtp", "leave out DeepSeek's MTP layer (model.layers.N, N ≥ num_hidden_layers)")
    .option("--threads <n>", "worker threads (default: all cores)")
    .option("--keep-dtype <glob...>", `tensor-name globs copied unchanged (default: ${DEFAULT_KEEP_DTYPE.join(" ")})`)
    .option("--cast-all", "cast every float tensor, including the default --keep-dtype ones")
    .option("--overwrite", "replace the weights already in --out")
    .option("--dry-run", "validate the input and show the output shards and sizes; write nothing")
    .option("--weights <w>", "--to onnx: fp32, fp16, int8 or int4 (MatMulNBits, round-to-nearest; default int4)")
    .option("--block-size <n>", "--to onnx with int4/int8: quantization block along K: 32, 64 or 128 (default 32)")
    .addHelpText(
      "after",
      "\nExamples:\n  dsr convert ./DeepSeek-R1 --to bf16 --out ./DeepSeek-R1-BF16\n  dsr convert ./model --to fp16 --out ./model-fp16 --max-shard-size 2GB\n  dsr convert ./model --to bf16 --out ./merged --max-shard-size 100GB   # merge shards\n  dsr convert ./DeepSeek-R1-Distill-Qwen-1.5B --to onnx --weights int4 --out ./r1-1.5b-onnx",
    )
    .action(async (src: string, flags: ConvertFlags) => {
      const target = TARGETS[flags.to.toLowerCase()];
      if (!target) throw usageError(`--to ${flags.to}: unknown target`, `use one of ${Object.keys(TARGETS).join(", ")}`);
      await target.run(src, flags, ctx());
    });
}

function parseThreads(v: string | undefined): number {
  if (v === undefined) return availableParallelism();
  return parseIntFlag(v, "--threads", 1, 256);
}

/** The bundled worker sits next to the bundled CLI; when absent (running from source) work runs inline. */
function workerUrl(): URL | undefined {
  const url = new URL("./convert-worker.mjs", import.meta.url);
  return existsSync(fileURLToPath(url)) ? url : undefined;
}

async function runDtype(to: TargetDtype, src: string, flags: ConvertFlags, ctx: CommandContext): Promise<void> {
  const { out } = ctx;
  const threads = parseThreads(flags.threads);
  const keepDtype = flags.castAll ? [] : (flags.keepDtype ?? DEFAULT_KEEP_DTYPE);
  const options = {
    to,
    maxShardSize: flags.maxShardSize === undefined ? undefined : parseByteSize(flags.maxShardSize),
    dropMtp: !!flags.dropMtp,
    keepDtype,
  };
  if (flags.dryRun) return dryRun(src, options, ctx);
  const progress = new Progress(out, "bytes");
  let bar: ReturnType<Progress["bar"]> | undefined;
  let summary: ConvertSummary;
  try {
    summary = await convertCheckpoint({
      src,
      out: flags.out,
      options,
      threads,
      workerUrl: workerUrl(),
      overwrite: !!flags.overwrite,
      signal: ctx.signal,
      onPlan: (plan, reused) => {
        const c = plan.counts;
        progress.log(
          `${plan.shards.length} shard(s) → ${to}: ${c.dequantized} FP8 dequantised, ${c.cast} cast, ${c.copied} copied, ` +
            `${c.droppedScales} scales dropped${c.droppedMtp ? `, ${c.droppedMtp} MTP tensors dropped` : ""}` +
            (reused.length ? `; resuming, ${reused.length} shard(s) already done` : ""),
        );
        bar = progress.bar("convert", plan.shards.filter((s) => !reused.includes(s.file)).reduce((a, s) => a + s.inputBytes, 0));
      },
      onProgress: (done) => bar?.update(done),
      onShard: (file, reused) => out.debug(`${reused ? "kept" : "wrote"} ${file}`),
    });
  } finally {
    bar?.stop();
    progress.stop();
  }
  // Process-wide figures (worker threads included): what the bound in docs/convert.md is about.
  const usage = process.resourceUsage();
  out.result({ ...summary, peakRssBytes: usage.maxRSS * 1024, cpuSeconds: (usage.userCPUTime + usage.systemCPUTime) / 1e6 });
  const reusedCount = summary.shards.filter((s) => s.reused).length;
  if (reusedCount === summary.shards.length) {
    out.line(`nothing to do: ${summary.out} already holds this conversion (${summary.shards.length} shard(s), ${formatBytes(summary.outputBytes)})`);
    return;
  }
  out.line(
    `converted ${formatBytes(summary.processedBytes)} in ${formatDuration(summary.seconds)} (${summary.inputGBps.toFixed(2)} GB/s input, ${summary.threads} thread(s)) → ` +
      `${summary.out}: ${summary.shards.length} shard(s), ${formatBytes(summary.outputBytes)}${reusedCount ? `, ${reusedCount} kept from the interrupted run` : ""}`,
  );
}

async function dryRun(src: string, options: Parameters<typeof planCheckpointConversion>[1], ctx: CommandContext): Promise<void> {
  const plan = await planCheckpointConversion(src, options);
  const shards = plan.shards.map((s) => ({ file: s.file, bytes: s.fileSize, tensors: s.tensors.length }));
  const outputBytes = shards.reduce((a, s) => a + s.bytes, 0);
  ctx.out.result({ dryRun: true, to: options.to, sourceFormat: plan.sourceFormat, shards, index: plan.writeIndex ? "model.safetensors.index.json" : null, tensors: plan.counts, inputBytes: plan.inputBytes, totalSize: plan.totalSize, outputBytes });
  const c = plan.counts;
  ctx.out.line(`${src} → ${options.to} (${plan.sourceFormat}): ${c.dequantized} FP8 dequantised, ${c.cast} cast, ${c.copied} copied, ${c.droppedScales} scales and ${c.droppedMtp} MTP tensors dropped`);
  ctx.out.line(renderTable([{ header: "file" }, { header: "size", align: "right" }, { header: "tensors", align: "right" }], shards.map((s) => [s.file, formatBytes(s.bytes), String(s.tensors)])));
  ctx.out.line(`reads ${formatBytes(plan.inputBytes)} of tensors, writes ${formatBytes(outputBytes)} in ${shards.length} file(s)${plan.writeIndex ? " + index" : ""}`);
}
