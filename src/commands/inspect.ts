/**
 * `dsr inspect <dir | repo-id | hf:org/name | ms:org/name>`: flags → open the checkpoint (local dir
 * or remote repo, headers only) → build the report (engine) → render tables, or the report as JSON.
 * Exit 3 when any integrity finding is an error.
 */
import type { Command } from "commander";
import { openCheckpoint, openLocalSource, openRemoteSource, buildInspectReport, type InspectReport, type CheckpointSource } from "../engine/checkpoint/index.js";
import { integrityError, usageError, ExitCode } from "../engine/errors.js";
import { hubOptionsFromEnv, looksLikeRepoId, parseRepoSpec } from "../engine/hub/index.js";
import { checkKvCacheDtype, gpuProfile, GPU_PROFILES, type PlanOptions } from "../engine/plan/index.js";
import type { Output } from "../ui/output.js";
import { Progress } from "../ui/progress.js";
import { formatBytes, formatCount, formatGiB, renderTable } from "../ui/table.js";
import type { CommandContext } from "./context.js";
import { parseIntFlag } from "./flags.js";

interface InspectFlags {
  gpu: string;
  gpus?: string;
  tp?: string;
  pp?: string;
  gpuMemoryUtilization: string;
  maxModelLen?: string;
  concurrency?: string;
  kvCacheDtype: string;
  plan: boolean;
  parallel: string;
  token?: string;
}

const int = (flag: string, v: string | undefined): number | undefined => {
  if (v === undefined) return undefined;
  return parseIntFlag(v, flag, 1);
};

export function register(program: Command, ctx: () => CommandContext): void {
  program
    .command("inspect")
    .description("shards, dtypes, parameters, integrity and GPU memory fit of a local or remote checkpoint")
    .argument("<target>", "model directory, or a repo id: org/name, hf:org/name, ms:org/name (append @revision)")
    .option("--gpu <profile>", `GPU for the memory plan: ${GPU_PROFILES.map((g) => g.id).join(", ")}`, "h100-80g")
    .option("--gpus <n>", "GPUs to plan for (default: --tp × --pp)")
    .option("--tp <n>", "tensor-parallel size (default: --gpus / --pp)")
    .option("--pp <n>", "pipeline-parallel size", undefined)
    .option("--gpu-memory-utilization <f>", "fraction of each GPU vLLM may use", "0.9")
    .option("--max-model-len <n>", "context length to plan for (default: the model's max_position_embeddings)")
    .option("--concurrency <n>", "sequences of max-model-len tokens that must fit at once", undefined)
    .option("--kv-cache-dtype <dtype>", "auto (model dtype), fp8, fp8_e4m3, fp8_e5m2, bfloat16, float16", "auto")
    .option("--no-plan", "skip the memory plan")
    .option("--parallel <n>", "header reads in flight (remote)", "16")
    .option("--token <token>", "hub token (default: HF_TOKEN / MODELSCOPE_API_TOKEN from the environment)")
    .addHelpText("after", "\nExit codes: 0 ok, 2 bad flags, 3 integrity errors found (each names its file and tensor).")
    .action(async (target: string, flags: InspectFlags) => {
      const c = ctx();
      const planOpts = flags.plan ? planOptions(flags) : undefined;
      const parallel = int("--parallel", flags.parallel)!;
      const t0 = performance.now();
      const src = await openSource(target, flags, c);
      const progress = new Progress(c.out, "items");
      const bar = progress.bar("reading headers", 1);
      let ck;
      try {
        ck = await openCheckpoint(src, {
          concurrency: parallel,
          signal: c.signal,
          onShard: (done, total) => {
            bar.setTotal(total);
            bar.update(done);
          },
        });
      } finally {
        bar.stop();
        progress.stop();
      }
      const report = buildInspectReport(ck, planOpts, { wallMs: Math.round(performance.now() - t0), remote: src.stats?.() });
      if (c.out.json) c.out.result(report);
      else render(c.out, report);
      if (!report.ok) {
        const errors = report.findings.filter((f) => f.severity === "error");
        if (!c.out.json) {
          c.out.error(
            integrityError("DSR_INSPECT_INTEGRITY", `${errors.length} integrity error${errors.length === 1 ? "" : "s"} in ${report.source.location}: ${errors[0].message}`, {
              hint: "re-download the files named above (dsr pull resumes and verifies them)",
            }),
          );
        }
        process.exitCode = ExitCode.integrity;
      }
    });
}

function planOptions(f: InspectFlags): PlanOptions {
  const util = Number(f.gpuMemoryUtilization);
  if (!(util > 0 && util <= 1)) throw usageError(`--gpu-memory-utilization "${f.gpuMemoryUtilization}" is not a fraction in (0, 1]`, "vLLM's default is 0.9");
  checkKvCacheDtype(f.kvCacheDtype); // before any header is read: a remote inspect should fail fast
  return {
    gpu: gpuProfile(f.gpu),
    gpus: int("--gpus", f.gpus),
    tp: int("--tp", f.tp),
    pp: int("--pp", f.pp),
    util,
    maxModelLen: int("--max-model-len", f.maxModelLen),
    concurrency: int("--concurrency", f.concurrency),
    kvCacheDtype: f.kvCacheDtype,
  };
}

async function openSource(target: string, f: InspectFlags, c: CommandContext): Promise<CheckpointSource> {
  if (!looksLikeRepoId(target)) return openLocalSource(target);
  const ref = parseRepoSpec(target);
  c.out.debug(`inspecting ${ref.source}:${ref.repoId}${ref.revision ? "@" + ref.revision : ""} over HTTP (headers only)`);
  return openRemoteSource(ref, hubOptionsFromEnv(c.env, { token: f.token, signal: c.signal }));
}

// ---- text rendering -------------------------------------------------------------------------------

const num = (n: number) => n.toLocaleString("en-US");
const shape = (s: readonly number[] | undefined) => (s ? `[${s.join(", ")}]` : "—");

function render(out: Output, r: InspectReport): void {
  const m = r.model;
  const head = r.source.kind === "remote" ? `${r.source.location}@${r.source.revision} (commit ${r.source.commit?.slice(0, 12)})` : r.source.location;
  out.line(out.bold(head));
  if (m) {
    out.line(`  ${m.architectures.join(", ") || m.modelType} → ${m.arch}, ${m.dtype}, ${m.layers} layers, hidden ${m.hiddenSize}, vocab ${num(m.vocabSize)}, context ${num(m.maxPositionEmbeddings)}`);
    const attn = m.attention === "mla" ? `MLA, ${m.attentionHeads} heads` : `GQA, ${m.attentionHeads} heads / ${m.kvHeads} KV heads × ${m.headDim}`;
    out.line(`  attention: ${attn}${m.moe ? `; MoE: ${m.moe.routedExperts} routed + ${m.moe.sharedExperts} shared experts, ${m.moe.expertsPerToken} per token, first ${m.moe.denseLayers} layers dense${m.moe.mtpLayers ? `, ${m.moe.mtpLayers} MTP layer` : ""}` : ""}`);
  }
  if (r.params) {
    const p = r.params;
    const mtp = p.mtp ? ` (${formatCount(p.main)} main + ${formatCount(p.mtp)} MTP)` : "";
    out.line(`  parameters: ${formatCount(p.total)} total${mtp}, ${formatCount(p.activePerToken)} active per token, ${num(p.tensors)} tensors`);
  }
  const q = r.quantization;
  const qDesc = q.method === "none" ? "none" : `${q.method}${q.bits ? ` ${q.bits}-bit` : ""}${q.blockSize ? ` blocks ${q.blockSize.join("×")}` : ""}${q.groupSize ? ` group ${q.groupSize}` : ""}${q.format ? ` (${q.format})` : ""}, ${num(q.quantizedTensors)} quantised weights`;
  out.line(`  quantization: ${qDesc}${q.configSays && q.configSays !== q.method ? ` — config.json says ${q.configSays}` : ""}`);
  const e = r.embeddings;
  out.line(`  embeddings: ${shape(e.embedTokens?.shape)} ${e.embedTokens?.dtype ?? ""}; lm_head: ${e.tied ? "tied to embeddings" : `${shape(e.lmHead?.shape)} ${e.lmHead?.dtype ?? ""}`}`);
  const tk = r.tokenizer;
  out.line(`  tokenizer: ${tk.files.length ? tk.files.join(", ") : "none"}; chat template: ${tk.chatTemplate ? `${tk.chatTemplate.source}${tk.chatTemplate.opensThink ? " (opens <think>)" : ""}` : "none"}`);
  if (r.generation) out.line(`  generation defaults: ${Object.entries(r.generation).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")}`);

  const s = r.shards;
  out.line();
  out.line(out.bold(`Shards: ${s.count}`) + `, ${formatBytes(s.totalBytes)} (tensor data ${formatBytes(s.tensorBytes)}, headers ${formatBytes(s.headerBytes)}); min ${formatBytes(s.minBytes)}, median ${formatBytes(s.medianBytes)}, max ${formatBytes(s.maxBytes)}${s.indexFile ? `; index ${s.indexFile}` : ""}`);
  const showAll = out.verbose || s.count <= 12;
  const rows = (showAll ? s.files : s.files.filter((f) => f.status !== "ok" || s.outliers.some((o) => o.file === f.file))).map((f) => [
    f.file,
    f.bytes === null ? "—" : formatBytes(f.bytes),
    String(f.tensors),
    f.headerBytes === null ? "—" : formatBytes(f.headerBytes),
    f.status + (s.outliers.find((o) => o.file === f.file) ? ` (outlier: ${s.outliers.find((o) => o.file === f.file)!.reason})` : ""),
  ]);
  if (rows.length) out.line(renderTable([{ header: "file" }, { header: "size", align: "right" }, { header: "tensors", align: "right" }, { header: "header", align: "right" }, { header: "status" }], rows));
  if (!showAll) out.line(out.dim(rows.length ? `  (${s.count - rows.length} more shards look normal; --verbose lists all)` : `  (all ${s.count} shards read and look normal; --verbose lists them)`));

  out.line();
  out.line(renderTable([{ header: "dtype" }, { header: "tensors", align: "right" }, { header: "elements", align: "right" }, { header: "bytes", align: "right" }], r.dtypes.map((d) => [d.dtype, num(d.tensors), formatCount(d.params), formatBytes(d.bytes)])));

  if (r.layers.length) {
    out.line();
    out.line(
      renderTable(
        [{ header: "layers" }, { header: "kind" }, { header: "tensors/layer", align: "right" }, { header: "params/layer", align: "right" }, { header: "bytes/layer", align: "right" }, { header: "dtypes" }],
        r.layers.map((g) => [g.from === g.to ? String(g.from) : `${g.from}–${g.to} (${g.count}×)`, g.kind, num(g.tensorsPerLayer), formatCount(g.paramsPerLayer), formatBytes(g.bytesPerLayer), g.dtypes.join(" ")]),
      ),
    );
  }
  renderPlan(out, r);
  renderFindings(out, r);
}

function renderPlan(out: Output, r: InspectReport): void {
  const p = r.plan;
  out.line();
  if (!p) {
    out.line(out.dim(`Memory plan: skipped (${r.planSkipped})`));
    return;
  }
  const G = (b: number) => formatGiB(b);
  out.line(out.bold(`Memory plan (vLLM): ${p.gpus}× ${p.gpu.name} (${p.gpu.memoryGiB} GiB), TP ${p.tp} × PP ${p.pp}, utilization ${p.util}, max-model-len ${num(p.maxModelLen)}, KV ${p.kvCacheDtype}`));
  const g = p.perGpu;
  const parts = `weights ${G(g.weightsBytes)} + activations ${G(g.activationBytes)} + CUDA graphs ${G(g.cudaGraphBytes)} + other ${G(g.nonTorchBytes)}`;
  if (g.kvCacheBytes > 0) out.line(`  per GPU: budget ${G(g.budgetBytes)} = ${parts} + KV cache ${G(g.kvCacheBytes)}`);
  else out.line(`  per GPU: ${parts} = ${G(g.weightsBytes + g.activationBytes + g.cudaGraphBytes + g.nonTorchBytes)} > budget ${G(g.budgetBytes)}`);
  out.line(`  KV cache: ${num(p.kvBytesPerToken)} B/token → ${num(p.kvTokens)} tokens; max concurrency at ${num(p.maxModelLen)} tokens: ${p.maxConcurrency.toFixed(2)}×`);
  const verdict = p.verdict === "fits" ? out.paint("32", "FITS") : p.verdict === "fits-reduced" ? out.paint("33", "FITS ONLY REDUCED") : out.paint("31", "DOES NOT FIT");
  out.line(`  verdict: ${verdict}${p.reasons.length ? ` — ${p.reasons.join("; ")}` : ""}`);
  for (const n of p.notes) out.line(out.dim(`  note: ${n}`));
  if (p.suggestions.length) {
    out.line(
      renderTable(
        [{ header: "  suggestion" }, { header: "GPUs", align: "right" }, { header: "TP×PP" }, { header: "weights/GPU", align: "right" }, { header: "KV tokens", align: "right" }, { header: "max conc.", align: "right" }],
        p.suggestions.map((s) => [`  ${s.change}`, String(s.gpus), `${s.tp}×${s.pp}`, G(s.perGpu.weightsBytes), num(s.kvTokens), s.maxConcurrency.toFixed(2)]),
      ),
    );
  }
}

function renderFindings(out: Output, r: InspectReport): void {
  out.line();
  if (r.findings.length === 0) {
    out.line(out.paint("32", "Integrity: no findings"));
    return;
  }
  const errors = r.findings.filter((f) => f.severity === "error").length;
  out.line(out.bold(`Integrity: ${errors} error${errors === 1 ? "" : "s"}, ${r.findings.length - errors} warning${r.findings.length - errors === 1 ? "" : "s"}`));
  for (const f of r.findings) out.line(`  ${f.severity === "error" ? out.paint("31", "error") : out.paint("33", "warn ")} ${f.message}`);
}
