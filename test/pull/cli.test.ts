/** `dsr pull` as a real child process against the loopback hub: layout, SIGKILL/SIGINT resume, errors, --dry-run, --verify. */
import { createHash } from "node:crypto";
import { lstat, readFile, readdir, readlink, realpath, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadState } from "../../src/engine/hub/download/state.js";
import { runDsr } from "../support/cli.js";
import { bytesFile, patternFile, sparseFile, startHubServer, type HubServer, type ServedFile } from "../support/hub-server.js";
import { tempDir } from "../support/tmp.js";

const TOKEN = "hf_cli_token";
const COMMIT = "d".repeat(40);
const small: ServedFile[] = [bytesFile("config.json", '{"model_type":"qwen2","x":1}'), bytesFile("tokenizer_config.json", "{}"), patternFile("model.safetensors", 3_000_000, 7)];
const MB = 1 << 20;
const big: ServedFile[] = [bytesFile("config.json", "{}"), ...[1, 2, 3, 4].map((i) => patternFile(`model-0000${i}-of-00004.safetensors`, 6 * MB + i * 1000, 10 + i))];
const BIG_TOTAL = big.reduce((a, f) => a + f.size, 0);

let hub: HubServer;
let slow: HubServer;
beforeAll(async () => {
  hub = await startHubServer({
    token: TOKEN,
    repos: [
      { id: "org/m", commit: COMMIT, files: small },
      { id: "org/private", private: true, files: small },
      { id: "org/gated", gated: true, files: small },
      { id: "org/huge", files: [bytesFile("config.json", "{}"), sparseFile("model.safetensors", 100 * 2 ** 40)], sha256: () => "e".repeat(64) },
    ],
  });
  // 4 connections × 2 MB/s: the 24 MB repo takes about 3 s, long enough to kill it half-way.
  slow = await startHubServer({ repos: [{ id: "org/big", commit: COMMIT, files: big }], perConnectionBytesPerSec: 2_000_000 });
});
afterAll(async () => {
  await hub.close();
  await slow.close();
});

const env = (home: string, server = hub, extra: Record<string, string> = {}) => ({ HF_HOME: home, HF_ENDPOINT: server.hfEndpoint, HF_TOKEN: "", DSR_MODELSCOPE_ENDPOINT: server.msEndpoint, MODELSCOPE_CACHE: join(home, "ms"), ...extra });
/** runDsr with string outputs (execa's types widen stdout for generic options). */
async function dsr(args: string[], e: Record<string, string>) {
  const r = await runDsr(args, { env: e });
  return { exitCode: r.exitCode, signal: r.signal, stdout: String(r.stdout), stderr: String(r.stderr) };
}
const sha256 = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

async function checkCache(home: string, repo: string, files: ServedFile[]) {
  const repoDir = join(home, "hub", `models--${repo.replace("/", "--")}`);
  expect(await readFile(join(repoDir, "refs", "main"), "utf8")).toBe(COMMIT);
  for (const f of files) {
    const link = join(repoDir, "snapshots", COMMIT, f.path);
    expect((await lstat(link)).isSymbolicLink()).toBe(true);
    expect(await readlink(link)).toMatch(/^\.\.\/\.\.\/blobs\/[0-9a-f]{40,64}$/);
    expect((await readFile(link)).equals(Buffer.from(await f.read(0, f.size))), f.path).toBe(true);
  }
  return repoDir;
}

async function waitFor(cond: () => boolean, ms = 20_000) {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error("timed out waiting");
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("dsr pull", () => {
  it("pulls into the HF cache, prints where the model is and what to run next; a re-run transfers nothing", async () => {
    const home = await tempDir();
    const r = await dsr(["pull", "org/m"], env(home));
    expect(r.exitCode, r.stderr).toBe(0);
    const snap = join(home, "hub", "models--org--m", "snapshots", COMMIT);
    expect(r.stdout).toContain(`model: ${snap}`);
    expect(r.stdout).toContain(`next:  dsr serve ${snap}`);
    expect(r.stderr).toMatch(/✓ model\.safetensors 3\.0 MB verified/); // one summary line per file when piped
    await checkCache(home, "org/m", small);

    hub.resetStats();
    const again = await dsr(["pull", "org/m", "--json"], env(home));
    expect(again.exitCode).toBe(0);
    const j = JSON.parse(again.stdout);
    expect(j).toMatchObject({ repo: "org/m", commit: COMMIT, revision: "main", downloadedBytes: 0, needBytes: 0, modelPath: snap });
    expect(hub.stats.bytes).toBe(0);
  });

  it("SIGKILL half-way, then resume: re-fetches only unfinished bytes and ends byte-identical", async () => {
    const home = await tempDir();
    const args = ["pull", "org/big", "--connections", "4", "--part-size", "1MiB", "--json"];
    slow.resetStats();
    const child = runDsr(args, { env: env(home, slow) });
    await waitFor(() => slow.stats.bytes >= BIG_TOTAL * 0.45);
    child.kill("SIGKILL");
    const killed = await child;
    expect(killed.signal).toBe("SIGKILL");
    const sentBeforeKill = slow.stats.bytes;

    // What the resume will trust as finished: the state beside each partial.
    const blobs = join(home, "hub", "models--org--big", "blobs");
    let finished = 0;
    const perFile: Record<string, number> = {};
    for (const name of await readdir(blobs)) {
      if (name.includes(".dsr-partial.")) continue; // the state files of a partial
      if (!name.endsWith(".dsr-partial")) {
        finished += (await lstat(join(blobs, name))).size; // whole files already verified and in place
        continue;
      }
      const f = big.find((x) => name.startsWith(sha256(Buffer.from(x.read(0, x.size) as Uint8Array))))!;
      const parts = await loadState(join(blobs, `${name}.json`), join(blobs, name), { size: f.size, digest: `sha256:${name.split(".")[0]}` });
      expect(parts, name).toBeDefined();
      finished += parts!.reduce((a, p) => a + p.done, 0);
      perFile[f.path] = f.size - parts!.reduce((a, p) => a + p.done, 0);
    }
    expect(finished).toBeGreaterThan(BIG_TOTAL * 0.3);
    // Only what was in flight (a ≤1 MiB write block per connection plus socket buffers) is lost.
    expect(sentBeforeKill - finished).toBeLessThan(4 * (MB + 512 * 1024));

    slow.resetStats();
    const resumed = await dsr(args, env(home, slow));
    expect(resumed.exitCode, resumed.stderr).toBe(0);
    const j = JSON.parse(resumed.stdout);
    expect(Object.fromEntries(slow.stats.byPath)).toEqual(perFile);
    expect(slow.stats.bytes).toBe(BIG_TOTAL - finished); // not one finished byte fetched again
    expect(j.downloadedBytes).toBe(BIG_TOTAL - finished);
    expect(j.files.some((f: { status: string }) => f.status === "resume")).toBe(true);
    const repoDir = await checkCache(home, "org/big", big);
    expect((await readdir(join(repoDir, "blobs"))).filter((b) => b.includes("."))).toEqual([]);
  });

  it("Ctrl-C saves state and exits 130; the next run finishes", async () => {
    const home = await tempDir();
    slow.resetStats();
    const child = runDsr(["pull", "org/big", "--connections", "4", "--part-size", "1MiB"], { env: env(home, slow) });
    await waitFor(() => slow.stats.bytes >= 3 * MB);
    child.kill("SIGINT");
    const r = await child;
    expect(r.exitCode).toBe(130);
    expect(r.stderr).toMatch(/interrupted/);
    expect(r.stderr).toMatch(/run the same command again to resume/);
    const blobs = await readdir(join(home, "hub", "models--org--big", "blobs"));
    expect(blobs.some((b) => b.endsWith(".dsr-partial.json"))).toBe(true);
    const again = await dsr(["pull", "org/big", "--connections", "8"], env(home, slow));
    expect(again.exitCode, again.stderr).toBe(0);
    await checkCache(home, "org/big", big);
  });

  it("401 / 403 / 404 fail with one line naming the repo and a hint, exit 1, writing nothing", async () => {
    const home = await tempDir();
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["pull", "org/private"], {}, /error: org\/private was not found on Hugging Face, or it is private and needs a token\nhint: .*--token or set HF_TOKEN/],
      [["pull", "org/gated"], {}, /error: org\/gated on Hugging Face is gated and this request carried no token\nhint: accept the licence at http:\/\/127\.0\.0\.1:\d+\/org\/gated/],
      [["pull", "org/gated", "--token", TOKEN], {}, /error: org\/gated on Hugging Face is gated and your token is not approved/],
      [["pull", "org/nothere"], { HF_TOKEN: TOKEN }, /error: org\/nothere was not found on Hugging Face/],
      [["pull", "org/m", "--revision", "v9"], {}, /error: revision "v9" not found in org\/m/],
      [["pull", "ms:org/nothere"], {}, /error: org\/nothere was not found on ModelScope/],
    ];
    // Independent child processes: run them side by side to keep the file fast.
    const [results, ok, bad] = await Promise.all([
      Promise.all(cases.map(([args, extra]) => dsr(args, env(home, hub, extra)))),
      dsr(["pull", "org/private", "--include", "*.json"], env(home, hub, { HF_TOKEN: TOKEN })),
      dsr(["pull", "not a repo"], env(home)),
    ]);
    cases.forEach(([args, , re], i) => {
      expect(results[i].exitCode, args.join(" ")).toBe(1);
      expect(results[i].stderr, args.join(" ")).toMatch(re);
    });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(bad.exitCode).toBe(2);
    // The failed pulls left nothing behind (the gated one was refused before any partial existed).
    expect((await readdir(join(home, "hub"))).filter((d) => d.startsWith("models--")).sort()).toEqual(["models--org--private"]);
  });

  it("checks free disk space before fetching anything", async () => {
    const home = await tempDir();
    hub.resetStats();
    const r = await dsr(["pull", "org/huge"], env(home));
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/error: not enough disk space for org\/huge: 102400\.00 GiB still to download, [\d.]+ GiB free at /);
    expect(hub.stats.bytes).toBe(0);
  });

  it("--dry-run lists files, sizes, total and disk need; --json gives the plan", async () => {
    const home = await tempDir();
    const r = await dsr(["pull", "org/m", "--dry-run", "--exclude", "tokenizer*"], env(home));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/config\.json\s+28 B\s+download/);
    expect(r.stdout).toMatch(/model\.safetensors\s+3\.0 MB\s+download/);
    expect(r.stdout).not.toContain("tokenizer");
    expect(r.stdout).toMatch(/2 files, 3\.0 MB total; 3\.0 MB to download, .* free at the target/);
    const j = JSON.parse((await dsr(["pull", "org/m", "--dry-run", "--json"], env(home))).stdout);
    expect(j).toMatchObject({ dryRun: true, totalBytes: 3_000_030, needBytes: 3_000_030 });
    expect(j.files).toHaveLength(3);
    expect(await readdir(home)).toEqual([]);
  });

  it("--verify detects a corrupted blob (exit 3, names the file) and the next pull repairs it", async () => {
    const home = await tempDir();
    expect((await dsr(["pull", "org/m"], env(home))).exitCode).toBe(0);
    const blob = await realpath(join(home, "hub", "models--org--m", "snapshots", COMMIT, "model.safetensors"));
    const buf = await readFile(blob);
    buf[1_000_000] ^= 0x40;
    await writeFile(blob, buf);
    const good = await dsr(["pull", "org/m", "--verify", "--include", "*.json"], env(home));
    expect(good.exitCode).toBe(0);
    const v = await dsr(["pull", "org/m", "--verify"], env(home));
    expect(v.exitCode).toBe(3);
    expect(v.stderr).toMatch(/✗ model\.safetensors: corrupt/);
    expect(v.stderr).toMatch(/error: org\/m: 1 corrupt and 0 missing file\(s\), e\.g\. model\.safetensors/);
    const fix = await dsr(["pull", "org/m", "--json"], env(home));
    expect(JSON.parse(fix.stdout).downloadedBytes).toBe(3_000_000);
    await checkCache(home, "org/m", small);
    expect((await dsr(["pull", "org/m", "--verify"], env(home))).exitCode).toBe(0);
  });

  it("ms: prefix pulls into the ModelScope cache; --local-dir writes plain files", async () => {
    const home = await tempDir();
    const r = await dsr(["pull", "ms:org/m", "--json"], env(home));
    expect(r.exitCode, r.stderr).toBe(0);
    const dir = join(home, "ms", "models", "org", "m");
    expect(JSON.parse(r.stdout)).toMatchObject({ source: "modelscope", layout: "ms-cache", modelPath: dir, revision: "master" });
    for (const f of small) expect((await readFile(join(dir, f.path))).equals(Buffer.from(await f.read(0, f.size)))).toBe(true);
    const local = join(home, "plain");
    const l = await dsr(["pull", "org/m", "--local-dir", local], env(home));
    expect(l.exitCode, l.stderr).toBe(0);
    expect(l.stdout).toContain(`next:  dsr serve ${local}`);
    for (const f of small) expect((await lstat(join(local, f.path))).isFile()).toBe(true);
  });
});
