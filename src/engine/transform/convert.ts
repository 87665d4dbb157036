/**
 * convertCheckpoint: SRC folder → OUT folder, streaming. Plan and validate everything first
 * (nothing in OUT is touched on a validation error), then write each output shard as
 * `<name>.partial` through a pool of workers doing positional reads and writes, fsync and rename it,
 * record it in the resume manifest, and write the index last.
 *
 * Memory bound: the main thread holds headers, the plan and one FP8 scale tensor at a time
 * (⌈R/128⌉·⌈C/128⌉·4 bytes); each worker holds its reusable buffers, at most
 * max(8 MiB copy chunk, 128·C·(1+w) for the widest FP8 weight, 1 Mi elements × (in+out+4) bytes)
 * in + out, w = output bytes per element. So peak ≈ Node's baseline + threads × ~20 MiB for R1,
 * whatever the tensor or checkpoint size (docs/convert.md; test/convert/memory.test.ts checks it).
 */
import { closeSync, fsync as fsyncCb, ftruncateSync, openSync, readSync, writeSync } from "node:fs";
import { copyFile, mkdir, readdir, rename, rm } from "node:fs/promises";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { integrityError, interruptedError, usageError } from "../errors.js";
import { FP8_BLOCK } from "./kernels.js";
import { MANIFEST_FILE, readManifest, shardLooksComplete, writeFileAtomic, writeManifest, type Manifest } from "./manifest.js";
import { planConversion, type ConvertOptions, type ConversionPlan, type PlannedShard, type PlannedTensor } from "./plan.js";
import { InlineExecutor, WorkerPool, type Executor } from "./pool.js";
import { INDEX_FILE, openSourceCheckpoint, type SourceTensor } from "./source.js";
import { ensureFreeSpace } from "./space.js";
import { CAST_CHUNK_ELEMENTS, COPY_CHUNK_BYTES, type Task } from "./tasks.js";

const fsync = promisify(fsyncCb);

export interface ConvertParams {
  src: string;
  out: string;
  options: ConvertOptions;
  /** Worker threads; 1 (or no workerUrl) runs tasks inline on the calling thread. */
  threads: number;
  /** The bundled worker entry (dist/convert-worker.mjs). */
  workerUrl?: URL;
  /** Replace whatever convert outputs OUT already holds from another conversion. */
  overwrite?: boolean;
  signal?: AbortSignal;
  onPlan?(plan: ConversionPlan, reused: string[]): void;
  onProgress?(doneBytes: number, totalBytes: number): void;
  onShard?(file: string, reused: boolean): void;
}

export interface ConvertSummary {
  src: string;
  out: string;
  to: string;
  sourceFormat: string;
  shards: { file: string; bytes: number; tensors: number; reused: boolean }[];
  index: string | null;
  tensors: ConversionPlan["counts"];
  copiedFiles: string[];
  inputBytes: number;
  /** Input bytes actually processed in this run (excludes reused shards). */
  processedBytes: number;
  totalSize: number;
  outputBytes: number;
  seconds: number;
  inputGBps: number;
  threads: number;
  /** Largest total of pipeline buffers held at once by the executor threads. */
  peakBufferBytes: number;
}

export async function convertCheckpoint(p: ConvertParams): Promise<ConvertSummary> {
  const started = performance.now();
  const srcDir = resolve(p.src);
  const outDir = resolve(p.out);
  if (srcDir === outDir) throw usageError(`--out ${p.out}: the output folder must differ from the input`, "pass a new folder for --out");

  const source = await openSourceCheckpoint(srcDir);
  const plan = planConversion(source, p.options);
  const manifest = await prepareOutDir(outDir, plan, p.overwrite ?? false);

  const reused: string[] = [];
  for (const s of plan.shards) {
    if (manifest.done[s.file]?.size === s.fileSize && (await shardLooksComplete(join(outDir, s.file), s.fileSize, s.header))) reused.push(s.file);
    else delete manifest.done[s.file];
  }
  const reusedNames = new Set(reused);
  await ensureFreeSpace(outDir, plan.shards.filter((s) => !reusedNames.has(s.file)).reduce((a, s) => a + s.fileSize, 0));
  p.onPlan?.(plan, reused);

  // Small files first (they are cheap and make a half-done folder self-describing); index last.
  const copiedFiles: string[] = [];
  for (const f of source.otherFiles) {
    await copyFile(join(srcDir, f), join(outDir, f + ".partial"));
    await rename(join(outDir, f + ".partial"), join(outDir, f));
    copiedFiles.push(f);
  }
  if (plan.config) await writeFileAtomic(join(outDir, "config.json"), JSON.stringify(plan.config, null, 2) + "\n");
  manifest.files = [...new Set([...manifest.files, ...plan.shards.map((s) => s.file), ...(plan.writeIndex ? [INDEX_FILE] : [])])];
  await writeManifest(outDir, manifest);

  const exec: Executor = p.threads > 1 && p.workerUrl ? new WorkerPool(p.workerUrl, p.threads) : new InlineExecutor();
  const reusedSet = new Set(reused);
  const total = plan.shards.filter((s) => !reusedSet.has(s.file)).reduce((a, s) => a + s.inputBytes, 0);
  const run = new ShardRun(exec, p, total);
  try {
    await run.all(plan.shards, reusedSet, outDir, manifest);
  } finally {
    run.closeInputs();
    await exec.close();
  }

  if (plan.writeIndex) {
    const weightMap: Record<string, string> = {};
    for (const s of plan.shards) for (const t of s.tensors) weightMap[t.name] = s.file;
    const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]]));
    await writeFileAtomic(join(outDir, INDEX_FILE), JSON.stringify({ metadata: { total_size: plan.totalSize }, weight_map: sorted }, null, 2) + "\n");
  }
  manifest.complete = true;
  await writeManifest(outDir, manifest);

  const seconds = (performance.now() - started) / 1000;
  return {
    src: srcDir,
    out: outDir,
    to: p.options.to,
    sourceFormat: plan.sourceFormat,
    shards: plan.shards.map((s) => ({ file: s.file, bytes: s.fileSize, tensors: s.tensors.length, reused: reusedSet.has(s.file) })),
    index: plan.writeIndex ? INDEX_FILE : null,
    tensors: plan.counts,
    copiedFiles,
    inputBytes: plan.inputBytes,
    processedBytes: total,
    totalSize: plan.totalSize,
    outputBytes: plan.shards.reduce((a, s) => a + s.fileSize, 0),
    seconds,
    inputGBps: total / 1e9 / Math.max(seconds, 1e-9),
    threads: exec.threads,
    peakBufferBytes: exec.peakBufferBytes(),
  };
}

/** What a conversion would write, validated like a real run, without touching any output. */
export async function planCheckpointConversion(src: string, options: ConvertOptions): Promise<ConversionPlan> {
  return planConversion(await openSourceCheckpoint(resolve(src)), options);
}

/**
 * OUT must be empty, or hold this same conversion (resume), or a previous dsr conversion (replaced).
 * Anything else is refused rather than mixed with our shards.
 */
async function prepareOutDir(outDir: string, plan: ConversionPlan, overwrite: boolean): Promise<Manifest> {
  await mkdir(outDir, { recursive: true });
  const old = await readManifest(outDir);
  if (old && old.fingerprint === plan.fingerprint) return { ...old, complete: false };
  const entries = await readdir(outDir);
  const ours = new Set([...(old?.files ?? []), MANIFEST_FILE]);
  const foreign = entries.filter((e) => !ours.has(e) && !e.endsWith(".partial"));
  if (!old && !overwrite && foreign.length > 0) {
    throw usageError(`--out ${outDir}: folder is not empty (${foreign.slice(0, 3).join(", ")}${foreign.length > 3 ? ", …" : ""})`, "pass an empty or new folder, or --overwrite to replace its weights");
  }
  // Another conversion's outputs (or, with --overwrite, any weights) are removed; other files stay.
  for (const e of entries) {
    if (ours.has(e) || e.endsWith(".partial") || (overwrite && (e.endsWith(".safetensors") || e === INDEX_FILE))) await rm(join(outDir, e), { force: true });
  }
  return { version: 1, fingerprint: plan.fingerprint, files: [], done: {}, complete: false };
}

/** Drives the executor over all shards: at most two shards open, a bounded number of tasks queued. */
class ShardRun {
  private inFds = new Map<string, number>();
  private done = 0;
  private inFlight = 0;
  private wake?: () => void;
  private manifestWrites: Promise<void> = Promise.resolve();
  private error?: unknown;
  private readonly depth: number;

  constructor(private exec: Executor, private p: ConvertParams, private total: number) {
    this.depth = exec.threads * 2 + 2;
  }

  async all(shards: PlannedShard[], reused: Set<string>, outDir: string, manifest: Manifest): Promise<void> {
    const finishing: Promise<void>[] = [];
    try {
      for (const s of shards) {
        if (reused.has(s.file)) {
          this.p.onShard?.(s.file, true);
          continue;
        }
        const { finished: fin } = await this.dispatchShard(s, outDir, manifest);
        fin.catch(() => {}); // awaited below; this only stops an early failure counting as unhandled
        finishing.push(fin);
        // The next shard is dispatched while this one drains and fsyncs, but no further ahead.
        if (finishing.length >= 2) await finishing.shift();
      }
      for (const f of finishing) await f;
    } finally {
      await Promise.allSettled(finishing);
    }
  }

  /** Queues every task of one shard; resolves once all are queued, with a promise for the finished shard. */
  private async dispatchShard(s: PlannedShard, outDir: string, manifest: Manifest): Promise<{ finished: Promise<void> }> {
    const path = join(outDir, s.file);
    const fd = openSync(path + ".partial", "w");
    const tasks: Promise<void>[] = [];
    try {
      writeSync(fd, s.header, 0, s.header.byteLength, 0);
      ftruncateSync(fd, s.fileSize);
      for (const t of s.tensors) {
        for (const task of this.tasksFor(t, s.header.byteLength, fd)) {
          await this.slot();
          tasks.push(this.dispatch(task));
        }
      }
    } catch (e) {
      await Promise.allSettled(tasks);
      closeSync(fd);
      throw e;
    }
    const finished = (async () => {
      try {
        await Promise.all(tasks);
        this.check();
        await fsync(fd);
      } finally {
        closeSync(fd);
      }
      // Recorded before the rename: a listed shard may be missing (killed in between) and is then
      // redone, but a shard file in place is always listed. Two shards may finish together, so
      // manifest writes go one after the other.
      manifest.done[s.file] = { size: s.fileSize };
      await (this.manifestWrites = this.manifestWrites.then(() => writeManifest(outDir, manifest)));
      await rename(path + ".partial", path);
      this.p.onShard?.(s.file, false);
    })();
    return { finished };
  }

  /** Waits for a free queue slot; throws when a task failed or the run was cancelled. */
  private async slot(): Promise<void> {
    this.check();
    while (this.inFlight >= this.depth) {
      await new Promise<void>((r) => (this.wake = r));
      this.check();
    }
    this.inFlight++;
  }

  private check(): void {
    if (this.error) throw this.error;
    if (this.p.signal?.aborted) throw interruptedError("convert");
  }

  /** Never rejects: the first failure is kept and surfaces at the next slot() or shard end. */
  private dispatch(task: Task): Promise<void> {
    return this.exec.run(task).then(
      (r) => {
        this.done += r.inBytes;
        this.p.onProgress?.(this.done, this.total);
      },
      (e) => {
        this.error ??= e;
      },
    ).finally(() => {
      this.inFlight--;
      this.wake?.();
      this.wake = undefined;
    });
  }

  private inFd(t: SourceTensor): number {
    let fd = this.inFds.get(t.shard.path);
    if (fd === undefined) this.inFds.set(t.shard.path, (fd = openSync(t.shard.path, "r")));
    return fd;
  }

  closeInputs(): void {
    for (const fd of this.inFds.values()) closeSync(fd);
    this.inFds.clear();
  }

  private *tasksFor(t: PlannedTensor, headerBytes: number, outFd: number): Generator<Task> {
    const src = t.src;
    const base = { tensor: t.name, file: src.shard.path, inFd: this.inFd(src), outFd };
    const outStart = headerBytes + t.begin;
    const a = t.action;
    if (a.kind === "copy") {
      const len = src.end - src.begin;
      for (let off = 0; off < len; off += COPY_CHUNK_BYTES) {
        yield { ...base, kind: "copy", inPos: src.pos + off, outPos: outStart + off, len: Math.min(COPY_CHUNK_BYTES, len - off) };
      }
    } else if (a.kind === "cast") {
      const n = src.shape.reduce((x, y) => x * y, 1);
      const win = (src.end - src.begin) / Math.max(n, 1);
      const wout = (t.end - t.begin) / Math.max(n, 1);
      for (let i = 0; i < n; i += CAST_CHUNK_ELEMENTS) {
        const m = Math.min(CAST_CHUNK_ELEMENTS, n - i);
        yield { ...base, kind: "cast", inPos: src.pos + i * win, outPos: outStart + i * wout, n: m, from: a.from, to: this.p.options.to };
      }
    } else {
      const [rows, cols] = src.shape;
      const scale = this.readScale(a.scale);
      const nbc = Math.ceil(cols / FP8_BLOCK);
      const w = (t.end - t.begin) / Math.max(rows * cols, 1);
      for (let r0 = 0, br = 0; r0 < rows; r0 += FP8_BLOCK, br++) {
        const m = Math.min(FP8_BLOCK, rows - r0);
        yield { ...base, kind: "dequant", inPos: src.pos + r0 * cols, outPos: outStart + r0 * cols * w, rows: m, cols, scaleRow: scale.slice(br * nbc, (br + 1) * nbc), to: this.p.options.to };
      }
    }
  }

  /** Scale tensors are tiny (R1: ≤ 32 KiB): read whole on the main thread. */
  private readScale(s: SourceTensor): Float32Array {
    const len = s.end - s.begin;
    const buf = Buffer.allocUnsafeSlow(len);
    const fd = this.inFd(s);
    let got = 0;
    while (got < len) {
      const n = readSync(fd, buf, got, len - got, s.pos + got);
      if (n === 0) {
        throw integrityError("DSR_ST_TRUNCATED", `${s.shard.path}: tensor "${s.name}" is cut short`, { hint: "the shard was truncated; re-download it", details: { file: s.shard.file, tensor: s.name } });
      }
      got += n;
    }
    return new Float32Array(buf.buffer, 0, len / 4);
  }
}
