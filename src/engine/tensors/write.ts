/**
 * A streaming safetensors writer: the header (all names, dtypes, shapes) is fixed up front, then
 * tensor bytes are appended in header order. Output goes to `<path>.partial`, is fsynced and renamed
 * into place by finish(), so an interrupted write never leaves a file that looks complete.
 */
import { open, rename, rm, type FileHandle } from "node:fs/promises";
import { DsrError } from "../errors.js";
import { DTYPE_BITS, tensorByteSize, type Dtype } from "./dtypes.js";
import { encodeHeader } from "./safetensors.js";

export interface TensorSpec {
  name: string;
  dtype: Dtype;
  shape: number[];
}

export interface WriterOptions {
  metadata?: Record<string, string>;
  /** "reference" sorts like the safetensors writer (dtype alignment desc, then name); "given" keeps order. */
  order?: "reference" | "given";
}

export function referenceOrder<T extends { name: string; dtype: Dtype }>(specs: readonly T[]): T[] {
  return [...specs].sort((a, b) => DTYPE_BITS[b.dtype] - DTYPE_BITS[a.dtype] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

export class SafetensorsWriter {
  /** Tensors in the order their bytes must be written. */
  readonly order: readonly (TensorSpec & { begin: number; end: number })[];
  readonly fileSize: number;
  private next = 0;
  private written = 0; // bytes of the current tensor written so far
  private pos: number;

  private constructor(
    readonly path: string,
    private fh: FileHandle,
    order: (TensorSpec & { begin: number; end: number })[],
    headerBytes: number,
  ) {
    this.order = order;
    this.pos = headerBytes;
    this.fileSize = headerBytes + (order.at(-1)?.end ?? 0);
    this.skipEmpty();
  }

  /** Zero-byte tensors have nothing to write: step over them. */
  private skipEmpty(): void {
    while (this.order[this.next] && this.order[this.next].end === this.order[this.next].begin) this.next++;
  }

  static layout(specs: readonly TensorSpec[], opts: WriterOptions = {}) {
    const ordered = opts.order === "given" ? [...specs] : referenceOrder(specs);
    let off = 0;
    const placed = ordered.map((s) => {
      const size = tensorByteSize(s.dtype, s.shape);
      if (size === undefined) throw new DsrError("DSR_ST_BAD_SPEC", `tensor "${s.name}": shape ${JSON.stringify(s.shape)} of ${s.dtype} is not whole bytes`);
      const p = { ...s, begin: off, end: off + size };
      off += size;
      return p;
    });
    const header = encodeHeader(placed, opts.metadata);
    return { placed, header, fileSize: header.byteLength + off };
  }

  static async create(path: string, specs: readonly TensorSpec[], opts: WriterOptions = {}): Promise<SafetensorsWriter> {
    const { placed, header } = SafetensorsWriter.layout(specs, opts);
    const fh = await open(path + ".partial", "w");
    await fh.write(header, 0, header.byteLength, 0);
    return new SafetensorsWriter(path, fh, placed, header.byteLength);
  }

  /** The tensor whose bytes are expected next, or undefined when all were written. */
  get current(): TensorSpec | undefined {
    return this.order[this.next];
  }

  /** Appends bytes of the current tensor; a tensor may be written in several chunks. */
  async write(name: string, bytes: Uint8Array): Promise<void> {
    const t = this.order[this.next];
    if (!t || t.name !== name) {
      throw new DsrError("DSR_ST_WRITE_ORDER", `${this.path}: wrote "${name}" but "${t?.name ?? "(nothing)"}" comes next`);
    }
    const need = t.end - t.begin - this.written;
    if (bytes.byteLength > need) throw new DsrError("DSR_ST_WRITE_SIZE", `${this.path}: too many bytes for tensor "${name}"`);
    let off = 0;
    while (off < bytes.byteLength) {
      const { bytesWritten } = await this.fh.write(bytes, off, bytes.byteLength - off, this.pos);
      off += bytesWritten;
      this.pos += bytesWritten;
    }
    this.written += bytes.byteLength;
    if (this.written === t.end - t.begin) {
      this.next++;
      this.written = 0;
      this.skipEmpty();
    }
  }

  /** Checks every tensor was written in full, fsyncs and renames the file into place. */
  async finish(): Promise<void> {
    if (this.next !== this.order.length) {
      await this.abort();
      throw new DsrError("DSR_ST_WRITE_INCOMPLETE", `${this.path}: tensor "${this.order[this.next].name}" was not written`);
    }
    await this.fh.sync();
    await this.fh.close();
    await rename(this.path + ".partial", this.path);
  }

  async abort(): Promise<void> {
    await this.fh.close().catch(() => {});
    await rm(this.path + ".partial", { force: true });
  }
}

/** Writes a whole file from in-memory tensors (fixtures, small outputs). */
export async function writeSafetensors(
  path: string,
  tensors: readonly (TensorSpec & { data: Uint8Array })[],
  opts: WriterOptions = {},
): Promise<void> {
  const w = await SafetensorsWriter.create(path, tensors, opts);
  try {
    const byName = new Map(tensors.map((t) => [t.name, t]));
    for (const t of w.order) if (t.end > t.begin) await w.write(t.name, byName.get(t.name)!.data);
    await w.finish();
  } catch (e) {
    await w.abort();
    throw e;
  }
}
