/**
 * The external data file next to model.onnx. Weights are appended one tensor (or one row chunk) at a
 * time, each tensor starting on a 4096-byte boundary (mmap-friendly, facts §4.7), so the builder never
 * holds more than one tensor. Tensors under 1 KiB stay inline in the model: ORT cannot shape-infer
 * from external small constants such as axes (facts §4.6 gotcha).
 */
import { open, type FileHandle } from "node:fs/promises";
import type { DataTypeCode, TensorSpec } from "./model.js";

const ALIGN = 4096;
export const INLINE_LIMIT = 1024;

export class ExternalDataWriter {
  private fh?: FileHandle;
  private pos = 0;
  /** Bytes written, for progress and the manifest. */
  get size(): number {
    return this.pos;
  }

  constructor(
    private readonly path: string,
    /** The location string stored in the model (relative to model.onnx). */
    private readonly location: string,
  ) {}

  async open(): Promise<void> {
    this.fh = await open(this.path, "w");
  }

  private async writeAt(b: Uint8Array): Promise<void> {
    let done = 0;
    while (done < b.byteLength) {
      const { bytesWritten } = await this.fh!.write(b, done, b.byteLength - done, this.pos + done);
      done += bytesWritten;
    }
    this.pos += b.byteLength;
  }

  /** Starts a tensor whose bytes arrive in pieces; call `append` then `end`. */
  begin(): { append: (b: Uint8Array) => Promise<void>; end: (name: string, dataType: DataTypeCode, dims: number[]) => TensorSpec } {
    this.pos = Math.ceil(this.pos / ALIGN) * ALIGN;
    const offset = this.pos;
    return {
      append: (b) => this.writeAt(b),
      end: (name, dataType, dims) => ({ name, dataType, dims, external: { location: this.location, offset, length: this.pos - offset } }),
    };
  }

  /** One whole tensor: inline when small, external otherwise. */
  async tensor(name: string, dataType: DataTypeCode, dims: number[], bytes: Uint8Array): Promise<TensorSpec> {
    if (bytes.byteLength < INLINE_LIMIT) return { name, dataType, dims, raw: bytes.slice() };
    const t = this.begin();
    await t.append(bytes);
    return t.end(name, dataType, dims);
  }

  async close(): Promise<void> {
    if (!this.fh) return;
    await this.fh.sync();
    await this.fh.close();
    this.fh = undefined;
  }
}

export function bytesOf(a: Float32Array | Int32Array | BigInt64Array | Uint16Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}
