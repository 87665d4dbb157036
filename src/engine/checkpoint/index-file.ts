/**
 * model.safetensors.index.json: {"metadata": {"total_size": n, …}, "weight_map": {tensor: shard}}.
 * Parsed with limits (file size, entry count, safe shard names) because it comes from the network.
 */
import { integrityError } from "../errors.js";
import type { IndexInfo } from "./types.js";

export const INDEX_FILE = "model.safetensors.index.json";
/** R1's index is ~9 MB for 92k tensors; 256 MB leaves room for 10× that and refuses a hostile file. */
export const MAX_INDEX_BYTES = 256 * 1024 * 1024;
export const MAX_INDEX_ENTRIES = 5_000_000;
export const MAX_SHARDS = 100_000;

/** A shard name must stay inside the checkpoint: relative, no "..", no backslashes or NULs. */
export function isSafeShardName(s: string): boolean {
  return s.length > 0 && s.length <= 1024 && !s.startsWith("/") && !/[\\\0]/.test(s) && !s.split("/").some((p) => p === ".." || p === "." || p === "");
}

export function parseIndex(bytes: Uint8Array, file = INDEX_FILE): IndexInfo {
  let obj: unknown;
  try {
    obj = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (e) {
    throw integrityError("DSR_INDEX_INVALID", `${file}: not valid JSON (${(e as Error).message})`, { hint: "re-download the index file", details: { file } });
  }
  const bad = (why: string) => integrityError("DSR_INDEX_INVALID", `${file}: ${why}`, { hint: "re-download the index file", details: { file } });
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) throw bad("not a JSON object");
  const o = obj as Record<string, unknown>;
  const wm = o.weight_map;
  if (typeof wm !== "object" || wm === null || Array.isArray(wm)) throw bad('"weight_map" is missing or not an object');
  const meta = o.metadata ?? {};
  if (typeof meta !== "object" || meta === null || Array.isArray(meta)) throw bad('"metadata" is not an object');
  const weightMap = new Map<string, string>();
  const shards = new Set<string>();
  const map = wm as Record<string, unknown>;
  const names = Object.keys(map); // faster than for-in over a 92k-key dictionary object
  for (let i = 0; i < names.length; i++) {
    const tensor = names[i];
    const shard = map[tensor];
    if (weightMap.size >= MAX_INDEX_ENTRIES) throw bad(`more than ${MAX_INDEX_ENTRIES} tensors`);
    if (typeof shard !== "string" || (!shards.has(shard) && !isSafeShardName(shard))) {
      throw integrityError("DSR_INDEX_INVALID", `${file}: tensor "${tensor}" maps to an invalid shard name ${JSON.stringify(shard)}`, {
        hint: "shard names must be relative file names inside the model folder",
        details: { file, tensor },
      });
    }
    weightMap.set(tensor, shard);
    shards.add(shard);
  }
  if (shards.size > MAX_SHARDS) throw bad(`${shards.size} shards exceeds the limit of ${MAX_SHARDS}`);
  const ts = (meta as Record<string, unknown>).total_size;
  let totalSize: number | undefined;
  if (ts !== undefined && ts !== null) {
    const n = typeof ts === "string" ? Number(ts) : ts;
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) throw bad(`metadata.total_size ${JSON.stringify(ts)} is not a byte count`);
    totalSize = n;
  }
  return { file, totalSize, weightMap, metadata: meta as Record<string, unknown> };
}

/** Shard files in the order the index first names them (HF writers list them in order). */
export function indexShards(index: IndexInfo): string[] {
  return [...new Set(index.weightMap.values())].sort();
}
