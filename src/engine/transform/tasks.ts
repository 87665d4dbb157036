/**
 * Units of work for the convert pipeline and the code that runs one. A task reads a byte range of
 * an input shard, transforms it (or not) and writes it at its place in an output shard, with
 * positional I/O on file descriptors the main thread opened (worker threads share the process's
 * descriptor table). Every task is small — a 128-row FP8 block-row, or a few MiB of a copied or
 * cast tensor — so a thread's memory is its reusable buffers, whatever the tensor size.
 */
import { readSync, writeSync } from "node:fs";
import { DsrError, integrityError, isDsrError } from "../errors.js";
import type { FloatCodecDtype } from "../tensors/dtypes.js";
import { TARGET_WIDTH, castElements, dequantBlockRow, dtypeWidth, type TargetDtype } from "./kernels.js";
import { WasmDequant } from "./wasm-kernel.js";

interface TaskBase {
  /** For error messages. */
  tensor: string;
  file: string;
  inFd: number;
  inPos: number;
  outFd: number;
  outPos: number;
}
export interface CopyTask extends TaskBase {
  kind: "copy";
  len: number;
}
export interface DequantTask extends TaskBase {
  kind: "dequant";
  rows: number;
  cols: number;
  /** weight_scale_inv row for this 128-row block: ⌈cols/128⌉ values. */
  scaleRow: Float32Array;
  to: TargetDtype;
}
export interface CastTask extends TaskBase {
  kind: "cast";
  n: number;
  from: FloatCodecDtype;
  to: TargetDtype;
}
export type Task = CopyTask | DequantTask | CastTask;

export interface TaskResult {
  inBytes: number;
  outBytes: number;
}

/** Chunk sizes: big enough to amortise a syscall and a message, small enough to bound memory. */
export const COPY_CHUNK_BYTES = 8 << 20;
export const CAST_CHUNK_ELEMENTS = 1 << 20;

export function taskInBytes(t: Task): number {
  return t.kind === "copy" ? t.len : t.kind === "dequant" ? t.rows * t.cols : t.n * dtypeWidth(t.from);
}
export function taskOutBytes(t: Task): number {
  return t.kind === "copy" ? t.len : t.kind === "dequant" ? t.rows * t.cols * TARGET_WIDTH[t.to] : t.n * TARGET_WIDTH[t.to];
}
/** Runs tasks with buffers that grow to the largest task seen and are then reused. */
export class TaskRunner {
  private inBuf = Buffer.alloc(0);
  private outBuf = Buffer.alloc(0);
  private scratch = new Float32Array(0);
  private lut32 = new Uint32Array(0);
  private lut16 = new Uint16Array(0);
  private wasm?: WasmDequant;

  /** Bytes currently held in this runner's buffers. */
  get bufferBytes(): number {
    return this.inBuf.byteLength + this.outBuf.byteLength + this.scratch.byteLength + this.lut16.byteLength + this.lut32.byteLength + (this.wasm?.bytes ?? 0);
  }

  run(t: Task): TaskResult {
    if (t.kind === "dequant" && WasmDequant.supports(t.to, t.cols)) {
      // Fast path: codes are read straight into wasm memory and written back from it.
      const w = (this.wasm ??= new WasmDequant());
      const { src, out } = w.prepare(t.rows, t.cols);
      this.readAll(t, src);
      w.run(t.to, t.rows, t.cols, t.scaleRow);
      this.writeAll(t, out);
      return { inBytes: src.byteLength, outBytes: out.byteLength };
    }
    const inLen = taskInBytes(t);
    const src = this.readInto(t, inLen);
    if (t.kind === "copy") {
      this.writeAll(t, src);
      return { inBytes: inLen, outBytes: inLen };
    }
    const outLen = taskOutBytes(t);
    if (this.outBuf.byteLength < outLen) this.outBuf = Buffer.allocUnsafeSlow(outLen); // byteOffset 0: aligned views
    const out = this.outBuf.subarray(0, outLen);
    if (t.kind === "dequant") {
      const need = Math.ceil(t.cols / 128) * 256;
      let lut: Uint16Array | Uint32Array;
      if (t.to === "F32") lut = this.lut32.length >= need ? this.lut32 : (this.lut32 = new Uint32Array(need));
      else lut = this.lut16.length >= need ? this.lut16 : (this.lut16 = new Uint16Array(need));
      dequantBlockRow(t.to, src, t.rows, t.cols, t.scaleRow, out, lut);
    } else {
      if (this.scratch.length < t.n) this.scratch = new Float32Array(t.n);
      castElements(t.from, t.to, src, t.n, out, this.scratch);
    }
    this.writeAll(t, out);
    return { inBytes: inLen, outBytes: outLen };
  }

  private readInto(t: Task, len: number): Buffer {
    if (this.inBuf.byteLength < len) this.inBuf = Buffer.allocUnsafeSlow(len);
    const buf = this.inBuf.subarray(0, len);
    this.readAll(t, buf);
    return buf;
  }

  private readAll(t: Task, buf: Uint8Array): void {
    const len = buf.byteLength;
    let got = 0;
    while (got < len) {
      const n = readSync(t.inFd, buf, got, len - got, t.inPos + got);
      if (n === 0) {
        throw integrityError("DSR_ST_TRUNCATED", `${t.file}: tensor "${t.tensor}" is cut short (the file ended at byte ${t.inPos + got})`, {
          hint: "the shard changed or was truncated during the conversion; re-download it",
          details: { file: t.file, tensor: t.tensor },
        });
      }
      got += n;
    }
  }

  private writeAll(t: Task, bytes: Uint8Array): void {
    let off = 0;
    while (off < bytes.byteLength) off += writeSync(t.outFd, bytes, off, bytes.byteLength - off, t.outPos + off);
  }
}

/** Errors cross the worker boundary as plain objects; DsrErrors keep code, hint and exit code. */
export interface SerializedError {
  code?: string;
  message: string;
  hint?: string;
  exitCode?: number;
  details?: Record<string, unknown>;
  stack?: string;
}
export function serializeError(e: unknown): SerializedError {
  if (isDsrError(e)) return { code: e.code, message: e.message, hint: e.hint, exitCode: e.exitCode, details: e.details };
  const err = e as Error;
  // Disk full and friends are expected failures with a clear cause, not bugs.
  const errno = (e as NodeJS.ErrnoException)?.code;
  if (errno) return { code: "DSR_IO", message: `${errno}: ${err.message}`, hint: "check free disk space and permissions of the output directory" };
  return { message: err?.message ?? String(e), stack: err?.stack };
}
export function deserializeError(s: SerializedError): Error {
  if (s.code) return new DsrError(s.code, s.message, { hint: s.hint, exitCode: s.exitCode as never, details: s.details });
  const e = new Error(s.message);
  if (s.stack) e.stack = s.stack;
  return e;
}
