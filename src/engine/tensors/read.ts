/** Reading safetensors headers and tensor bytes from any ByteSource without loading whole files. */
import { integrityError } from "../errors.js";
import { parseHeader, parseHeaderLength, type SafetensorsHeader, type TensorInfo } from "./safetensors.js";
import { FileByteSource, type ByteSource } from "./source.js";

export interface ReadHeaderOptions {
  /**
   * Bytes to read speculatively in the first request (prefix + most headers in one round trip).
   * 0 reads the 8-byte prefix first and then exactly the header.
   */
  speculativeBytes?: number;
}

export interface HeaderReadResult {
  header: SafetensorsHeader;
  fileSize: number | undefined;
  /** Number of read() calls made and bytes fetched: remote inspect reports these. */
  reads: number;
  bytesRead: number;
}

export async function readHeader(src: ByteSource, opts: ReadHeaderOptions = {}): Promise<HeaderReadResult> {
  const fileSize = await src.size();
  const spec = Math.max(8, opts.speculativeBytes ?? 0);
  const firstLen = fileSize === undefined ? spec : Math.min(spec, fileSize);
  const first = await src.read(0, firstLen);
  let reads = 1;
  let bytesRead = first.byteLength;
  const n = parseHeaderLength(first, fileSize, src.name);
  let json: Uint8Array;
  if (first.byteLength >= 8 + n) {
    json = first.subarray(8, 8 + n);
  } else {
    const have = first.byteLength - 8;
    const rest = await src.read(first.byteLength, n - have);
    reads++;
    bytesRead += rest.byteLength;
    if (rest.byteLength !== n - have) {
      throw integrityError("DSR_ST_INVALID_HEADER_LENGTH", `${src.name}: header length ${n} runs past the end of the file`, {
        hint: "the file is truncated; re-download it",
      });
    }
    json = new Uint8Array(n);
    json.set(first.subarray(8), 0);
    json.set(rest, have);
  }
  return { header: parseHeader(json, fileSize, src.name), fileSize, reads, bytesRead };
}

export async function readHeaderFromFile(path: string): Promise<SafetensorsHeader> {
  const src = new FileByteSource(path);
  try {
    return (await readHeader(src)).header;
  } finally {
    await src.close();
  }
}

/** Reads one tensor's bytes (the caller bounds memory by choosing what to read). */
export async function readTensorBytes(src: ByteSource, header: SafetensorsHeader, t: TensorInfo): Promise<Uint8Array> {
  const len = t.end - t.begin;
  const b = await src.read(header.dataStart + t.begin, len);
  if (b.byteLength !== len) {
    throw integrityError("DSR_ST_TRUNCATED", `${src.name}: tensor "${t.name}" is cut short (${b.byteLength} of ${len} bytes)`, {
      hint: "the file is truncated; re-download it",
      details: { file: src.name, tensor: t.name },
    });
  }
  return b;
}
