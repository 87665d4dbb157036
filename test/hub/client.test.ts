/** The hub client (HF + ModelScope) against the loopback hub: listing, ranged reads, auth, errors, retries. */
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openRemoteRepo, parseRepoSpec, type HubOptions, type RepoRef } from "../../src/engine/hub/index.js";
import { DsrError } from "../../src/engine/errors.js";
import { readHeader, readHeaderFromFile } from "../../src/engine/tensors/read.js";
import { bytesFile, patternFile, servedRepoFromDir, startHubServer, type HubServer } from "../support/hub-server.js";
import { TINY_R1 } from "../support/cli.js";

const TOKEN = "hf_testtoken123";
let hub: HubServer;
const big = patternFile("weights/model-00001-of-00002.safetensors", 3_000_000, 1);

beforeAll(async () => {
  hub = await startHubServer({
    token: TOKEN,
    treePageSize: 2,
    repos: [
      await servedRepoFromDir("tiny/r1", TINY_R1),
      { id: "org/big", files: [bytesFile("config.json", '{"a":1}'), big, patternFile("b.bin", 1000, 2)], branches: { main: "a".repeat(40), master: "a".repeat(40), v1: "b".repeat(40) } },
      { id: "org/private", private: true, files: [patternFile("w.safetensors", 5000, 3)] },
      { id: "org/gated", gated: true, files: [bytesFile("config.json", "{}")] },
      { id: "org/gated-ok", gated: "approved", files: [patternFile("w.bin", 4096, 4)] },
    ],
  });
});
afterAll(() => hub.close());

const fast: Partial<HubOptions> = { retry: { attempts: 4, baseDelayMs: 5, maxDelayMs: 20 } };
const hf = (spec: string, extra: Partial<HubOptions> = {}) => openRemoteRepo(parseRepoSpec(spec), { hfEndpoint: hub.hfEndpoint, msEndpoint: hub.msEndpoint, ...fast, ...extra });
const ms = (spec: string, extra: Partial<HubOptions> = {}) => openRemoteRepo(parseRepoSpec(spec, "modelscope"), { hfEndpoint: hub.hfEndpoint, msEndpoint: hub.msEndpoint, ...fast, ...extra });
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof DsrError) return `${e.code}: ${e.message}`;
    throw e;
  }
  return "no error";
}

describe("Hugging Face protocol", () => {
  it("resolves the revision to a commit and lists the tree across Link pages", async () => {
    hub.resetStats();
    const repo = await hf("org/big");
    expect(repo.commit).toBe("a".repeat(40));
    expect(repo.files.map((f) => f.path)).toEqual(["b.bin", "config.json", "weights/model-00001-of-00002.safetensors"]);
    // 1 repo info + 2 pages of 2 entries (the "weights" directory entry is skipped) → 3 requests.
    expect(hub.stats.requests).toBe(3);
    const cfg = repo.files.find((f) => f.path === "config.json")!;
    expect(cfg.lfs).toBe(false);
    expect(cfg.gitSha1).toBe(createHash("sha1").update('blob 7\0{"a":1}').digest("hex"));
    const w = repo.files.find((f) => f.path.startsWith("weights/"))!;
    expect(w.lfs).toBe(true);
    expect(w.size).toBe(3_000_000);
    expect(w.sha256).toBe(sha256(await big.read(0, big.size)));
    expect((await hf("org/big@v1")).commit).toBe("b".repeat(40));
  });

  it("reads ranges of an LFS file through the CDN redirect without sending the token there", async () => {
    // The loopback CDN answers 400 to any request carrying Authorization, like S3 signed URLs.
    const repo = await hf("org/big", { token: TOKEN });
    const src = repo.fileSource("weights/model-00001-of-00002.safetensors");
    expect(await src.size()).toBe(3_000_000);
    const got = await src.read(1_234_567, 100_000);
    expect(Buffer.from(got).equals(Buffer.from(await big.read(1_234_567, 1_334_567)))).toBe(true);
    expect((await src.read(2_999_990, 100)).byteLength).toBe(10); // clamped at EOF
    expect(repo.stats().requests).toBeGreaterThan(3);
    expect(repo.stats().bytes).toBeGreaterThanOrEqual(100_010);
  });

  it("reads a real safetensors header remotely, equal to the local one", async () => {
    const repo = await hf("tiny/r1");
    const remote = await readHeader(repo.fileSource("model.safetensors"), { speculativeBytes: 4096 });
    const local = await readHeaderFromFile(join(TINY_R1, "model.safetensors"));
    expect(remote.header).toEqual(local);
    const cfg = await repo.fileSource("config.json").read(0, 1 << 20);
    expect(Buffer.from(cfg).toString()).toBe(await readFile(join(TINY_R1, "config.json"), "utf8"));
  });

  it("uses the token for private and approved gated repos", async () => {
    const p = await hf("org/private", { token: TOKEN });
    expect((await p.fileSource("w.safetensors").read(0, 10)).byteLength).toBe(10);
    const g = await hf("org/gated-ok", { hfToken: TOKEN });
    expect((await g.fileSource("w.bin").read(4000, 96)).byteLength).toBe(96);
  });

  it("maps 401 / 403 / 404 to one-line errors naming the repo, revision or file", async () => {
    expect(await code(hf("org/private"))).toMatch(/^DSR_HUB_UNAUTHORIZED: org\/private was not found .* or it is private and needs a token/);
    // A gated repo's listing is public; its files are not.
    const gated = await hf("org/gated");
    expect(gated.gated).toBe(true);
    expect(await code(gated.fileSource("config.json").read(0, 1))).toMatch(/^DSR_HUB_GATED: org\/gated .* gated and this request carried no token/);
    expect(await code((await hf("org/gated", { token: TOKEN })).fileSource("config.json").read(0, 1))).toMatch(/^DSR_HUB_GATED: .*not approved/);
    expect(await code(hf("org/nope", { token: TOKEN }))).toMatch(/^DSR_HUB_REPO_NOT_FOUND: org\/nope was not found/);
    expect(await code(hf("org/big@nobranch"))).toMatch(/^DSR_HUB_REVISION_NOT_FOUND: revision "nobranch" not found in org\/big/);
    expect(await code(hf("org/big", { token: "hf_wrong" }))).toMatch(/^DSR_HUB_BAD_TOKEN/);
    const repo = await hf("org/big");
    expect(() => repo.fileSource("missing.bin")).toThrow(/missing.bin not found in org\/big/);
    const hint = await gated.fileSource("config.json").read(0, 1).catch((e: DsrError) => e.hint);
    expect(hint).toContain(`${hub.hfEndpoint}/org/gated`);
  });

  it("retries 500s, 429 with Retry-After, dropped and stalled bodies", async () => {
    hub.setFaults({ error500: { times: 2, api: true } });
    const retries: string[] = [];
    expect((await hf("org/big", { onRetry: (e) => retries.push(`${e.attempt}/${e.of} ${e.reason}`) })).commit).toBe("a".repeat(40));
    expect(retries).toEqual(["1/4 Hugging Face answered 500 for org/big: Internal Error", "2/4 Hugging Face answered 500 for org/big: Internal Error"]);
    hub.setFaults({ rateLimit: { times: 1, api: true, retryAfterSec: 1 } });
    const t0 = Date.now();
    await hf("org/big");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);

    const repo = await hf("org/big", { stallTimeoutMs: 300 });
    const want = Buffer.from(await big.read(0, big.size));
    hub.setFaults({ drop: { afterBytes: 500_000, times: 2 } });
    expect(Buffer.from(await repo.fileSource(big.path).read(0, big.size)).equals(want)).toBe(true);
    hub.setFaults({ stall: { afterBytes: 100_000, ms: 3000, times: 1 } });
    const t1 = Date.now();
    expect(Buffer.from(await repo.fileSource(big.path).read(0, big.size)).equals(want)).toBe(true);
    expect(Date.now() - t1).toBeLessThan(2500);
    hub.setFaults({ error500: { times: 10, path: big.path } });
    // A fresh repo object: the first one cached the CDN location and would not touch the hub again.
    expect(await code((await hf("org/big")).fileSource(big.path).read(0, 10))).toMatch(/^DSR_HUB_HTTP: Hugging Face answered 500 for org\/big\/weights/);
    hub.setFaults({});
  });
});

describe("ModelScope protocol", () => {
  it("lists files with Sha256 and Size, skips .gitattributes, reads with Range", async () => {
    const repo = await ms("org/big");
    expect(repo.revision).toBe("master");
    expect(repo.files.map((f) => f.path)).toEqual(["b.bin", "config.json", "weights/model-00001-of-00002.safetensors"]);
    const cfg = repo.files.find((f) => f.path === "config.json")!;
    expect(cfg.sha256).toBe(sha256(Buffer.from('{"a":1}')));
    const got = await repo.fileSource(big.path).read(2_000_000, 5000);
    expect(Buffer.from(got).equals(Buffer.from(await big.read(2_000_000, 2_005_000)))).toBe(true);
  });

  it("sends the token as the m_session_id cookie and maps missing repos and revisions", async () => {
    expect(await code(ms("org/private"))).toMatch(/^DSR_HUB_UNAUTHORIZED: org\/private was not found on ModelScope/);
    const p = await ms("org/private", { msToken: TOKEN });
    expect((await p.fileSource("w.safetensors").read(0, 5000)).byteLength).toBe(5000);
    expect(await code(ms("org/nope"))).toMatch(/^DSR_HUB_REPO_NOT_FOUND/);
    expect(await code(ms("org/big@v9"))).toMatch(/^DSR_HUB_REVISION_NOT_FOUND: revision "v9" not found in org\/big/);
  });
});

describe("repo specs", () => {
  it("parses prefixes and revisions and rejects junk", () => {
    const cases: [string, RepoRef][] = [
      ["deepseek-ai/DeepSeek-R1", { source: "hf", repoId: "deepseek-ai/DeepSeek-R1", revision: undefined }],
      ["ms:deepseek-ai/DeepSeek-R1@v1.0", { source: "modelscope", repoId: "deepseek-ai/DeepSeek-R1", revision: "v1.0" }],
      ["hf:a/b@refs/pr/1", { source: "hf", repoId: "a/b", revision: "refs/pr/1" }],
    ];
    for (const [s, want] of cases) expect(parseRepoSpec(s)).toEqual(want);
    expect(parseRepoSpec("a/b", "modelscope").source).toBe("modelscope");
    for (const bad of ["", "a", "a/b/c", "x:a/b", "a/b@", "/a/b", "a/..", "a--b/c", "a/ b"]) {
      expect(() => parseRepoSpec(bad), bad).toThrow(DsrError);
    }
  });
});
