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
import { createHash } from "node:crypto";
import type { FileHandle } from "node:fs/promises";
import type { HashPool, HashSink } from "./hash-pool.js";
import type { PartState } from "./state.js";

export type DigestKind = { algo: "sha256"; hex: string } | { algo: "gitsha1"; hex: string } | { algo: "none" };

const READ_BACK = 4 << 20;

function localSink(algo: "sha256" | "gitsha1", prefix: string): HashSink {
  const h = algo === "sha256" ? createHash("sha256") : createHash("sha1").update(prefix);
  return { update: (d) => void h.update(d), digest: async () => h.digest("hex") };
}

export class OrderedHasher {
  private readonly sink?: HashSink;
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
    pool?: HashPool,
  ) {
    if (kind.algo !== "none") {
      const prefix = kind.algo === "gitsha1" ? `blob ${size}\0` : "";
      this.sink = pool ? pool.open(kind.algo, prefix) : localSink(kind.algo, prefix);
    }
  }

  /**
   * A block [offset, offset+len) was just written to disk. Hashed now if it extends the frontier;
   * `owned` blocks may be handed to the hash thread without a copy (the caller must not reuse them).
   * Resolves when the hash thread has room again (backpressure).
   */
  offer(block: Uint8Array, offset: number, owned = false): void | Promise<void> {
    const end = offset + block.byteLength;
    // Ahead of the frontier, or a read-back is running (it will cover this block from disk): skip.
    if (!this.sink || this.running || offset > this.pos || end <= this.pos) return;
    const wait = this.sink.update(block.subarray(this.pos - offset), owned && this.pos === offset);
    this.pos = end;
    if (this.writtenEnd() > this.pos) void this.kick().catch((e) => (this.failed ??= e));
    return wait;
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
    if (!this.sink) return;
    let fh: FileHandle | undefined;
    for (let end = this.writtenEnd(); end > this.pos; end = this.writtenEnd()) {
      fh ??= await this.fh();
      const n = Math.min(READ_BACK, end - this.pos);
      const buf = Buffer.allocUnsafeSlow(n); // its own ArrayBuffer: moved to the hash thread as is
      const { bytesRead } = await fh.read(buf, 0, n, this.pos);
      if (bytesRead !== n) throw new Error(`short read-back at ${this.pos}`);
      this.pos += n;
      this.readBack += n;
      await this.sink.update(buf, true);
    }
  }

  /** Hashes whatever is still behind the frontier and returns the hex digest (undefined for "none"). */
  async finish(): Promise<string | undefined> {
    if (!this.sink) return undefined;
    while (this.running) await this.running.catch(() => {});
    if (this.failed) throw this.failed;
    await this.kick();
    if (this.pos !== this.size) throw new Error(`hash frontier at ${this.pos} of ${this.size}`);
    return this.sink.digest();
  }
}
