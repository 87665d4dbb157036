/**
 * A ByteSource is anything that can serve byte ranges of one file: a local file, or a remote file
 * read with HTTP Range requests (src/engine/hub). Header reading and tensor reads go through it so
 * local and remote checkpoints share one code path.
 */
import { open, stat, type FileHandle } from "node:fs/promises";
import { createReadStream } from "node:fs";
import type { Readable } from "node:stream";

export interface ByteSource {
  /** Name used in error messages (a path or a repo-relative file name). */
  readonly name: string;
  /** Total size in bytes, when known. */
  size(): Promise<number | undefined>;
  /** Reads [start, start+length) — may return fewer bytes only at end of file. */
  read(start: number, length: number): Promise<Uint8Array>;
  /** Streams [start, end) (end exclusive). */
  stream?(start: number, end: number): Readable;
  close?(): Promise<void>;
}

export class FileByteSource implements ByteSource {
  private fh?: Promise<FileHandle>;
  private sizeCache?: number;
  constructor(readonly path: string, readonly name: string = path) {}

  async size(): Promise<number> {
    return (this.sizeCache ??= (await stat(this.path)).size);
  }

  async read(start: number, length: number): Promise<Uint8Array> {
    const fh = await (this.fh ??= open(this.path, "r"));
    // allocUnsafeSlow: never a slice of the shared pool, so byteOffset is 0 and typed-array views are aligned.
    const buf = Buffer.allocUnsafeSlow(length);
    let got = 0;
    while (got < length) {
      const { bytesRead } = await fh.read(buf, got, length - got, start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    return got === length ? buf : buf.subarray(0, got);
  }

  stream(start: number, end: number): Readable {
    if (end <= start) return createReadStream(this.path, { start: 0, end: -1 }).once("open", function (this: Readable) { this.push(null); });
    return createReadStream(this.path, { start, end: end - 1, highWaterMark: 1 << 20 });
  }

  async close(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    if (fh) await (await fh).close();
  }
}
