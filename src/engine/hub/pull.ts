/**
 * `pull` as an engine operation: list the repo at a pinned commit, decide per file whether it is in
 * place, resumable or new, check free disk space against the bytes still needed, then download over
 * N connections (download/pool.ts) and move each verified file into the chosen layout (layout.ts).
 *
 * @huggingface/hub serves the listing (listFiles, through our retrying fetch); its download side is
 * not used because it fetches one file at a time with no ranged parallelism, resume, retry, hash
 * check or HF_ENDPOINT support, and has no ModelScope (facts §1.9–1.10).
 */
import { mkdir } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { dirname } from "node:path";
import picomatch from "picomatch";
import { DsrError, usageError } from "../errors.js";
import { freeBytes } from "./disk.js";
import { FileJob, SyncLane, digestOf } from "./download/file-job.js";
import { HashPool } from "./download/hash-pool.js";
import { runPool } from "./download/pool.js";
import { hashFile } from "./hash-file.js";
import { acquireLock } from "./lock.js";
import { makeLayout, type Layout, type LayoutSpec } from "./layout.js";
import { openRemoteRepo } from "./remote.js";
import type { RepoRef } from "./repo-spec.js";
import type { HubFile, HubOptions } from "./types.js";

export const DEFAULT_CONNECTIONS = 16;
export const DEFAULT_PART_SIZE = 64 << 20;

export interface PullOptions {
  ref: RepoRef;
  hub: HubOptions;
  layout: LayoutSpec;
  include?: string[];
  exclude?: string[];
  connections?: number;
  partSize?: number;
  /** Smallest piece a running part is split into when a connection would otherwise idle (default 2 MiB; more on slow-starting links). */
  minSplitBytes?: number;
  dryRun?: boolean;
  signal?: AbortSignal;
  onEvent?: (e: PullEvent) => void;
  /** Free-space probe (default: statfs on the target filesystem). */
  freeSpace?: (path: string) => Promise<number>;
  /** Worker threads for SHA-256 (default: CPUs − 1, 1 to 4; 0 hashes on the main thread). */
  hashThreads?: number;
  /** How often resume state is made durable with fdatasync (default 10 s; SIGKILL-safe progress is recorded per 1 MiB block regardless). */
  stateIntervalMs?: number;
}

export type FileStatus = "present" | "resume" | "download";

export interface PlannedFile {
  path: string;
  size: number;
  lfs: boolean;
  sha256?: string;
  gitSha1?: string;
  status: FileStatus;
  /** Bytes already on disk (whole size when present, the finished parts when resuming). */
  haveBytes: number;
}

export interface PullPlan {
  source: RepoRef["source"];
  repo: string;
  revision: string;
  commit: string;
  layout: Layout["kind"];
  modelPath: string;
  files: PlannedFile[];
  totalBytes: number;
  haveBytes: number;
  needBytes: number;
  freeBytes: number;
}

export interface PullResult extends PullPlan {
  downloadedBytes: number;
  seconds: number;
  bytesPerSecond: number;
  requests: number;
  /** Bytes hashed by reading back from disk instead of as they arrived. */
  readBackBytes: number;
  /** Files fetched a second time after a hash mismatch. */
  refetched: string[];
  /** Running parts split to keep idle connections busy (the tail of a pull). */
  splits: number;
}

export type PullEvent =
  | { type: "plan"; plan: PullPlan }
  | { type: "adopt"; path: string; ok: boolean }
  | { type: "file-start"; path: string; size: number; haveBytes: number }
  | { type: "bytes"; path: string; n: number }
  | { type: "file-done"; path: string; size: number; downloadedBytes: number; seconds: number; digest?: string }
  | { type: "file-mismatch"; path: string; expected?: string; actual?: string; willRetry: boolean };

export function selectFiles(files: HubFile[], include?: string[], exclude?: string[]): HubFile[] {
  // basename: a pattern without "/" also matches nested files ("*.json" matches "sub/x.json"), like
  // huggingface_hub's fnmatch patterns where "*" crosses "/".
  const inc = include?.length ? picomatch(include, { dot: true, basename: true }) : () => true;
  const exc = exclude?.length ? picomatch(exclude, { dot: true, basename: true }) : () => false;
  return files.filter((f) => inc(f.path) && !exc(f.path));
}

export async function pull(o: PullOptions): Promise<PullResult> {
  const t0 = performance.now();
  const emit = o.onEvent ?? (() => {});
  const internal = new AbortController();
  const signal = o.signal ? AbortSignal.any([o.signal, internal.signal]) : internal.signal;
  const remote = await openRemoteRepo(o.ref, { ...o.hub, signal });
  const files = selectFiles(remote.files, o.include, o.exclude);
  if (files.length === 0) {
    throw usageError(`no file of ${o.ref.repoId} (${remote.files.length} files) matches --include/--exclude`, "check the glob patterns; quote them so the shell does not expand them");
  }
  if (remote.gated) {
    // The listing of a gated repo is public; find out now (one 1-byte read) whether this token may
    // read its files, before any partial file is created.
    const probe = files.find((f) => f.size > 0);
    if (probe) await remote.readRange(probe.path, 0, 1, () => {});
  }
  const layout = makeLayout(o.layout, o.ref, remote.revision, remote.commit);
  const partSize = o.partSize ?? DEFAULT_PART_SIZE;

  // Files sharing a layout key (identical HF blobs) are fetched once and placed under every path.
  const groups = new Map<string, HubFile[]>();
  for (const f of files) {
    const k = layout.key(f);
    groups.set(k, [...(groups.get(k) ?? []), f]);
  }
  const release = o.dryRun ? undefined : await acquireLock(layout.lockPath, `${o.ref.repoId} into ${layout.modelPath}`);
  const threads = o.dryRun ? 0 : (o.hashThreads ?? Math.min(4, Math.max(1, availableParallelism() - 1)));
  const hashPool = threads > 0 ? new HashPool(threads) : undefined;
  try {
    return await transfer(o, remote, layout, files, groups, hashPool, { t0, emit, internal, partSize, signal });
  } finally {
    await hashPool?.close();
    await release?.();
  }
}

async function transfer(
  o: PullOptions,
  remote: Awaited<ReturnType<typeof openRemoteRepo>>,
  layout: Layout,
  files: HubFile[],
  groups: Map<string, HubFile[]>,
  hashPool: HashPool | undefined,
  { t0, emit, internal, partSize, signal }: { t0: number; emit: (e: PullEvent) => void; internal: AbortController; partSize: number; signal: AbortSignal },
): Promise<PullResult> {
  const planned = new Map<string, PlannedFile>();
  const lane = new SyncLane();
  const present: HubFile[][] = [];
  const jobs: FileJob[] = [];
  const groupOf = new Map<FileJob, HubFile[]>();
  for (const group of groups.values()) {
    const f = group[0];
    let status = await layout.check(f);
    if (status === "unverified") {
      // A same-size file dsr did not write (e.g. from huggingface-cli): adopt it if its hash matches.
      const d = digestOf(f);
      const ok = d.algo !== "none" && (await hashFile(layout.contentPath(f), f.size, d, undefined, signal)) === d.hex;
      emit({ type: "adopt", path: f.path, ok });
      status = ok ? "present" : "missing";
    }
    const plan = (st: FileStatus, have: number) => group.forEach((g) => planned.set(g.path, { path: g.path, size: g.size, lfs: g.lfs, sha256: g.sha256, gitSha1: g.gitSha1, status: st, haveBytes: have }));
    if (status === "present") {
      present.push(group);
      plan("present", f.size);
      continue;
    }
    const job = await FileJob.load(f, layout.partialPath(f), partSize, hashPool, lane);
    jobs.push(job);
    groupOf.set(job, group);
    plan(job.resumedBytes > 0 ? "resume" : "download", job.resumedBytes);
  }
  const list = files.map((f) => planned.get(f.path)!);
  const totalBytes = list.reduce((a, f) => a + f.size, 0);
  const needBytes = jobs.reduce((a, j) => a + j.file.size - j.resumedBytes, 0);
  const plan: PullPlan = {
    source: o.ref.source,
    repo: o.ref.repoId,
    revision: remote.revision,
    commit: remote.commit,
    layout: layout.kind,
    modelPath: layout.modelPath,
    files: list,
    totalBytes,
    haveBytes: totalBytes - needBytes,
    needBytes,
    freeBytes: await (o.freeSpace ?? freeBytes)(layout.diskPath),
  };
  emit({ type: "plan", plan });
  const result = (downloadedBytes: number, readBackBytes: number, refetched: string[], splits: number): PullResult => {
    const seconds = (performance.now() - t0) / 1000;
    return { ...plan, downloadedBytes, seconds, bytesPerSecond: downloadedBytes / Math.max(seconds, 1e-9), requests: remote.stats().requests, readBackBytes, refetched, splits };
  };
  if (o.dryRun) return result(0, 0, [], 0);

  // Partial files are pre-sized (sparse), so a short disk fails here, not 600 GB in.
  if (needBytes > plan.freeBytes) {
    throw new DsrError("DSR_DISK_FULL", `not enough disk space for ${o.ref.repoId}: ${gib(needBytes)} GiB still to download, ${gib(plan.freeBytes)} GiB free at ${layout.diskPath}`, {
      hint: "free some space, narrow the download with --include/--exclude, or point HF_HUB_CACHE / --local-dir at a bigger disk",
      details: { needBytes, freeBytes: plan.freeBytes, path: layout.diskPath },
    });
  }
  for (const group of present) for (const f of group) await layout.place(f);
  for (const j of jobs) await mkdir(dirname(j.partialPath), { recursive: true });

  let downloaded = 0;
  const refetched: string[] = [];
  const started = new Map<FileJob, { t: number; bytes: number }>();
  let sweeping = false;
  const saver = setInterval(() => {
    if (sweeping) return; // the previous sweep is still waiting for its fdatasyncs
    sweeping = true;
    void (async () => {
      for (const j of jobs) if (!j.settled) await j.save().catch(() => {});
    })().finally(() => (sweeping = false));
  }, o.stateIntervalMs ?? 10_000);
  try {
    await runPool(
      jobs,
      o.connections ?? DEFAULT_CONNECTIONS,
      remote.readRange,
      {
        onBytes(job, n) {
          let s = started.get(job);
          if (!s) {
            started.set(job, (s = { t: performance.now(), bytes: 0 }));
            emit({ type: "file-start", path: job.file.path, size: job.file.size, haveBytes: job.resumedBytes });
          }
          s.bytes += n;
          downloaded += n;
          emit({ type: "bytes", path: job.file.path, n });
        },
        async onVerified(job) {
          await job.seal();
          const group = groupOf.get(job)!;
          await layout.place(group[0], job.partialPath);
          for (const f of group.slice(1)) await layout.place(f);
          await job.dropState();
          const s = started.get(job);
          emit({ type: "file-done", path: job.file.path, size: job.file.size, downloadedBytes: s?.bytes ?? 0, seconds: s ? (performance.now() - s.t) / 1000 : 0, digest: "hex" in job.digest ? job.digest.hex : undefined });
        },
        onMismatch(job, actual) {
          const willRetry = job.attempts < 2;
          if (willRetry) refetched.push(job.file.path);
          emit({ type: "file-mismatch", path: job.file.path, expected: "hex" in job.digest ? job.digest.hex : undefined, actual, willRetry });
        },
      },
      () => internal.abort(new Error("stopping after an error")),
      o.minSplitBytes,
    );
  } finally {
    clearInterval(saver);
    // Whatever happened, unfinished jobs leave a durable state for the next run.
    await Promise.all(jobs.filter((j) => !j.settled).map(async (j) => (j.started ? j.save(true) : undefined)));
    await Promise.all(jobs.map((j) => j.close()));
  }
  await layout.finish();
  return result(downloaded, jobs.reduce((a, j) => a + j.readBack, 0), refetched, jobs.reduce((a, j) => a + j.splits, 0));
}

const gib = (n: number) => (n / 2 ** 30).toFixed(2);
