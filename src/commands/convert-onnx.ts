/**
 * The `--to onnx` target of `dsr convert` (wired in convert.ts's TARGETS table): a safetensors
 * checkpoint → a dsr ONNX folder for the embedded engine (src/engine/onnx).
 */
import { usageError } from "../engine/errors.js";
import { BLOCK_SIZES, convertToOnnx, planOnnx } from "../engine/onnx/build.js";
import type { WeightFormat } from "../engine/onnx/layers.js";
import { Progress } from "../ui/progress.js";
import { formatBytes, formatDuration } from "../ui/table.js";
import type { CommandContext } from "./context.js";

export interface OnnxFlags {
  out: string;
  weights?: string;
  blockSize?: string;
  overwrite?: boolean;
  dryRun?: boolean;
  /** safetensors-only flags of `dsr convert`: refused here rather than silently ignored. */
  maxShardSize?: string;
  dropMtp?: boolean;
  keepDtype?: string[];
  castAll?: boolean;
}

export async function runOnnx(src: string, flags: OnnxFlags, ctx: CommandContext): Promise<void> {
  const { out, signal } = ctx;
  const weights = (flags.weights ?? "int4") as WeightFormat;
  if (!["fp32", "fp16", "int8", "int4"].includes(weights)) throw usageError(`--weights ${flags.weights}: expected fp32, fp16, int8 or int4`);
  const blockSize = flags.blockSize === undefined ? undefined : Number(flags.blockSize);
  if (blockSize !== undefined && !BLOCK_SIZES.includes(blockSize)) throw usageError(`--block-size ${flags.blockSize}: expected 32, 64 or 128`);
  if (blockSize !== undefined && weights !== "int4" && weights !== "int8") throw usageError(`--block-size applies to --weights int4 or int8, not ${weights}`);
  const foreign = [flags.maxShardSize && "--max-shard-size", flags.dropMtp && "--drop-mtp", flags.keepDtype && "--keep-dtype", flags.castAll && "--cast-all"].filter(Boolean);
  if (foreign.length) throw usageError(`${foreign.join(", ")}: not used by --to onnx`, "--to onnx takes --weights, --block-size, --overwrite and --dry-run");
  if (flags.dryRun) {
    const plan = await planOnnx(src, flags.out, { weights, blockSize });
    out.result({ dryRun: true, to: "onnx", out: flags.out, ...plan });
    out.line(
      plan.upToDate
        ? `${flags.out} already holds this conversion; nothing would be written`
        : `would build ${flags.out}: ${plan.modelType} decoder, ${plan.layers} layers, ${plan.weights}${plan.blockSize ? ` (block ${plan.blockSize})` : ""} weights, ` +
            `about ${formatBytes(plan.estimatedDataBytes)} of data from ${(plan.sourceElements / 1e6).toFixed(1)} M source parameters`,
    );
    return;
  }
  const progress = new Progress(out, "items");
  let bar: ReturnType<Progress["bar"]> | undefined;
  const t0 = performance.now();
  let result;
  try {
    result = await convertToOnnx(src, flags.out, {
      weights,
      blockSize,
      overwrite: !!flags.overwrite,
      signal,
      onProgress: (p) => (bar ??= progress.bar(`onnx ${weights} (weights)`, p.total)).update(p.done),
    });
  } finally {
    bar?.stop();
    progress.stop();
  }
  const seconds = (performance.now() - t0) / 1000;
  const m = result.manifest;
  out.result({ out: flags.out, built: result.built, seconds, ...m });
  if (!result.built) {
    out.line(`nothing to do: ${flags.out} already holds this conversion (${m.weights}, source unchanged)`);
    return;
  }
  out.line(
    `built ${flags.out}: ${m.modelType} decoder, ${m.io.numLayers} layers, ${m.weights}${m.blockSize ? ` (block ${m.blockSize})` : ""} weights, ` +
      `${formatBytes(m.dataBytes)} of data, context up to ${m.io.maxPositions} tokens, in ${formatDuration(seconds)}`,
  );
}
