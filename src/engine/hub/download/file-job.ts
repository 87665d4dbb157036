/**
 * One file being downloaded: a pre-sized sparse partial file, its ranged parts (resumable state
 * beside it), 1 MiB write coalescing per part, and the ordered hasher. The pool (pool.ts) decides
 * which part runs on which connection; the job only knows how to fetch a part and how to verify.
 */
import { open, type FileHandle } from "node:fs/promises";
import { DsrError } from "../../errors.js";
import type { HubFile } from "../types.js";
import type { HashPool } from "./hash-pool.js";
import { OrderedHasher, type DigestKind } from "./hasher.js";
import { ProgressFile, loadState, removeState, saveState, splitParts, type PartState } from "./state.js";

/**
 * Runs fsync-like calls one at a time. An fsync of a file with hundreds of MB dirty blocks a libuv
 * threadpool thread for seconds; with 4 threads, a few concurrent ones would stall every write of
 * every connection. One lane keeps three threads free for the transfer.
 */
export class SyncLane {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const r = this.tail.then(fn, fn);
    this.tail = r.catch(() => {});
    return r;
  }
}

export type RangeReader = (path: string, start: number, end: number, onChunk: (chunk: Uint8Array, offset: number) => Promise<void> | void) => Promise<void>;

const WRITE_BLOCK = 1 << 20;

export function digestOf(f: HubFile): DigestKind {
  if (f.sha256) return { algo: "sha256", hex: f.sha256.toLowerCase() };
  if (f.gitSha1) return { algo: "gitsha1", hex: f.gitSha1.toLowerCase() };
  return { algo: "none" };
}

const digestKey = (d: DigestKind) => (d.algo === "none" ? "size" : `${d.algo}:${d.hex}`);

export class FileJob {
  parts: PartState[];
  active = 0;
  /** Bytes already on disk when this run started (resumed), for progress and reports. */
  readonly resumedBytes: number;
  attempts = 1;
  /** Verified and moved into place (or found in place). */
  settled = false;
  finishing = false;
  private fhp?: Promise<FileHandle>;
  private progress?: ProgressFile;
  private hasher!: OrderedHasher;
  private dirty = false;
  private sealed = false;
  private chain: Promise<void> = Promise.resolve();
  private readonly assigned = new Set<PartState>();
  readonly digest: DigestKind;

  private constructor(
    readonly file: HubFile,
    readonly partialPath: string,
    readonly statePath: string,
    private readonly partSize: number,
    resumed: PartState[] | undefined,
    private readonly pool?: HashPool,
    private readonly lane: SyncLane = new SyncLane(),
  ) {
    this.digest = digestOf(file);
    this.parts = resumed ?? splitParts(file.size, partSize);
    this.resumedBytes = this.doneBytes();
    this.newHasher();
  }

  static async load(file: HubFile, partialPath: string, partSize: number, pool?: HashPool, lane?: SyncLane): Promise<FileJob> {
    const statePath = `${partialPath}.json`;
    const parts = await loadState(statePath, partialPath, { size: file.size, digest: digestKey(digestOf(file)) });
    return new FileJob(file, partialPath, statePath, partSize, parts, pool, lane);
  }

  private newHasher(): void {
    this.hasher = new OrderedHasher(this.digest, this.file.size, this.parts, () => this.handle(), this.pool);
  }

  private handle(): Promise<FileHandle> {
    return (this.fhp ??= (async () => {
      // "r+" keeps resumed bytes; a fresh partial is created and pre-sized (sparse) so parts can land anywhere.
      const fresh = this.doneBytes() === 0;
      const fh = await open(this.partialPath, fresh ? "w+" : "r+");
      if (fresh) await fh.truncate(this.file.size);
      else await this.lane.run(() => fh.datasync()); // resumed bytes (same boot: maybe only in page cache) become durable
      await this.writeState();
      this.progress = await ProgressFile.open(this.statePath, this.parts);
      return fh;
    })());
  }

  doneBytes(): number {
    return this.parts.reduce((a, p) => a + p.done, 0);
  }
  get complete(): boolean {
    return this.parts.every((p) => p.done === p.end - p.start);
  }
  get started(): boolean {
    return this.fhp !== undefined;
  }
  get readBack(): number {
    return this.hasher.readBack;
  }
  /** The lowest part neither finished nor running. */
  nextPart(): PartState | undefined {
    return this.parts.find((p) => p.done < p.end - p.start && !this.assigned.has(p));
  }
  unassignedBytes(): number {
    return this.parts.reduce((a, p) => a + (this.assigned.has(p) ? 0 : p.end - p.start - p.done), 0);
  }

  /** Fetches the rest of `part`, writing in 1 MiB blocks and feeding the hasher; onBytes per block. */
  async runPart(part: PartState, read: RangeReader, onBytes: (n: number) => void): Promise<void> {
    this.assigned.add(part);
    this.active++;
    const fh = await this.handle();
    const index = this.parts.indexOf(part);
    const blockSize = Math.min(WRITE_BLOCK, Math.max(1, part.end - part.start));
    // A fresh block each time: a written block is handed to the hash thread without a copy.
    let buf = Buffer.allocUnsafeSlow(blockSize);
    let fill = 0;
    const flush = async () => {
      if (fill === 0) return;
      const at = part.start + part.done;
      await writeFully(fh, buf, fill, at, this.file.path);
      part.done += fill;
      await this.progress!.record(index, part.done);
      this.dirty = true;
      const whole = fill === buf.byteLength;
      const block = whole ? buf : buf.subarray(0, fill);
      const n = fill;
      buf = Buffer.allocUnsafeSlow(blockSize);
      fill = 0;
      onBytes(n);
      await this.hasher.offer(block, at, whole);
    };
    try {
      // Copies into the block synchronously; returns a promise only when a full block must be flushed.
      const fill1 = (chunk: Uint8Array, off: number): Promise<void> | undefined => {
        while (off < chunk.byteLength) {
          const n = Math.min(chunk.byteLength - off, buf.byteLength - fill);
          buf.set(n === chunk.byteLength ? chunk : chunk.subarray(off, off + n), fill);
          fill += n;
          off += n;
          if (fill === buf.byteLength) return flush().then(() => fill1(chunk, off));
        }
        return undefined;
      };
      await read(this.file.path, part.start + part.done, part.end, (chunk) => fill1(chunk, 0));
      await flush();
    } catch (e) {
      // Bytes received in order before the failure are good: keep them for the resume.
      await flush().catch(() => {});
      throw e;
    } finally {
      this.active--;
      this.assigned.delete(part);
    }
  }

  /** After every part is done: finishes the hash and compares it. True when the content is right. */
  async verify(): Promise<{ ok: boolean; actual?: string }> {
    const actual = await this.hasher.finish();
    if (this.digest.algo === "none") return { ok: true };
    return { ok: actual === this.digest.hex, actual };
  }

  /** Serialises state saves with seal/reset so a late save never resurrects a dropped state file. */
  private exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.chain.then(fn);
    this.chain = run.then(() => {}, () => {});
    return run;
  }

  /** Persists progress (after making the written bytes durable) when anything changed. */
  save(force = false): Promise<void> {
    return this.exclusive(async () => {
      if (this.sealed || (!this.dirty && !force)) return;
      this.dirty = false;
      if (this.fhp) await this.writeState(await this.fhp);
    });
  }

  /** fdatasync the partial, then record what it made durable. */
  private async writeState(fh?: FileHandle): Promise<void> {
    const parts = this.parts.map((p) => ({ start: p.start, end: p.end, durable: p.done })); // durable once datasync returns
    if (fh) await this.lane.run(() => fh.datasync());
    await saveState(this.statePath, { path: this.file.path, size: this.file.size, digest: digestKey(this.digest), parts });
  }

  /** Durable partial, closed; the caller renames it into place. No state is saved after this. */
  seal(): Promise<void> {
    return this.exclusive(async () => {
      this.sealed = true;
      const fh = await this.handle();
      await this.lane.run(() => fh.sync());
      await fh.close();
      this.fhp = undefined;
      await this.progress?.close();
      this.progress = undefined;
    });
  }

  async close(): Promise<void> {
    const p = this.fhp;
    this.fhp = undefined;
    await this.progress?.close();
    this.progress = undefined;
    if (p) await (await p).close().catch(() => {});
  }

  /** Throws away the partial and its state and starts over (after a hash mismatch). */
  reset(): Promise<void> {
    return this.exclusive(async () => {
      await this.close();
      await removeState(this.statePath, this.partialPath);
      this.parts = splitParts(this.file.size, this.partSize);
      this.attempts++;
      this.newHasher();
    });
  }

  /** After the verified partial was moved into place. */
  async dropState(): Promise<void> {
    await removeState(this.statePath, this.partialPath); // the partial itself was renamed away already
  }
}

async function writeFully(fh: FileHandle, buf: Buffer, len: number, at: number, name: string): Promise<void> {
  let off = 0;
  try {
    while (off < len) {
      const { bytesWritten } = await fh.write(buf, off, len - off, at + off);
      off += bytesWritten;
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOSPC") {
      throw new DsrError("DSR_DISK_FULL", `disk full while writing ${name}`, {
        hint: "free some space (or pick another --cache-dir / --local-dir); re-running resumes where it stopped",
        cause: e,
      });
    }
    throw e;
  }
}
