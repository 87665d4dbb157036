/**
 * Runs file jobs over N connections. Which part goes next:
 *  1. the next part of a file that has no part running — started files first, then new files in
 *     listing order. With at least as many files left as connections, every file streams in order
 *     on one connection, so its hash is computed live from memory (hasher.ts);
 *  2. when every remaining file already has a connection, split: the lowest free part of the file
 *     with the most bytes not yet assigned (the tail of a pull, or one huge file);
 *  3. when no part is free at all, split a running one: the running part with the most bytes still
 *     to come gives the upper half of them to this connection (FileJob.split), unless that would
 *     leave a piece under `minSplit` or too small to repay a new request's time to first byte.
 *     Without this, the last parts of a pull run on a few connections while the others sit idle
 *     (measured at 16 × 10 MB/s: 61% of the connections' ceiling during the transfer, 95% with it).
 * A job whose last part lands is verified (and fsynced, renamed) in the background while its
 * connection takes the next part: a hash mismatch resets the job once (fetched again from scratch),
 * a second mismatch fails naming the file.
 */
import { DsrError, integrityError } from "../../errors.js";
import type { FileJob, RangeReader } from "./file-job.js";
import type { PartState } from "./state.js";

export interface PoolCallbacks {
  onBytes(job: FileJob, n: number): void;
  /** The job's content is verified; move it into place. */
  onVerified(job: FileJob): Promise<void>;
  onMismatch?(job: FileJob, actual: string | undefined): void;
}

/**
 * Default smallest piece a running part is split into. FileJob.split raises it per part to twice
 * what the part's connection fetches during one time-to-first-byte (a far CDN: larger pieces).
 */
export const MIN_SPLIT = 2 << 20;

type Pick = { job: FileJob; part: PartState; recorded?: Promise<void> };

function pick(jobs: FileJob[], minSplit: number): Pick | undefined {
  let fresh: Pick | undefined;
  for (const job of jobs) {
    if (job.active > 0) continue;
    const part = job.nextPart();
    if (!part) continue;
    if (job.started) return { job, part };
    fresh ??= { job, part };
  }
  if (fresh) return fresh;
  let best: FileJob | undefined;
  for (const job of jobs) if (job.nextPart() && (!best || job.unassignedBytes() > best.unassignedBytes())) best = job;
  if (best) return { job: best, part: best.nextPart()! };
  let donor: { job: FileJob; part: PartState; left: number } | undefined;
  for (const job of jobs) {
    const r = job.largestRunning();
    if (r && (!donor || r.left > donor.left)) donor = { job, ...r };
  }
  const split = donor?.job.split(donor.part, minSplit);
  return split && { job: donor!.job, ...split };
}

export async function runPool(jobs: FileJob[], connections: number, read: RangeReader, cb: PoolCallbacks, abort: () => void, minSplit = MIN_SPLIT): Promise<void> {
  let failure: unknown;
  let waiters: (() => void)[] = [];
  const wake = () => {
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  };
  const pending = new Set(jobs.filter((j) => !j.settled));

  const finishJob = async (job: FileJob) => {
    const { ok, actual } = await job.verify();
    if (ok) {
      await cb.onVerified(job);
      job.settled = true;
      pending.delete(job);
      return;
    }
    cb.onMismatch?.(job, actual);
    if (job.attempts >= 2) {
      throw integrityError("DSR_PULL_HASH_MISMATCH", `${job.file.path}: ${job.digest.algo} mismatch after re-fetching it (expected ${"hex" in job.digest ? job.digest.hex : "?"}, got ${actual})`, {
        hint: "the hub or a proxy is serving corrupt data for this file; nothing was moved into place — retry later or try the other hub (--source)",
        details: { file: job.file.path, expected: "hex" in job.digest ? job.digest.hex : undefined, actual },
      });
    }
    await job.reset();
  };

  // Verification and the fsync + rename of a finished file run beside the transfer: the connection
  // that fetched the last part moves on at once instead of waiting for the disk.
  const finishing = new Set<Promise<void>>();
  const startFinish = (job: FileJob) => {
    job.finishing = true;
    const p: Promise<void> = finishJob(job)
      .catch((e) => {
        if (!failure || (isInterrupt(failure) && !isInterrupt(e))) failure = e;
        abort();
      })
      .finally(() => {
        job.finishing = false;
        finishing.delete(p);
        wake();
      });
    finishing.add(p);
  };

  const worker = async () => {
    while (!failure && pending.size > 0) {
      const next = pick(jobs.filter((j) => pending.has(j)), minSplit);
      if (!next) {
        // Nothing free right now: a running part or a verification may free parts (a reset) or end the pull.
        await new Promise<void>((r) => waiters.push(r));
        continue;
      }
      const { job, part, recorded } = next;
      try {
        await job.runPart(part, read, (n) => cb.onBytes(job, n), recorded);
        if (job.complete && job.active === 0 && !job.settled && !job.finishing) startFinish(job);
      } catch (e) {
        // Keep the first real error; interruptions caused by abort() below only fill an empty slot.
        if (!failure || (isInterrupt(failure) && !isInterrupt(e))) failure = e;
        abort();
      } finally {
        wake();
      }
    }
    wake();
  };

  // Jobs with no bytes to fetch (empty files, or fully resumed ones) go straight to verification.
  for (const job of jobs) {
    if (pending.has(job) && job.complete) {
      try {
        await finishJob(job);
      } catch (e) {
        failure = e;
      }
    }
  }
  if (!failure) await Promise.all(Array.from({ length: Math.max(1, connections) }, worker));
  while (finishing.size > 0) await Promise.all([...finishing]);
  if (failure) throw failure;
}

const isInterrupt = (e: unknown) => e instanceof DsrError && e.code === "DSR_INTERRUPTED";
