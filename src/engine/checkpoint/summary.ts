/** Summaries of a Checkpoint for inspect: shard sizes, dtype breakdown, grouped layers, embeddings. */
import type { ModelConfig } from "../arch/config.js";
import type { ArchDef } from "../arch/types.js";
import { classifyTensor } from "../arch/classify.js";
import { numel, tensorByteSize, type Dtype } from "../tensors/dtypes.js";
import type { Checkpoint, TensorEntry } from "./types.js";

export interface ShardSummary {
  count: number;
  indexFile: string | null;
  /** Σ file sizes (what a download costs). */
  totalBytes: number;
  /** Σ tensor data bytes (what index total_size should say). */
  tensorBytes: number;
  /** Σ (8 + N) header bytes. */
  headerBytes: number;
  minBytes: number;
  medianBytes: number;
  maxBytes: number;
  outliers: { file: string; bytes: number; reason: string }[];
  files: { file: string; bytes: number | null; tensors: number; headerBytes: number | null; status: string }[];
}

export function summarizeShards(ck: Checkpoint): ShardSummary {
  const sizes = ck.shards.map((s) => s.size ?? 0).filter((n) => n > 0);
  const sorted = [...sizes].sort((a, b) => a - b);
  const median = sorted.length ? sorted[Math.floor((sorted.length - 1) / 2)] : 0;
  const outliers: ShardSummary["outliers"] = [];
  ck.shards.forEach((s, i) => {
    if (!s.size || ck.shards.length < 5) return; // too few shards for a meaningful median
    if (s.size > 1.5 * median) outliers.push({ file: s.file, bytes: s.size, reason: `${(s.size / median).toFixed(1)}× the median` });
    // The last shard holds the remainder and is usually small; only flag the others.
    else if (s.size < 0.5 * median && i !== ck.shards.length - 1) outliers.push({ file: s.file, bytes: s.size, reason: `${(s.size / median).toFixed(2)}× the median` });
  });
  return {
    count: ck.shards.length,
    indexFile: ck.index?.file ?? null,
    totalBytes: sizes.reduce((a, b) => a + b, 0),
    tensorBytes: ck.shards.reduce((a, s) => a + s.dataBytes, 0),
    headerBytes: ck.shards.reduce((a, s) => a + (s.headerBytes ?? 0), 0),
    minBytes: sorted[0] ?? 0,
    medianBytes: median,
    maxBytes: sorted.at(-1) ?? 0,
    outliers,
    files: ck.shards.map((s) => ({ file: s.file, bytes: s.size ?? null, tensors: s.tensors, headerBytes: s.headerBytes ?? null, status: s.status })),
  };
}

export interface DtypeRow {
  dtype: Dtype;
  tensors: number;
  /** Elements stored (packed int32 words count as one each). */
  params: number;
  bytes: number;
}

export function dtypeBreakdown(tensors: Iterable<TensorEntry>): DtypeRow[] {
  const rows = new Map<Dtype, DtypeRow>();
  for (const t of tensors) {
    const r = rows.get(t.dtype) ?? rows.set(t.dtype, { dtype: t.dtype, tensors: 0, params: 0, bytes: 0 }).get(t.dtype)!;
    r.tensors++;
    r.params += numel(t.shape);
    r.bytes += t.end - t.begin;
  }
  return [...rows.values()].sort((a, b) => b.bytes - a.bytes);
}

export interface LayerGroup {
  from: number;
  to: number;
  count: number;
  kind: string;
  tensorsPerLayer: number;
  paramsPerLayer: number;
  bytesPerLayer: number;
  /** Dtypes used in the layer, most bytes first. */
  dtypes: string[];
}

/**
 * Groups consecutive layers whose tensors have the same names (past the layer and expert numbers),
 * dtypes and shapes: each layer's signature is an order-independent sum of per-tensor hashes.
 */
export function groupLayers(arch: ArchDef, cfg: ModelConfig, tensors: Iterable<TensorEntry>): LayerGroup[] {
  const layers = new Map<number, { kind: string; sig: number; n: number; params: number; bytes: number; dt: Map<string, number> }>();
  for (const t of tensors) {
    const k = classifyTensor(arch, cfg, t);
    const ref = k.layer;
    if (ref.index === undefined) continue;
    const l = layers.get(ref.index) ?? layers.set(ref.index, { kind: ref.kind, sig: 0, n: 0, params: 0, bytes: 0, dt: new Map() }).get(ref.index)!;
    let h = Math.imul(k.patternHash ^ t.dtype.length ^ (t.dtype.charCodeAt(1) << 8), 0x01000193);
    for (const d of t.shape) h = Math.imul(h ^ d, 0x01000193);
    l.sig = (l.sig + (h >>> 0)) % 4294967296;
    l.n++;
    l.params += numel(t.shape);
    const b = t.end - t.begin;
    l.bytes += b;
    l.dt.set(t.dtype, (l.dt.get(t.dtype) ?? 0) + b);
  }
  const groups: (LayerGroup & { sig: string })[] = [];
  for (const idx of [...layers.keys()].sort((a, b) => a - b)) {
    const l = layers.get(idx)!;
    const sig = `${l.kind}|${l.n}|${l.sig}`;
    const last = groups.at(-1);
    if (last && last.sig === sig && last.to === idx - 1) {
      last.to = idx;
      last.count++;
      continue;
    }
    const dtypes = [...l.dt.entries()].sort((a, b) => b[1] - a[1]).map(([d]) => d);
    groups.push({ from: idx, to: idx, count: 1, kind: l.kind, tensorsPerLayer: l.n, paramsPerLayer: l.params, bytesPerLayer: l.bytes, dtypes, sig });
  }
  return groups.map(({ sig: _sig, ...g }) => g);
}

export interface Embeddings {
  embedTokens: { shape: number[]; dtype: string } | null;
  lmHead: { shape: number[]; dtype: string } | null;
  tied: boolean;
}

export function embeddings(ck: Checkpoint): Embeddings {
  const e = ck.tensors.get("model.embed_tokens.weight");
  const h = ck.tensors.get("lm_head.weight");
  return {
    embedTokens: e ? { shape: e.shape, dtype: e.dtype } : null,
    lmHead: h ? { shape: h.shape, dtype: h.dtype } : null,
    tied: !h && (ck.config?.tieWordEmbeddings ?? !!e),
  };
}
