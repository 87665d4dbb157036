/**
 * Benchmark of `dsr pull` against the loopback hub, printed as one JSON document.
 *
 *   npm run build && npx tsx bench/pull.ts [--gib 2] [--rate-mb 50] [--connections 16] [--dir DIR] [--skip-curl] [--cli PATH]
 *
 * --cli: the dsr CLI module to run (default: a private copy of dist/cli.mjs); the device bundle
 * passes its standalone one. --compare PATH: another CLI module (e.g. a build of an older commit),
 * run throttled right after dsr as `dsrCompare`, for an A/B under the same conditions.
 *
 * The loopback hub (test/support/hub-server.ts) serves an HF repo of 20 files totalling --gib GiB
 * (sizes 256/160/96/40 MiB: most above the 64 MiB part size), generated from a seeded pattern with
 * sha256 precomputed once. LFS files redirect to the separate CDN port, as on the real Hub.
 * In one run, on the same files:
 *  1. ceiling: the unthrottled loopback — N parallel `curl` processes to /dev/null (N = connections);
 *     and the same writing to files on the same disk (+ sync), since dsr has to write the bytes;
 *  2. curl: one `curl` stream (one connection, keep-alive) fetching every file to disk, throttled;
 *  3. dsr: `dsr pull --json` (built CLI, child process) into an empty HF cache, throttled to
 *     --rate-mb MB/s per connection; SHA-256 of every file included;
 *  4. dsr unthrottled, for reference;
 *  5. resume: `dsr pull` SIGKILLed when the server has sent 50%, then run again. Finished bytes at
 *     the kill come from the resume state beside the partials (what a resume trusts); re-fetched
 *     finished bytes = the byte ranges the server sent during the second run that fall inside them.
 * Targets (printed under `targets`): dsr ≥ 90% of ceilingForConnections = min(connections × rate,
 * ceilingToDisk); dsr ≥ 8× curl; re-fetched < 1% of finished bytes.
 * Everything goes under a temp dir on the same filesystem and is deleted at the end.
 */
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { loadState } from "../src/engine/hub/download/state.js";
import { patternFile, startHubServer, type HubServer, type ServedFile } from "../test/support/hub-server.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : dflt;
};
const GIB = Number(opt("gib", "2"));
const RATE = Number(opt("rate-mb", "50")) * 1e6;
const CONNS = Number(opt("connections", "16"));
const ROOT = mkdtempSync(join(resolve(opt("dir", tmpdir())), "dsr-bench-pull-"));
// By default a private copy of the built CLI, inside the repo so node_modules resolves: another
// `npm run build` during the run (it empties dist/) must not break the measurement.
const CLI_DIR = args.includes("--cli") ? undefined : resolve(".bench-out", `pull-dist-${process.pid}`);
if (CLI_DIR) cpSync(resolve("dist"), CLI_DIR, { recursive: true }); // the whole folder: the bundle may be split into chunks
const CLI = CLI_DIR ? join(CLI_DIR, "cli.mjs") : resolve(opt("cli", ""));
const MiB = 1 << 20;
const COMMIT = "b".repeat(40);
const log = (s: string) => process.stderr.write(`[bench pull] ${s}\n`);

// 2×256 + 4×160 + 6×96 + 8×40 MiB = 2048 MiB, scaled by --gib / 2.
const SIZES = [256, 256, 160, 160, 160, 160, 96, 96, 96, 96, 96, 96, 40, 40, 40, 40, 40, 40, 40, 40].map((m) => Math.round((m * MiB * GIB) / 2));
const files: ServedFile[] = SIZES.map((size, i) => patternFile(`model-${String(i + 1).padStart(5, "0")}-of-00020.safetensors`, size, 100 + i));
const TOTAL = SIZES.reduce((a, b) => a + b, 0);

function precomputeSha256(): Map<string, string> {
  const t0 = performance.now();
  const m = new Map<string, string>();
  for (const f of files) {
    const h = createHash("sha256");
    for (let p = 0; p < f.size; p += 4 * MiB) h.update(f.read(p, Math.min(f.size, p + 4 * MiB)) as Uint8Array);
    m.set(f.path, h.digest("hex"));
  }
  log(`sha256 of ${(TOTAL / 2 ** 30).toFixed(2)} GiB precomputed in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return m;
}

function run(cmd: string, argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; stdout: string; stderr: string; seconds: number }> {
  const t0 = performance.now();
  return new Promise((res) => {
    const p = spawn(cmd, argv, { env, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => res({ code, stdout, stderr, seconds: (performance.now() - t0) / 1000 }));
  });
}

const mbps = (bytes: number, s: number) => Math.round(bytes / s / 1e6);

type Range = { start: number; end: number };
/** Bytes of `a` ranges inside `b` ranges. */
const overlap = (a: Range[], b: Range[]) => a.reduce((n, x) => n + b.reduce((m, y) => m + Math.max(0, Math.min(x.end, y.end) - Math.max(x.start, y.start)), 0), 0);

async function main() {
  const sha = precomputeSha256();
  const repo = { id: "bench/r1-shaped", commit: COMMIT, files, sha256: (p: string) => sha.get(p) };
  const throttled = await startHubServer({ repos: [repo], perConnectionBytesPerSec: RATE });
  const open = await startHubServer({ repos: [repo] });
  const urls = (s: HubServer) => files.map((f) => `${s.hfEndpoint}/${repo.id}/resolve/main/${f.path}`);
  const env = (s: HubServer, home: string) => ({ ...process.env, HF_HOME: home, HF_ENDPOINT: s.hfEndpoint, HF_TOKEN: "" });
  const uptimeBefore = loadavg();
  const out: Record<string, unknown> = {
    machine: { cpus: cpus().length, model: cpus()[0]?.model, loadavg1: uptimeBefore[0] },
    repo: { files: files.length, bytes: TOTAL, partSizeBytes: 64 * MiB, over64MiB: SIZES.filter((s) => s > 64 * MiB).length },
    ratePerConnectionMBps: RATE / 1e6,
    connections: CONNS,
  };
  try {
    // 1. Unthrottled loopback ceiling: CONNS curl processes in parallel, files dealt round-robin.
    {
      const groups = Array.from({ length: CONNS }, (_, i) => urls(open).filter((_, j) => j % CONNS === i)).filter((g) => g.length);
      const t0 = performance.now();
      const rs = await Promise.all(groups.map((g) => run("curl", ["-sfL", ...g.flatMap((u) => [u, "-o", "/dev/null"])])));
      const s = (performance.now() - t0) / 1000;
      if (rs.some((r) => r.code !== 0)) throw new Error("ceiling curl failed");
      out.ceiling = { tool: `${groups.length} parallel curl → /dev/null, unthrottled`, seconds: +s.toFixed(2), MBps: mbps(TOTAL, s) };
      log(`ceiling ${mbps(TOTAL, s)} MB/s`);
    }
    // 1b. The same, writing the files to disk: what this machine's disk lets any client reach.
    {
      const dir = join(ROOT, "ceiling-disk");
      spawnSync("mkdir", ["-p", dir]);
      const groups = Array.from({ length: CONNS }, (_, i) => urls(open).map((u, j) => [u, j] as const).filter(([, j]) => j % CONNS === i)).filter((g) => g.length);
      const t0 = performance.now();
      const rs = await Promise.all(groups.map((g) => run("curl", ["-sfL", ...g.flatMap(([u, j]) => [u, "-o", join(dir, `f${j}`)])])));
      spawnSync("sync");
      const s = (performance.now() - t0) / 1000;
      if (rs.some((r) => r.code !== 0)) throw new Error("disk ceiling curl failed");
      out.ceilingToDisk = { tool: `${groups.length} parallel curl → files on the same disk, unthrottled, then sync`, seconds: +s.toFixed(2), MBps: mbps(TOTAL, s) };
      log(`ceiling to disk ${mbps(TOTAL, s)} MB/s`);
      rmSync(dir, { recursive: true, force: true });
    }
    // 2. One curl stream, throttled, to disk.
    if (!args.includes("--skip-curl")) {
      spawnSync("sync");
      const dir = join(ROOT, "curl");
      spawnSync("mkdir", ["-p", dir]);
      throttled.resetStats();
      const r = await run("curl", ["-sfL", ...urls(throttled).flatMap((u, i) => [u, "-o", join(dir, `f${i}`)])]);
      if (r.code !== 0) throw new Error(`curl failed: ${r.stderr}`);
      out.curl = { tool: "one curl process, one keep-alive connection, to disk", seconds: +r.seconds.toFixed(2), MBps: mbps(TOTAL, r.seconds) };
      log(`curl ${mbps(TOTAL, r.seconds)} MB/s`);
      rmSync(dir, { recursive: true, force: true });
    }
    // 3. dsr, throttled (with --compare: dsr, compare, compare, dsr — neither gains from going first,
    // e.g. from a warmer server); 4. dsr, unthrottled.
    const compare = args.includes("--compare") ? resolve(opt("compare", "")) : undefined;
    type Run = [string, HubServer, string];
    const runs: Run[] = compare
      ? [["dsr", throttled, CLI], ["dsrCompare", throttled, compare], ["dsrCompare", throttled, compare], ["dsr", throttled, CLI], ["dsrUnthrottled", open, CLI]]
      : [["dsr", throttled, CLI], ["dsrUnthrottled", open, CLI]];
    const results = new Map<string, Record<string, number>[]>();
    for (const [name, server, cli] of runs) {
      const home = join(ROOT, name);
      spawnSync("sync"); // start each run with no dirty pages left by the previous one
      server.resetStats();
      const r = await run(process.execPath, [cli, "pull", repo.id, "--json", "--connections", String(CONNS)], env(server, home));
      if (r.code !== 0) throw new Error(`dsr failed: ${r.stderr}`);
      const j = JSON.parse(r.stdout);
      const sent = server.stats.sent;
      const t0 = Math.min(...sent.map((x) => x.openedAt));
      const t1 = Math.max(...sent.map((x) => x.closedAt ?? 0));
      const transferS = (t1 - t0) / 1000;
      // Mean number of responses being sent between two instants: how busy the connections were.
      const meanOpen = (a: number, b: number) => +(sent.reduce((n, x) => n + Math.max(0, Math.min(b, x.closedAt ?? b) - Math.max(a, x.openedAt)), 0) / (b - a)).toFixed(1);
      const result = {
        seconds: +r.seconds.toFixed(2),
        MBps: mbps(TOTAL, r.seconds),
        engineMBps: mbps(j.downloadedBytes, j.seconds),
        // From the first body byte the server sent to the last: without process start, listing and the final fsyncs.
        transferMBps: mbps(TOTAL, transferS),
        meanConnections: meanOpen(t0, t1),
        meanConnectionsLast10pct: meanOpen(t1 - (t1 - t0) / 10, t1),
        bytesFromServer: server.stats.bytes,
        requests: server.stats.requests,
        splits: j.splits,
        readBackBytes: j.readBackBytes,
        sha256Verified: j.files.length,
      };
      results.set(name, [...(results.get(name) ?? []), result]);
      log(`${name} ${mbps(TOTAL, r.seconds)} MB/s (wall, incl. process start and listing)`);
      rmSync(home, { recursive: true, force: true });
    }
    for (const [name, rs] of results) {
      const mean = (k: string) => Math.round(rs.reduce((a, x) => a + x[k], 0) / rs.length);
      out[name] = rs.length === 1 ? rs[0] : { MBps: mean("MBps"), transferMBps: mean("transferMBps"), runs: rs };
    }
    // 5. SIGKILL at 50%, resume.
    {
      spawnSync("sync");
      const home = join(ROOT, "resume");
      throttled.resetStats();
      const argv = [CLI, "pull", repo.id, "--json", "--connections", String(CONNS)];
      const child = spawn(process.execPath, argv, { env: env(throttled, home), stdio: "ignore" });
      while (throttled.stats.bytes < TOTAL / 2) await new Promise((r) => setTimeout(r, 5));
      child.kill("SIGKILL");
      await new Promise((r) => child.once("close", r));
      const sentBeforeKill = throttled.stats.bytes;
      const blobs = join(home, "hub", "models--bench--r1-shaped", "blobs");
      // Per file, the byte ranges a resume trusts as finished: whole verified blobs, or the parts' done prefixes.
      const done = new Map<string, Range[]>();
      for (const name of readdirSync(blobs)) {
        if (name.includes(".dsr-partial.")) continue;
        const hex = name.split(".")[0];
        const f = files.find((x) => sha.get(x.path) === hex)!;
        if (!name.endsWith(".dsr-partial")) {
          done.set(f.path, [{ start: 0, end: statSync(join(blobs, name)).size }]);
          continue;
        }
        const parts = await loadState(join(blobs, `${name}.json`), join(blobs, name), { size: f.size, digest: `sha256:${hex}` });
        done.set(f.path, (parts ?? []).map((p) => ({ start: p.start, end: p.start + p.done })));
      }
      const finished = [...done.values()].flat().reduce((a, p) => a + p.end - p.start, 0);
      throttled.resetStats();
      const r = await run(process.execPath, argv, env(throttled, home));
      if (r.code !== 0) throw new Error(`resume failed: ${r.stderr}`);
      const refetchedFinished = throttled.stats.sent.reduce((a, s) => a + overlap([s], done.get(s.path) ?? []), 0);
      out.resume = {
        killedAtServerBytes: sentBeforeKill,
        finishedBytesAtKill: finished,
        inFlightLostBytes: sentBeforeKill - finished,
        resumeBytesFromServer: throttled.stats.bytes,
        resumeBytesNeeded: TOTAL - finished,
        refetchedFinishedBytes: refetchedFinished,
        refetchedFinishedPct: +((100 * refetchedFinished) / finished).toFixed(3),
        resumeSeconds: +r.seconds.toFixed(2),
        verified: JSON.parse(r.stdout).files.length,
      };
      log(`resume: re-fetched ${refetchedFinished} finished bytes of ${finished}`);
    }
    // What the connection count allows on this machine: connections × throttle, or less when the
    // filesystem (16 curls writing the same files, then sync) takes less.
    const ceilingToDisk = (out.ceilingToDisk as { MBps: number }).MBps;
    const ceilingForConnections = Math.min((CONNS * RATE) / 1e6, ceilingToDisk);
    const dsr = (out.dsr as { MBps: number }).MBps;
    const curl = (out.curl as { MBps: number } | undefined)?.MBps;
    const resumePct = (out.resume as { refetchedFinishedPct: number }).refetchedFinishedPct;
    out.targets = {
      ceilingForConnectionsMBps: ceilingForConnections,
      ceilingForConnectionsIs: (CONNS * RATE) / 1e6 <= ceilingToDisk ? "connections × throttle" : "ceilingToDisk",
      dsrMBps: dsr,
      dsrOverCeiling: +(dsr / ceilingForConnections).toFixed(3),
      throughputMet: dsr >= 0.9 * ceilingForConnections,
      dsrOverCurl: curl ? +(dsr / curl).toFixed(2) : null,
      overCurlMet: curl ? dsr >= 8 * curl : null,
      resumeRefetchedFinishedPct: resumePct,
      resumeMet: resumePct < 1,
    };
    out.loadavg1After = loadavg()[0];
  } finally {
    await throttled.close();
    await open.close();
    rmSync(ROOT, { recursive: true, force: true });
    if (CLI_DIR) rmSync(CLI_DIR, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out, null, 2) + "\n");
}

await main();
