/**
 * Splitting running parts: an idle connection takes over the upper half of what a running part has
 * still to fetch. In process (connections stay busy to the end, the file is byte-identical) and as a
 * real child process SIGKILLed after splits (the resume fetches no finished byte again).
 */
import { createHash } from "node:crypto";
import { open, readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileJob, type RangeReader } from "../../src/engine/hub/download/file-job.js";
import { runPool } from "../../src/engine/hub/download/pool.js";
import { loadState, type PartState } from "../../src/engine/hub/download/state.js";
import { parseRepoSpec, pull } from "../../src/engine/hub/index.js";
import { runDsr } from "../support/cli.js";
import { bytesFile, patternFile, startHubServer, type HubServer, type SentRange, type ServedFile } from "../support/hub-server.js";
import { tempDir } from "../support/tmp.js";

const MiB = 1 << 20;
const COMMIT = "e".repeat(40);
const one = patternFile("model.safetensors", 24 * MiB + 12345, 21);
const big = patternFile("model.safetensors", 192 * MiB, 22);

let hub: HubServer;
let fast: HubServer;
beforeAll(async () => {
  // Throttled per connection, so splitting is worth it and each test takes a second or three.
  hub = await startHubServer({ repos: [{ id: "org/one", commit: COMMIT, files: [one] }], perConnectionBytesPerSec: 8_000_000 });
  fast = await startHubServer({ repos: [{ id: "org/big", commit: COMMIT, files: [bytesFile("config.json", "{}"), big] }], perConnectionBytesPerSec: 16_000_000 });
});
afterAll(async () => {
  await hub.close();
  await fast.close();
});

const content = (f: ServedFile) => Buffer.from(f.read(0, f.size) as Uint8Array);
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Time-weighted mean number of responses open between the first opening and the last closing. */
function meanOpen(sent: SentRange[]): number {
  const t0 = Math.min(...sent.map((s) => s.openedAt));
  const t1 = Math.max(...sent.map((s) => s.closedAt!));
  return sent.reduce((a, s) => a + (s.closedAt! - s.openedAt), 0) / (t1 - t0);
}

/** Bytes of `sent` ranges that fall inside `done` ranges. */
function overlap(sent: { start: number; end: number }[], done: { start: number; end: number }[]): number {
  let n = 0;
  for (const s of sent) for (const d of done) n += Math.max(0, Math.min(s.end, d.end) - Math.max(s.start, d.start));
  return n;
}

describe("splitting running parts", () => {
  it("leaves a resume state that, read at any moment, claims only bytes already written", async () => {
    const dir = await tempDir();
    const f = patternFile("x.bin", 16 * MiB + 777, 23);
    const data = content(f);
    const partial = join(dir, "x.dsr-partial");
    const job = await FileJob.load({ path: f.path, size: f.size, lfs: true, sha256: sha256(data) }, partial, 6 * MiB);
    // What a resume after a SIGKILL right now would trust: every claimed byte must be on disk and right.
    let checks = 0;
    let maxParts = 0;
    const check = async () => {
      const parts = await loadState(`${partial}.json`, partial, { size: f.size, digest: `sha256:${sha256(data)}` });
      if (!parts) return;
      checks++;
      maxParts = Math.max(maxParts, parts.length);
      const fh = await open(partial, "r");
      for (const p of parts) {
        const got = Buffer.alloc(p.done);
        await fh.read(got, 0, p.done, p.start);
        expect(got.equals(data.subarray(p.start, p.start + p.done)), `part ${p.start}+${p.done}`).toBe(true);
      }
      await fh.close();
    };
    // Requests run at different speeds, so parts (and the slots of split parts) progress unevenly.
    let requests = 0;
    let chunks = 0;
    const read: RangeReader = async (_path, start, end, onChunk) => {
      const step = 16384 * (1 + (requests++ % 5));
      for (let pos = start; pos < end(); ) {
        await new Promise((r) => setImmediate(r));
        const n = Math.min(step, end() - pos);
        if (n <= 0) break;
        if (++chunks % 10 === 0) await check();
        await onChunk(data.subarray(pos, pos + n), pos);
        pos += n;
      }
    };
    let verified = false;
    await runPool([job], 4, read, { onBytes: () => {}, onVerified: async () => void (verified = true) }, () => {}, MiB);
    expect(verified).toBe(true);
    expect(job.splits).toBeGreaterThanOrEqual(2);
    expect(maxParts).toBeGreaterThan(3); // checks saw states with split parts in them
    expect(checks).toBeGreaterThan(20);
    expect((await readFile(partial)).equals(data)).toBe(true);
    await job.close();
  });

  it("does not split into pieces too small to repay a new request's time to first byte", async () => {
    const dir = await tempDir();
    const f = patternFile("y.bin", 16 * MiB, 24);
    const data = content(f);
    // 10 MB/s after a first byte that takes `ttfbMs`; split attempted once ~1.5 MB have arrived (~7 MiB halves).
    const attempt = async (ttfbMs: number) => {
      const job = await FileJob.load({ path: f.path, size: f.size, lfs: true }, join(dir, `y${ttfbMs}.dsr-partial`), 64 * MiB);
      const part = job.nextPart()!;
      let tried: boolean | undefined;
      const read: RangeReader = async (_p, start, end, onChunk) => {
        await new Promise((r) => setTimeout(r, ttfbMs));
        for (let pos = start, n = 0; pos < end(); pos += 100_000, n++) {
          await new Promise((r) => setTimeout(r, 10));
          if (n === 15) tried = job.split(part, MiB) !== undefined;
          await onChunk(data.subarray(pos, Math.min(end(), pos + 100_000)), pos);
          if (tried !== undefined) return; // enough: the answer is in
        }
      };
      await job.runPart(part, read, () => {});
      await job.close();
      return tried;
    };
    // 1 s to first byte at ~10 MB/s: a new request costs ~10 MB of the donor's progress, so 7 MiB halves are refused.
    expect(await attempt(1000)).toBe(false);
    expect(await attempt(0)).toBe(true);
  });

  it("keeps every connection busy to the end of a one-part file and writes it byte-identical", async () => {
    const cache = await tempDir();
    hub.resetStats();
    const r = await pull({
      ref: parseRepoSpec("org/one"),
      hub: { hfEndpoint: hub.hfEndpoint },
      layout: { kind: "hf-cache", cacheDir: cache },
      connections: 4,
      partSize: 64 * MiB, // one part: without splitting, one connection would fetch it all
      minSplitBytes: MiB,
    });
    const sent = hub.stats.sent.filter((s) => s.path === one.path);
    // The 3 idle connections split at once (24 → 12+12 → 6+6+6+6 MiB), and again whenever one runs dry.
    expect(r.splits).toBeGreaterThanOrEqual(3);
    expect(sent.length).toBe(1 + r.splits);
    // Busy: close to 4 responses open on average from the first byte to the last (1 without splits).
    expect(meanOpen(sent)).toBeGreaterThan(3);
    // A shortened read stops at its new end: little is sent beyond what the file needs (socket buffers).
    expect(hub.stats.bytes - one.size).toBeLessThan(4 * MiB);
    // Parts arrived ahead of the hash frontier and were hashed from the page cache.
    expect(r.readBackBytes).toBeGreaterThan(0);
    const blob = join(cache, "models--org--one", "blobs", sha256(content(one)));
    expect((await readFile(blob)).equals(content(one))).toBe(true);
  });

  it("SIGKILL after splits, then resume: no finished byte is fetched again and the file is byte-identical", async () => {
    const home = await tempDir();
    const env = { HF_HOME: home, HF_ENDPOINT: fast.hfEndpoint, HF_TOKEN: "" };
    // 6 parts of 32 MiB on 4 connections (2 s each): the last 2 parts start at ~2/3, and the 2 idle
    // connections split them (4 × 16 MiB, 1 s more).
    const args = ["pull", "org/big", "--connections", "4", "--part-size", "32MiB", "--json"];
    fast.resetStats();
    const child = runDsr(args, { env });
    const requestsOf = () => fast.stats.sent.filter((s) => s.path === big.path).length;
    for (const t0 = Date.now(); requestsOf() < 7; ) {
      if (Date.now() - t0 > 60_000) throw new Error("no split seen");
      await new Promise((r) => setTimeout(r, 10));
    }
    await new Promise((r) => setTimeout(r, 500)); // let the new parts write a 4 MiB block or two
    child.kill("SIGKILL");
    expect((await child).signal).toBe("SIGKILL");

    const blobs = join(home, "hub", "models--org--big", "blobs");
    const hex = sha256(content(big));
    expect(await readdir(blobs)).toContain(`${hex}.dsr-partial`);
    const parts = (await loadState(join(blobs, `${hex}.dsr-partial.json`), join(blobs, `${hex}.dsr-partial`), { size: big.size, digest: `sha256:${hex}` }))!;
    expect(parts).toBeDefined();
    expect(parts.length).toBeGreaterThan(6); // the splits were recorded
    const finished = parts.map((p: PartState) => ({ start: p.start, end: p.start + p.done }));
    const finishedBytes = finished.reduce((a, p) => a + p.end - p.start, 0);
    expect(finishedBytes).toBeGreaterThan(big.size / 2);
    expect(finishedBytes).toBeLessThan(big.size);
    // The split parts themselves have finished bytes (their state slots were recorded).
    expect(parts.slice(6).some((p) => p.done > 0)).toBe(true);

    fast.resetStats();
    const resumed = await runDsr(args, { env });
    expect(resumed.exitCode, String(resumed.stderr)).toBe(0);
    const j = JSON.parse(String(resumed.stdout));
    expect(j.files.find((f: { path: string }) => f.path === big.path).status).toBe("resume");
    const sent = fast.stats.sent.filter((s) => s.path === big.path);
    expect(overlap(sent, finished)).toBe(0);
    expect(j.downloadedBytes).toBe(big.size - finishedBytes);
    const snap = join(home, "hub", "models--org--big", "snapshots", COMMIT, big.path);
    expect((await readFile(snap)).equals(content(big))).toBe(true);
    expect((await readdir(blobs)).filter((b) => b.includes("."))).toEqual([]);
  });
});
