/**
 * safetensors header parsing and validation, rule for rule as the reference Rust reader
 * (facts/formats.md §3): u64 LE length prefix, N ≤ 100,000,000, UTF-8 JSON, string-only
 * __metadata__, known dtypes, offsets sorted/contiguous from 0, byte size = numel × width,
 * and the data buffer ending exactly at the end of the file. Every error names the file and tensor.
 */
import { integrityError } from "../errors.js";
import { isDtype, tensorByteSize, type Dtype } from "./dtypes.js";

export const MAX_HEADER_SIZE = 100_000_000;

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Offsets relative to the start of the data buffer (begin inclusive, end exclusive). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** N: length of the JSON header in bytes (including padding). */
  headerSize: number;
  /** Absolute file offset of the data buffer: 8 + N. */
  dataStart: number;
  /** Tensors in data order (sorted by begin offset). */
  tensors: TensorInfo[];
  metadata: Record<string, string> | undefined;
  /** Total bytes of the data buffer (last end). */
  dataSize: number;
}

/** Reads N from the 8-byte prefix and checks it against the limit and (if known) the file size. */
export function parseHeaderLength(prefix: Uint8Array, fileSize: number | undefined, file: string): number {
  if (prefix.byteLength < 8 || (fileSize !== undefined && fileSize < 8)) {
    throw integrityError("DSR_ST_HEADER_TOO_SMALL", `${file}: file is shorter than the 8-byte safetensors length prefix`, {
      hint: "the file is truncated or not a safetensors file; re-download it",
    });
  }
  const n = new DataView(prefix.buffer, prefix.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_SIZE)) {
    throw integrityError("DSR_ST_HEADER_TOO_LARGE", `${file}: header length ${n} exceeds the safetensors limit of ${MAX_HEADER_SIZE} bytes`, {
      hint: "the file is corrupt or not a safetensors file",
    });
  }
  const len = Number(n);
  if (fileSize !== undefined && 8 + len > fileSize) {
    throw integrityError("DSR_ST_INVALID_HEADER_LENGTH", `${file}: header length ${len} runs past the end of the ${fileSize}-byte file`, {
      hint: "the file is truncated; re-download it",
    });
  }
  return len;
}

/**
 * Parses and validates the JSON header. `fileSize`, when known, is checked against the data buffer;
 * when unknown (e.g. a listing without sizes) that last check is skipped.
 */
export function parseHeader(json: Uint8Array, fileSize: number | undefined, file: string): SafetensorsHeader {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(json);
  } catch {
    throw integrityError("DSR_ST_INVALID_HEADER", `${file}: safetensors header is not valid UTF-8`, { hint: "the file is corrupt" });
  }
  let obj: unknown;
  try {
    obj = JSON.parse(text);
  } catch (e) {
    throw integrityError("DSR_ST_INVALID_HEADER", `${file}: safetensors header is not valid JSON (${oneLine((e as Error).message)})`, {
      hint: "the file is corrupt or truncated",
    });
  }
  if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
    throw integrityError("DSR_ST_INVALID_HEADER", `${file}: safetensors header is not a JSON object`, { hint: "the file is corrupt" });
  }
  const dup = findDuplicateTopLevelKey(text);
  if (dup !== undefined) {
    throw integrityError("DSR_ST_DUPLICATE_TENSOR", `${file}: tensor "${dup}" appears twice in the header`, { hint: "the file is corrupt" });
  }

  let metadata: Record<string, string> | undefined;
  const tensors: TensorInfo[] = [];
  for (const [name, v] of Object.entries(obj as Record<string, unknown>)) {
    if (name === "__metadata__") {
      metadata = parseMetadata(v, file);
      continue;
    }
    tensors.push(parseTensorEntry(name, v, file));
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const t of tensors) {
    if (t.begin !== expected) {
      throw integrityError(
        "DSR_ST_INVALID_OFFSET",
        `${file}: tensor "${t.name}" starts at data offset ${t.begin}, expected ${expected} (${t.begin < expected ? "overlaps the previous tensor" : "gap before it"})`,
        { hint: "the file is corrupt", details: { file, tensor: t.name } },
      );
    }
    expected = t.end;
  }
  const headerSize = json.byteLength;
  if (fileSize !== undefined && 8 + headerSize + expected !== fileSize) {
    const have = fileSize - 8 - headerSize;
    throw integrityError(
      "DSR_ST_INCOMPLETE_BUFFER",
      `${file}: data buffer is ${have} bytes but the header describes ${expected}${have < expected ? " (file truncated)" : " (trailing bytes)"}`,
      { hint: have < expected ? "the file is truncated; re-download it" : "the file has extra bytes after its data; it is corrupt", details: { file } },
    );
  }
  return { headerSize, dataStart: 8 + headerSize, tensors, metadata, dataSize: expected };
}

/** Error text from JSON.parse can quote the input across lines; errors must stay one line. */
function oneLine(s: string): string {
  const flat = s.replace(/\s+/g, " ");
  return flat.length > 160 ? flat.slice(0, 157) + "…" : flat;
}

function parseMetadata(v: unknown, file: string): Record<string, string> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw integrityError("DSR_ST_INVALID_HEADER", `${file}: __metadata__ must be an object of strings`, { hint: "the file is corrupt" });
  }
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== "string") {
      throw integrityError("DSR_ST_INVALID_HEADER", `${file}: __metadata__.${k} is not a string`, {
        hint: "safetensors metadata values must be strings; the writer of this file is non-conforming",
      });
    }
  }
  return v as Record<string, string>;
}

function parseTensorEntry(name: string, v: unknown, file: string): TensorInfo {
  const bad = (why: string) =>
    integrityError("DSR_ST_TENSOR_INVALID_INFO", `${file}: tensor "${name}" ${why}`, { hint: "the file is corrupt", details: { file, tensor: name } });
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw bad("entry is not an object");
  const e = v as Record<string, unknown>;
  if (!isDtype(e.dtype)) {
    throw integrityError("DSR_ST_UNKNOWN_DTYPE", `${file}: tensor "${name}" has unknown dtype ${JSON.stringify(e.dtype)}`, {
      hint: "dsr knows the safetensors dtypes F4…F64/BF16/F8_*; the file is corrupt or from a newer format",
      details: { file, tensor: name },
    });
  }
  const shape = e.shape;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad("has an invalid shape");
  const off = e.data_offsets;
  if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0)) throw bad("has invalid data_offsets");
  const [begin, end] = off as [number, number];
  if (end < begin) {
    throw integrityError("DSR_ST_INVALID_OFFSET", `${file}: tensor "${name}" ends (${end}) before it begins (${begin})`, {
      hint: "the file is corrupt",
      details: { file, tensor: name },
    });
  }
  const size = tensorByteSize(e.dtype, shape as number[]);
  if (size === undefined) throw bad(`shape ${JSON.stringify(shape)} of ${e.dtype} is not a whole number of bytes or overflows`);
  if (size !== end - begin) throw bad(`has ${end - begin} bytes but shape ${JSON.stringify(shape)} of ${e.dtype} needs ${size}`);
  return { name, dtype: e.dtype, shape: shape as number[], begin, end };
}

/**
 * JSON.parse keeps the last of duplicate keys silently; the format forbids them, so scan the
 * top-level object's keys. Nested objects are skipped by depth counting (strings honour escapes).
 */
export function findDuplicateTopLevelKey(text: string): string | undefined {
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      while (j < text.length && text.charCodeAt(j) !== 0x22) j += text.charCodeAt(j) === 0x5c ? 2 : 1;
      if (depth === 1 && expectKey) {
        const raw = text.slice(i + 1, j);
        const key = raw.includes("\\") ? (JSON.parse(text.slice(i, j + 1)) as string) : raw;
        if (seen.has(key)) return key;
        seen.add(key);
        expectKey = false;
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      depth++;
      expectKey = depth === 1 && c === 0x7b;
    } else if (c === 0x7d || c === 0x5d) {
      depth--;
    } else if (c === 0x2c /* , */ && depth === 1) {
      expectKey = true;
    }
  }
  return undefined;
}

/** Serialises a header the way the reference writer does: JSON padded with spaces to a multiple of 8. */
export function encodeHeader(
  tensors: readonly { name: string; dtype: Dtype; shape: readonly number[]; begin: number; end: number }[],
  metadata?: Record<string, string>,
): Uint8Array {
  const obj: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) obj.__metadata__ = metadata;
  for (const t of tensors) obj[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [t.begin, t.end] };
  const json = Buffer.from(JSON.stringify(obj), "utf8");
  const padded = Math.ceil(json.byteLength / 8) * 8;
  const out = new Uint8Array(8 + padded).fill(0x20);
  new DataView(out.buffer).setBigUint64(0, BigInt(padded), true);
  out.set(json, 8);
  return out;
}
