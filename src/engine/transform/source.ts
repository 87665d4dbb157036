/**
 * The input side of convert: a local checkpoint folder's shards, their validated headers and one
 * table of tensors. Every shard header is read and checked (safetensors rules, including a data
 * buffer that must end exactly at the end of the file, which catches truncated shards) before any
 * output is written. The index, when present, must agree with the shards it names.
 */
import { readdir, readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import { integrityError, usageError } from "../errors.js";
import { readHeader } from "../tensors/read.js";
import type { SafetensorsHeader, TensorInfo } from "../tensors/safetensors.js";
import { FileByteSource } from "../tensors/source.js";

export const INDEX_FILE = "model.safetensors.index.json";

export interface SourceShard {
  file: string;
  path: string;
  size: number;
  mtimeMs: number;
  header: SafetensorsHeader;
}

export interface SourceTensor extends TensorInfo {
  shard: SourceShard;
  /** Absolute byte position of the tensor's data in its shard. */
  pos: number;
}

export interface SourceCheckpoint {
  dir: string;
  shards: SourceShard[];
  /** All tensors, in shard order then data order (the order a sequential reader meets them). */
  tensors: SourceTensor[];
  byName: Map<string, SourceTensor>;
  /** Parsed config.json, when the folder has one. */
  config: Record<string, unknown> | undefined;
  /** Top-level regular files other than weights, the index and config.json. */
  otherFiles: string[];
}

/** Files that are weights in another format: never copied as "small files". */
const WEIGHT_EXTENSIONS = [".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".onnx_data", ".h5", ".msgpack", ".partial"];

export async function openSourceCheckpoint(dir: string): Promise<SourceCheckpoint> {
  let entries;
  try {
    entries = await readdir(dir, { withFileTypes: true });
  } catch (e) {
    throw usageError(`${dir}: cannot read the checkpoint folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, "pass a local folder that holds *.safetensors files (dsr pull downloads one)");
  }
  // Hugging Face cache snapshots are folders of symlinks into blobs/: follow them.
  const fileNames: string[] = [];
  for (const e of entries) {
    if (e.isFile() || (e.isSymbolicLink() && (await stat(join(dir, e.name)).then((s) => s.isFile(), () => false)))) fileNames.push(e.name);
  }
  const names = new Set(fileNames);
  let shardFiles: string[];
  let weightMap: Record<string, string> | undefined;
  if (names.has(INDEX_FILE)) {
    weightMap = await readIndex(join(dir, INDEX_FILE));
    shardFiles = [...new Set(Object.values(weightMap))].sort();
    for (const f of shardFiles) {
      if (!names.has(f)) {
        throw integrityError("DSR_CONVERT_MISSING_SHARD", `${join(dir, f)}: shard named in ${INDEX_FILE} is missing`, {
          hint: "the download is incomplete; run dsr pull again",
          details: { file: f },
        });
      }
    }
  } else {
    shardFiles = [...names].filter((n) => n.endsWith(".safetensors")).sort();
  }
  if (shardFiles.length === 0) {
    throw usageError(`${dir}: no *.safetensors files`, "convert reads safetensors checkpoints; pass the model folder");
  }

  const shards: SourceShard[] = [];
  const tensors: SourceTensor[] = [];
  const byName = new Map<string, SourceTensor>();
  for (const file of shardFiles) {
    const path = join(dir, file);
    const src = new FileByteSource(path, path);
    let header: SafetensorsHeader;
    try {
      header = (await readHeader(src, { speculativeBytes: 1 << 20 })).header;
    } finally {
      await src.close();
    }
    const st = await stat(path);
    const shard: SourceShard = { file, path, size: st.size, mtimeMs: st.mtimeMs, header };
    shards.push(shard);
    for (const t of header.tensors) {
      const prev = byName.get(t.name);
      if (prev) {
        throw integrityError("DSR_CONVERT_DUPLICATE_TENSOR", `${path}: tensor "${t.name}" is also in ${prev.shard.file}`, {
          hint: "the checkpoint folder mixes two checkpoints; keep only the shards named in the index",
          details: { file, tensor: t.name },
        });
      }
      const st2: SourceTensor = { ...t, shard, pos: header.dataStart + t.begin };
      tensors.push(st2);
      byName.set(t.name, st2);
    }
  }
  if (weightMap) {
    for (const [name, file] of Object.entries(weightMap)) {
      const t = byName.get(name);
      if (!t || t.shard.file !== file) {
        throw integrityError("DSR_CONVERT_INDEX_MISMATCH", `${join(dir, file)}: ${INDEX_FILE} places tensor "${name}" here but the shard ${t ? `is ${t.shard.file}` : "does not have it"}`, {
          hint: "the index and the shards disagree; re-download the checkpoint",
          details: { file, tensor: name },
        });
      }
    }
  }

  let config: Record<string, unknown> | undefined;
  if (names.has("config.json")) {
    try {
      config = JSON.parse(await readFile(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
    } catch (e) {
      throw integrityError("DSR_CONFIG_INVALID", `${join(dir, "config.json")}: not valid JSON (${oneLine(e)})`, { hint: "fix or re-download config.json" });
    }
  }
  const otherFiles = fileNames
    .filter((n) => !n.startsWith(".") && n !== INDEX_FILE && n !== "config.json" && !WEIGHT_EXTENSIONS.some((x) => n.endsWith(x)))
    .sort();
  return { dir, shards, tensors, byName, config, otherFiles };
}

async function readIndex(path: string): Promise<Record<string, string>> {
  let obj: unknown;
  try {
    obj = JSON.parse(await readFile(path, "utf8"));
  } catch (e) {
    throw integrityError("DSR_CONVERT_BAD_INDEX", `${path}: not valid JSON (${oneLine(e)})`, { hint: "re-download the index file" });
  }
  const wm = (obj as { weight_map?: unknown })?.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm) || !Object.values(wm).every((v) => typeof v === "string")) {
    throw integrityError("DSR_CONVERT_BAD_INDEX", `${path}: "weight_map" must map tensor names to shard file names`, { hint: "re-download the index file" });
  }
  return wm as Record<string, string>;
}

/** JSON.parse messages can quote the text across lines; errors are one line. */
function oneLine(e: unknown): string {
  return ((e as Error)?.message ?? String(e)).replace(/\s+/g, " ").slice(0, 200);
}
