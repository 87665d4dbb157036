/**
 * One file being downloaded: a pre-sized sparse partial file, its ranged parts (resumable state
 * beside it), 1 MiB write coalescing per part, and the ordered hasher. The pool (pool.ts) decides
 * which part runs on which connection; the job knows how to fetch a part, how to split a running
 * part in two (so an idle connection can take over half of what is left), and how to verify.
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

export type RangeReader = (path: string, start: number, end: () => number, onChunk: (chunk: Uint8Array, offset: number) => Promise<void> | void) => Promise<void>;

const WRITE_BLOCK = 1 << 20;

/** A part on a connection: `received` = bytes from the part's start handed to us (written or still buffered). */
interface Running {
  received: number;
  /** When the request went out, and when (and at which `received`) its first byte came back. */
  startedAt: number;
  firstAt?: number;
  firstReceived?: number;
}

const running = (received: number): Running => ({ received, startedAt: performance.now() });

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
  /** Parts split while running, in this run. */
  splits = 0;
  finishing = false;
  private fhp?: Promise<FileHandle>;
  private progress?: ProgressFile;
  private hasher!: OrderedHasher;
  private dirty = false;
  private sealed = false;
  private chain: Promise<void> = Promise.resolve();
  /** Writes of the JSON state, one at a time (periodic saves and splits share the tmp file). */
  private jsonChain: Promise<void> = Promise.resolve();
  private readonly running = new Map<PartState, Running>();
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
      else await this.makeDurable(fh); // resumed bytes (same boot: maybe only in page cache) become durable
      await this.writeJson();
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
  /** The lowest part neither finished nor running (parts are kept in state-slot order, not file order). */
  nextPart(): PartState | undefined {
    let best: PartState | undefined;
    for (const p of this.parts) if (p.done < p.end - p.start && !this.running.has(p) && (!best || p.start < best.start)) best = p;
    return best;
  }
  unassignedBytes(): number {
    return this.parts.reduce((a, p) => a + (this.running.has(p) ? 0 : p.end - p.start - p.done), 0);
  }

  /** The running part with the most bytes not yet received, and that count. */
  largestRunning(): { part: PartState; left: number } | undefined {
    let best: { part: PartState; left: number } | undefined;
    for (const [part, r] of this.running) {
      const left = part.end - part.start - r.received;
      if (!best || left > best.left) best = { part, left };
    }
    return best;
  }

  /**
   * Splits a running part: its read stops at a new end (1 MiB-aligned, about half way through what
   * it has not received yet) and the rest becomes a new part, appended to the state and returned
   * reserved for the caller's connection. `recorded` resolves once the JSON state names the new part;
   * runPart waits for it, so no byte of the new part is written before a resume would know where it
   * belongs.
   */
  split(part: PartState, minBytes: number): { part: PartState; recorded: Promise<void> } | undefined {
    const r = this.running.get(part);
    if (!r) return undefined;
    // A new request delivers nothing for about a time-to-first-byte, while the donor keeps going at
    // its rate: halves smaller than twice what the donor fetches in that time gain nothing.
    let min = minBytes;
    if (r.firstAt !== undefined) {
      const now = performance.now();
      if (now > r.firstAt) min = Math.max(min, (2 * (r.received - r.firstReceived!) * (r.firstAt - r.startedAt)) / (now - r.firstAt));
    }
    const from = part.start + r.received;
    let at = from + Math.floor((part.end - from) / 2);
    if (at - (at % WRITE_BLOCK) > from) at -= at % WRITE_BLOCK;
    if (at - from < min || part.end - at < min) return undefined;
    const tail: PartState = { start: at, end: part.end, done: 0, durable: 0 };
    part.end = at; // the running read sees it before its next chunk (RangeReader's end getter)
    this.parts.push(tail);
    this.running.set(tail, running(0));
    this.splits++;
    return { part: tail, recorded: this.writeJson() };
  }

  /**
   * Fetches the rest of `part`, writing in 1 MiB blocks and feeding the hasher; onBytes per block.
   * `recorded`: the state write that must land before the first byte (a part just made by split()).
   */
  async runPart(part: PartState, read: RangeReader, onBytes: (n: number) => void, recorded?: Promise<void>): Promise<void> {
    const run = this.running.get(part) ?? running(part.done);
    this.running.set(part, run);
    this.active++;
    try {
      await recorded;
      await this.fetchPart(part, run, read, onBytes);
    } finally {
      this.active--;
      this.running.delete(part);
    }
  }

  private async fetchPart(part: PartState, run: Running, read: RangeReader, onBytes: (n: number) => void): Promise<void> {
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
      run.startedAt = performance.now(); // a split part waited for its state write; its request goes out now
      await read(this.file.path, part.start + part.done, () => part.end, (chunk) => {
        if (run.firstAt === undefined) {
          run.firstAt = performance.now();
          run.firstReceived = run.received;
        }
        run.received += chunk.byteLength;
        return fill1(chunk, 0);
      });
      await flush();
    } catch (e) {
      // Bytes received in order before the failure are good: keep them for the resume.
      await flush().catch(() => {});
      throw e;
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
      if (!this.fhp) return;
      await this.makeDurable(await this.fhp);
      await this.writeJson();
    });
  }

  /** fdatasync the partial; what was written before it is durable once it returns. */
  private async makeDurable(fh: FileHandle): Promise<void> {
    const written = this.parts.map((p) => p.done); // parts are only appended meanwhile (splits)
    await this.lane.run(() => fh.datasync());
    written.forEach((d, i) => (this.parts[i].durable = Math.max(this.parts[i].durable, d)));
  }

  /**
   * Atomically rewrites the JSON state from the current parts. Not under `exclusive`: a split must
   * not wait behind a periodic save's fdatasync of the whole partial; `sealed` stops late writes.
   */
  private writeJson(): Promise<void> {
    const run = this.jsonChain.then(async () => {
      if (this.sealed) return;
      const parts = this.parts.map((p) => ({ start: p.start, end: p.end, durable: p.durable }));
      await saveState(this.statePath, { path: this.file.path, size: this.file.size, digest: digestKey(this.digest), parts });
    });
    this.jsonChain = run.catch(() => {});
    return run;
  }

  /** Durable partial, closed; the caller renames it into place. No state is saved after this. */
  seal(): Promise<void> {
    return this.exclusive(async () => {
      this.sealed = true;
      await this.jsonChain;
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
      await this.jsonChain;
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
