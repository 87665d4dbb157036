/**
 * Ordered incremental hashing of a file whose ranged parts arrive in parallel.
 *
 * SHA-256 cannot combine per-part digests, so bytes must be hashed in file order. Strategy: a block
 * that lands exactly at the hash frontier is hashed from memory as it arrives (no read-back); a block
 * ahead of the frontier is only written, and when the frontier reaches it the bytes are read back
 * from the partial file (the page cache, in practice) — `catchUp`. The scheduler (pool.ts) streams
 * each file's parts in order over one connection whenever there are at least as many files left as
 * connections, so in the common case every byte is hashed live and nothing is read twice; read-back
 * happens only for parts fetched in parallel within one file (the tail of a pull, or one huge file),
 * and once for the already-finished prefix after a resume (node's hash state cannot be saved).
 */
import { createHash, type Hash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import type { PartState } from "./state.js";

export type DigestKind = { algo: "sha256"; hex: string } | { algo: "gitsha1"; hex: string } | { algo: "none" };

const READ_BACK = 4 << 20;

export class OrderedHasher {
  private readonly hash?: Hash;
  /** Bytes [0, pos) have been hashed. */
  pos = 0;
  /** Bytes hashed by reading back from disk (reported by benchmarks). */
  readBack = 0;
  private running?: Promise<void>;
  private failed?: unknown;

  constructor(
    readonly kind: DigestKind,
    private readonly size: number,
    private readonly parts: readonly PartState[],
    private readonly fh: () => Promise<FileHandle>,
  ) {
    if (kind.algo === "sha256") this.hash = createHash("sha256");
    else if (kind.algo === "gitsha1") this.hash = createHash("sha1").update(`blob ${size}\0`);
  }

  /** A block [offset, offset+len) was just written to disk. Hash it now if it extends the frontier. */
  offer(block: Uint8Array, offset: number): void {
    const end = offset + block.byteLength;
    // Ahead of the frontier, or a read-back is running (it will cover this block from disk): skip.
    if (!this.hash || this.running || offset > this.pos || end <= this.pos) return;
    this.hash.update(block.subarray(this.pos - offset));
    this.pos = end;
    if (this.writtenEnd() > this.pos) void this.kick().catch((e) => (this.failed ??= e));
  }

  /** End of the contiguous written run that contains `pos` (pos itself when nothing is there). */
  private writtenEnd(): number {
    for (const p of this.parts) if (this.pos >= p.start && this.pos < p.end) return p.start + p.done;
    return this.pos;
  }

  private kick(): Promise<void> {
    return (this.running ??= this.catchUp().finally(() => (this.running = undefined)));
  }

  private async catchUp(): Promise<void> {
    if (!this.hash) return;
    let fh: FileHandle | undefined;
    let buf: Buffer | undefined;
    for (let end = this.writtenEnd(); end > this.pos; end = this.writtenEnd()) {
      fh ??= await this.fh();
      buf ??= Buffer.allocUnsafe(READ_BACK);
      const n = Math.min(READ_BACK, end - this.pos);
      const { bytesRead } = await fh.read(buf, 0, n, this.pos);
      if (bytesRead !== n) throw new Error(`short read-back at ${this.pos}`);
      this.hash.update(buf.subarray(0, n));
      this.pos += n;
      this.readBack += n;
    }
  }

  /** Hashes whatever is still behind the frontier and returns the hex digest (undefined for "none"). */
  async finish(): Promise<string | undefined> {
    if (!this.hash) return undefined;
    while (this.running) await this.running.catch(() => {});
    if (this.failed) throw this.failed;
    await this.kick();
    if (this.pos !== this.size) throw new Error(`hash frontier at ${this.pos} of ${this.size}`);
    return this.hash?.digest("hex");
  }
}
