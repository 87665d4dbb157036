/**
 * Reads many shard headers with bounded parallelism and as few round trips as possible.
 *
 * Each read is speculative: one range [0, guess) that should hold the 8-byte prefix and the whole
 * JSON header; when the guess is short, readHeader fetches only the remainder (a second request).
 * The guess comes from the index, which names every tensor of a shard: a header is Σ(quoted
 * names) + count × (bytes per entry for dtype/shape/offsets). The per-entry figure is learned from
 * the headers already read (the first shard is read alone to learn it), and a small margin keeps
 * misses rare while over-reading stays a few percent. Without an index, the largest header seen
 * (×1.1) is the guess. Target on R1's 163 shards: ≤ 1.1 requests per shard, ≤ 1.3 × header bytes.
 */
import { ExitCode, isDsrError, interruptedError } from "../errors.js";
import { readHeader, type HeaderReadResult } from "../tensors/read.js";
import type { ByteSource } from "../tensors/source.js";

/** Bytes a JSON header spends on one entry beyond its quoted name, before any header was seen. */
const COLD_PER_ENTRY = 100;
const MARGIN = 1.06;
const SLACK = 256;
/** huggingface_hub's first request when nothing is known. */
const DEFAULT_GUESS = 100_001;

export class HeaderSizeEstimator {
  private entryBytes = 0;
  private entries = 0;
  private maxHeader = 0;

  /** `names`: tensor names the index places in this shard, when an index exists. */
  guess(names: readonly string[] | undefined): number {
    if (names && names.length > 0) {
      const perEntry = this.entries > 0 ? (this.entryBytes / this.entries) * MARGIN : COLD_PER_ENTRY;
      return Math.ceil(8 + namesBytes(names) + names.length * perEntry + SLACK);
    }
    return this.maxHeader > 0 ? Math.ceil(this.maxHeader * 1.1) : DEFAULT_GUESS;
  }

  learn(headerBytes: number, names: readonly string[] | undefined): void {
    this.maxHeader = Math.max(this.maxHeader, headerBytes);
    if (names && names.length > 0) {
      this.entryBytes += headerBytes - 8 - namesBytes(names);
      this.entries += names.length;
    }
  }

  get learned(): boolean {
    return this.maxHeader > 0;
  }
}

function namesBytes(names: readonly string[]): number {
  let n = 2; // {}
  for (const s of names) n += Buffer.byteLength(s) + 4; // "name": and a comma
  return n;
}

export interface ShardJob {
  file: string;
  source: ByteSource;
  names?: readonly string[];
}

export type ShardResult = { file: string; ok: true; read: HeaderReadResult } | { file: string; ok: false; error: Error; tensor?: string };

export interface ReadHeadersOptions {
  concurrency: number;
  signal?: AbortSignal;
  onShard?: (r: ShardResult) => void;
}

/**
 * Reads all headers; a header that fails validation (an integrity DsrError) becomes a failed
 * result for that shard, anything else (network, abort) stops the whole read.
 */
export async function readHeaders(jobs: readonly ShardJob[], opts: ReadHeadersOptions): Promise<ShardResult[]> {
  const est = new HeaderSizeEstimator();
  const results: ShardResult[] = new Array(jobs.length);
  const one = async (i: number) => {
    if (opts.signal?.aborted) throw interruptedError("inspect");
    const job = jobs[i];
    let r: ShardResult;
    try {
      const size = await job.source.size();
      const guess = est.guess(job.names);
      const read = await readHeader(job.source, { speculativeBytes: size === undefined ? guess : Math.min(guess, size) });
      est.learn(read.header.dataStart, job.names);
      r = { file: job.file, ok: true, read };
    } catch (e) {
      if (!isDsrError(e) || e.exitCode !== ExitCode.integrity) throw e;
      const tensor = e.code === "DSR_ST_INCOMPLETE_BUFFER" ? await cutShortTensor(job.source).catch(() => undefined) : undefined;
      r = { file: job.file, ok: false, error: e, tensor };
    } finally {
      await job.source.close?.().catch(() => {});
    }
    results[i] = r;
    opts.onShard?.(r);
  };
  let next = 0;
  // The first shard alone teaches the estimator; then a fixed pool of workers.
  while (next < jobs.length && !est.learned) await one(next++);
  const worker = async () => {
    while (next < jobs.length) await one(next++);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency, jobs.length - next)) }, worker));
  return results;
}

/** For a truncated file: the first tensor (in data order) whose bytes run past the end of the file. */
async function cutShortTensor(src: ByteSource): Promise<string | undefined> {
  const size = await src.size();
  if (size === undefined) return undefined;
  // Re-read the header without the file-size check, which is what rejected it.
  const { header } = await readHeader({ name: src.name, size: async () => undefined, read: (s, l) => src.read(s, Math.min(l, size - s)) });
  return header.tensors.find((t) => header.dataStart + t.end > size)?.name;
}
