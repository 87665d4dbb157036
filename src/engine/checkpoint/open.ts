/**
 * openCheckpoint: listing → side files (config, generation config, tokenizer, index) → every shard
 * header (bounded parallelism, speculative ranges) → tensor table → integrity findings. Nothing but
 * headers is read, so a 689 GB repo costs a few MB. A corrupt shard header is a finding for that
 * shard; the rest of the checkpoint is still inspected.
 */
import { resolveArch } from "../arch/registry.js";
import { isDsrError } from "../errors.js";
import { readHeaders, type ShardJob } from "./headers.js";
import { INDEX_FILE, MAX_INDEX_BYTES, parseIndex } from "./index-file.js";
import { checkIntegrity } from "./integrity.js";
import { QUANT_SIDE_FILES, loadConfig, loadTokenizer, readJson } from "./side-files.js";
import type { Checkpoint, CheckpointSource, Finding, IndexInfo, ShardInfo, TensorEntry } from "./types.js";

export interface OpenOptions {
  /** Header reads in flight at once (default 16 remote, 8 local). */
  concurrency?: number;
  signal?: AbortSignal;
  /** Called after each shard header (progress bars). */
  onShard?: (done: number, total: number) => void;
}

export async function openCheckpoint(src: CheckpointSource, opts: OpenOptions = {}): Promise<Checkpoint> {
  const findings: Finding[] = [];
  const files = await src.listFiles();
  const have = new Map(files.map((f) => [f.path, f]));
  const json = (p: string, sev: "error" | "warning") => (have.has(p) ? readJson(src, p, findings, sev) : Promise.resolve(undefined));

  const quantSide = QUANT_SIDE_FILES.find((f) => have.has(f));
  const [configRaw, generationConfig, tokenizer, quantRaw, index] = await Promise.all([
    json("config.json", "error"),
    json("generation_config.json", "warning"),
    loadTokenizer(src, files, findings),
    quantSide ? json(quantSide, "warning") : Promise.resolve(undefined),
    have.has(INDEX_FILE) ? loadIndex(src, findings) : Promise.resolve(undefined),
  ]);
  if (!have.has("config.json")) {
    findings.push({ severity: "warning", code: "DSR_NO_CONFIG", file: "config.json", message: "config.json is missing: architecture, parameters per token and the memory plan are unknown" });
  }
  const config = loadConfig(configRaw, findings);

  // Which shards: the index's, else every .safetensors file.
  // Top level only: repos keep other formats in subfolders (onnx/, original/…) that loaders skip.
  const stFiles = files.filter((f) => f.path.endsWith(".safetensors") && !f.path.includes("/")).map((f) => f.path);
  const shardNames = index ? [...new Set(index.weightMap.values())].sort() : stFiles;
  if (index) {
    for (const f of stFiles) {
      if (!shardNames.includes(f)) {
        findings.push({ severity: "warning", code: "DSR_SHARD_UNREFERENCED", file: f, message: `${f}: not named in ${INDEX_FILE}; loaders ignore it` });
      }
    }
  }
  if (shardNames.length === 0) {
    const bins = files.filter((f) => /\.(bin|pt|pth|gguf)$/.test(f.path)).map((f) => f.path);
    findings.push({
      severity: "error",
      code: "DSR_NO_SAFETENSORS",
      message: bins.length ? `no .safetensors files (found ${bins.slice(0, 3).join(", ")}): dsr reads safetensors only` : "no .safetensors files in the checkpoint",
    });
  }

  const namesByShard = new Map<string, string[]>();
  if (index) for (const [t, f] of index.weightMap) (namesByShard.get(f) ?? namesByShard.set(f, []).get(f)!).push(t);

  const shards: ShardInfo[] = shardNames.map((file) => ({ file, size: have.get(file)?.size, tensors: 0, dataBytes: 0, status: have.has(file) ? "ok" : "missing" }));
  const jobs: ShardJob[] = shards
    .filter((s) => s.status === "ok")
    // Names size the speculative ranges; a local read costs the same whatever its length.
    .map((s) => ({ file: s.file, source: src.byteSource(s.file), names: src.kind === "remote" ? namesByShard.get(s.file) : undefined }));
  const concurrency = opts.concurrency ?? (src.kind === "remote" ? 16 : 8);
  let done = 0;
  const results = await readHeaders(jobs, {
    concurrency,
    signal: opts.signal,
    onShard: () => opts.onShard?.(++done, jobs.length),
  });

  const byFile = new Map(shards.map((s) => [s.file, s]));
  const tensors = new Map<string, TensorEntry>();
  const reads = { headerReads: 0, headerBytesRead: 0, headerBytes: 0, concurrency };
  for (const r of results) {
    const shard = byFile.get(r.file)!;
    if (!r.ok) {
      shard.status = "unreadable";
      const e = r.error;
      const d = isDsrError(e) ? e.details : undefined;
      const tensor = r.tensor ?? (d?.tensor as string | undefined);
      findings.push({ severity: "error", code: isDsrError(e) ? e.code : "DSR_ST_INVALID", file: r.file, tensor, message: r.tensor ? `${e.message}; first tensor cut short: "${r.tensor}"` : e.message });
      continue;
    }
    const { header } = r.read;
    reads.headerReads += r.read.reads;
    reads.headerBytesRead += r.read.bytesRead;
    reads.headerBytes += header.dataStart;
    shard.headerBytes = header.dataStart;
    shard.tensors = header.tensors.length;
    shard.dataBytes = header.dataSize;
    shard.metadata = header.metadata;
    for (const t of header.tensors) {
      const prev = tensors.get(t.name);
      if (prev) {
        findings.push({
          severity: "error",
          code: "DSR_TENSOR_DUPLICATE",
          file: r.file,
          tensor: t.name,
          message: `tensor "${t.name}" is in both ${prev.file} and ${r.file}`,
        });
        continue;
      }
      (t as TensorEntry).file = r.file; // headers are ours: annotate in place (92k tensors on R1)
      tensors.set(t.name, t as TensorEntry);
    }
  }
  for (const s of shards) {
    if (s.status === "missing") {
      const first = namesByShard.get(s.file)?.[0];
      findings.push({
        severity: "error",
        code: "DSR_SHARD_MISSING",
        file: s.file,
        tensor: first,
        message: `${s.file}: named in ${INDEX_FILE} (${namesByShard.get(s.file)?.length ?? 0} tensors, e.g. "${first}") but not in the checkpoint`,
      });
    }
  }

  const ckpt: Checkpoint = {
    source: { kind: src.kind, location: src.location, revision: src.revision, commit: src.commit },
    files,
    config,
    generationConfig,
    tokenizer,
    quantConfigFile: quantSide && quantRaw ? { file: quantSide, raw: quantRaw } : undefined,
    index,
    shards,
    tensors,
    findings,
    reads,
  };
  checkIntegrity(ckpt, resolveArch(config));
  return ckpt;
}

async function loadIndex(src: CheckpointSource, findings: Finding[]): Promise<IndexInfo | undefined> {
  try {
    return parseIndex(await src.readFile(INDEX_FILE, MAX_INDEX_BYTES));
  } catch (e) {
    if (!isDsrError(e) || e.exitCode !== 3) throw e;
    findings.push({ severity: "error", code: e.code, file: INDEX_FILE, tensor: e.details?.tensor as string | undefined, message: e.message });
    return undefined;
  }
}
