/** The pull engine against the loopback hub: layouts, parallel ranged parts, faults, verification, resume. */
import { createHash } from "node:crypto";
import { spawnSync } from "node:child_process";
import { lstat, mkdir, readFile, readdir, readlink, realpath, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseRepoSpec, pull, verifyDownload, type PullOptions } from "../../src/engine/hub/index.js";
import { DsrError } from "../../src/engine/errors.js";
import { bytesFile, patternFile, startHubServer, type HubServer, type ServedFile } from "../support/hub-server.js";
import { tempDir } from "../support/tmp.js";

const PART = 256 << 10;
const files: ServedFile[] = [
  bytesFile("config.json", '{"model_type":"qwen2"}'),
  bytesFile("tokenizer.json", '{"version":"1.0"}'),
  patternFile("model-00001-of-00003.safetensors", 1_500_000, 1), // 6 parts
  patternFile("model-00002-of-00003.safetensors", 700_001, 2),
  patternFile("model-00003-of-00003.safetensors", 100_000, 3),
  patternFile("sub/dir/extra.bin", 300_000, 4),
  bytesFile("empty.txt", ""),
];
const contentOf = async (f: ServedFile) => Buffer.from(await f.read(0, f.size));
const COMMIT = "c".repeat(40);

let hub: HubServer;
beforeAll(async () => {
  hub = await startHubServer({ repos: [{ id: "org/m", commit: COMMIT, files }] });
});
afterAll(() => hub.close());

const fast = { retry: { attempts: 5, baseDelayMs: 5, maxDelayMs: 20 }, stallTimeoutMs: 400 };
function opts(spec: string, layout: PullOptions["layout"], extra: Partial<PullOptions> = {}): PullOptions {
  const ref = parseRepoSpec(spec);
  return { ref, hub: { hfEndpoint: hub.hfEndpoint, msEndpoint: hub.msEndpoint, ...fast }, layout, partSize: PART, connections: 4, stateIntervalMs: 50, ...extra };
}

async function expectSnapshot(cache: string) {
  const repoDir = join(cache, "models--org--m");
  expect(await readFile(join(repoDir, "refs", "main"), "utf8")).toBe(COMMIT); // no trailing newline
  const snap = join(repoDir, "snapshots", COMMIT);
  for (const f of files) {
    const link = join(snap, f.path);
    expect((await lstat(link)).isSymbolicLink(), f.path).toBe(true);
    const target = await readlink(link);
    const depth = f.path.split("/").length - 1;
    expect(target).toMatch(new RegExp(`^${"\\.\\./".repeat(2 + depth)}blobs/[0-9a-f]{40,64}$`));
    const blobName = target.split("/").pop()!;
    const content = await contentOf(f);
    const want = f.lfs ? createHash("sha256").update(content).digest("hex") : createHash("sha1").update(`blob ${f.size}\0`).update(content).digest("hex");
    expect(blobName, f.path).toBe(want);
    expect((await readFile(link)).equals(content), f.path).toBe(true);
  }
  const blobs = await readdir(join(repoDir, "blobs"));
  expect(blobs.filter((b) => b.includes("."))).toEqual([]); // no partials or state left
}

describe("pull into the Hugging Face cache", () => {
  it("downloads in parallel ranged parts, verifies, and writes blobs/snapshots/refs", async () => {
    const cache = await tempDir();
    hub.resetStats();
    const events: string[] = [];
    const r = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }, { onEvent: (e) => e.type === "file-done" && events.push(e.path) }));
    expect(r.commit).toBe(COMMIT);
    expect(r.modelPath).toBe(join(cache, "models--org--m", "snapshots", COMMIT));
    expect(r.downloadedBytes).toBe(files.reduce((a, f) => a + f.size, 0));
    expect(events.sort()).toEqual(files.map((f) => f.path).sort());
    expect(hub.stats.rangeRequests).toBeGreaterThanOrEqual(6 + 3 + 1 + 2);
    await expectSnapshot(cache);

    // A second run transfers nothing but the listing.
    hub.resetStats();
    const again = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }));
    expect(again.downloadedBytes).toBe(0);
    expect(again.files.every((f) => f.status === "present")).toBe(true);
    expect(hub.stats.bytes).toBe(0);
    expect(hub.stats.requests).toBe(2); // repo info + one tree page
  });

  it("survives dropped connections, 500s, 429 + Retry-After and stalls with identical bytes", async () => {
    for (const faults of [
      { drop: { afterBytes: 100_000, times: 3 } },
      { error500: { times: 3 } },
      { rateLimit: { times: 2, retryAfterSec: 0 } },
      { stall: { afterBytes: 50_000, ms: 5_000, times: 2 } },
      { slow: { bytesPerSec: 4_000_000 } },
    ]) {
      const cache = await tempDir();
      hub.setFaults(structuredClone(faults));
      await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }));
      hub.setFaults({});
      await expectSnapshot(cache);
    }
  });

  it("re-fetches a file whose hash is wrong once, and fails naming it when it stays wrong", async () => {
    const cache = await tempDir();
    const path = "model-00002-of-00003.safetensors";
    hub.setFaults({ corrupt: { path, offset: 500_000, times: 1 } });
    const r = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }));
    expect(r.refetched).toEqual([path]);
    await expectSnapshot(cache);

    const cache2 = await tempDir();
    hub.setFaults({ corrupt: { path, offset: 10 } });
    const err = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache2 })).catch((e) => e);
    hub.setFaults({});
    expect(err).toBeInstanceOf(DsrError);
    expect(err.code).toBe("DSR_PULL_HASH_MISMATCH");
    expect(err.exitCode).toBe(3);
    expect(err.message).toContain(path);
    // The bad file never reached blobs/ under its final name nor the snapshot.
    const blobs = await readdir(join(cache2, "models--org--m", "blobs"));
    const want = createHash("sha256").update(await contentOf(files[3])).digest("hex");
    expect(blobs).not.toContain(want);
  });

  it("dry-run plans without writing; a short disk fails before any byte is fetched", async () => {
    const cache = await tempDir();
    hub.resetStats();
    const r = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }, { dryRun: true, include: ["*.safetensors"] }));
    expect(r.files.map((f) => f.path)).toEqual(files.filter((f) => f.path.endsWith(".safetensors")).map((f) => f.path));
    expect(r.needBytes).toBe(2_300_001);
    expect(await readdir(cache)).toEqual([]);
    const err = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }, { freeSpace: async () => 1000 })).catch((e) => e);
    expect(err.code).toBe("DSR_DISK_FULL");
    expect(err.message).toMatch(/not enough disk space for org\/m/);
    expect(hub.stats.bytes).toBe(0);
  });

  it("--verify finds a corrupted blob and removes it so the next pull re-fetches it", async () => {
    const cache = await tempDir();
    await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }));
    const link = join(cache, "models--org--m", "snapshots", COMMIT, "model-00001-of-00003.safetensors");
    const blob = await realpath(link);
    const buf = await readFile(blob);
    buf[12345] ^= 1;
    await writeFile(blob, buf);
    const v = await verifyDownload({ ...opts("org/m", { kind: "hf-cache", cacheDir: cache }) });
    expect(v.corrupt).toBe(1);
    expect(v.files.find((f) => f.status === "corrupt")?.path).toBe("model-00001-of-00003.safetensors");
    expect(v.ok).toBe(files.length - 1);
    hub.resetStats();
    const r = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }));
    expect(r.downloadedBytes).toBe(1_500_000);
    await expectSnapshot(cache);
  });
});

describe("one pull per target", () => {
  it("refuses to run beside a live pull of the same target and takes over a stale lock", async () => {
    const cache = await tempDir();
    const lock = join(cache, ".locks", "models--org--m", "dsr-pull.lock");
    await mkdir(dirname(lock), { recursive: true });
    await writeFile(lock, String(process.ppid)); // a live process that is not us
    const err = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache })).catch((e) => e);
    expect(err.code).toBe("DSR_PULL_LOCKED");
    expect(err.message).toContain(`pid ${process.ppid}`);
    const gone = spawnSync(process.execPath, ["-e", ""]).pid!; // exited: its pid is stale
    await writeFile(lock, String(gone));
    const r = await pull(opts("org/m", { kind: "hf-cache", cacheDir: cache }));
    expect(r.downloadedBytes).toBeGreaterThan(0);
    await expect(stat(lock)).rejects.toThrow(); // released
  });
});

describe("plain-file layouts", () => {
  it("ModelScope source → ModelScope cache layout with index files", async () => {
    const cache = await tempDir();
    const r = await pull(opts("ms:org/m", { kind: "ms-cache", cacheDir: cache }));
    const dir = join(cache, "models", "org", "m");
    expect(r.modelPath).toBe(dir);
    for (const f of files) expect((await readFile(join(dir, f.path))).equals(await contentOf(f)), f.path).toBe(true);
    expect(await readFile(join(dir, ".mv"), "utf8")).toMatch(/^Revision:master,CreatedAt:\d+$/);
    const mdl = await readFile(join(dir, ".mdl"));
    expect(mdl.subarray(0, 2)).toEqual(Buffer.from([0x80, 0x02]));
    expect(mdl.toString("latin1")).toContain("org/m");
    const again = await pull(opts("ms:org/m", { kind: "ms-cache", cacheDir: cache }));
    expect(again.downloadedBytes).toBe(0);
  });

  it("--local-dir writes plain files; a same-size foreign file is hashed and adopted, a wrong one replaced", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "config.json"), '{"model_type":"qwen2"}'); // right content, not written by dsr
    await writeFile(join(dir, "tokenizer.json"), '{"version":"9.9"}'); // same size, wrong content
    hub.resetStats();
    const r = await pull(opts("org/m", { kind: "local-dir", dir }));
    expect(r.files.find((f) => f.path === "config.json")?.status).toBe("present");
    expect(r.files.find((f) => f.path === "tokenizer.json")?.status).toBe("download");
    for (const f of files) expect((await readFile(join(dir, f.path))).equals(await contentOf(f)), f.path).toBe(true);
    const meta = await readFile(join(dir, ".cache", "huggingface", "download", "sub", "dir", "extra.bin.metadata"), "utf8");
    expect(meta.split("\n")[0]).toBe(COMMIT);
    expect((await stat(join(dir, "sub", "dir", "extra.bin"))).isFile()).toBe(true);
  });
});
