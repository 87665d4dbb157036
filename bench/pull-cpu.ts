/**
 * CPU per byte of the pull engine, printed as one JSON document per run.
 *
 *   npx tsx bench/pull-cpu.ts [--gib 1] [--reps 3] [--dir /dev/shm]
 *
 * The loopback hub runs in a child process (its CPU is not counted); this process alternates
 *  - `undici`: 16 ranged GETs of the same bytes consumed and dropped — the HTTP client's floor;
 *  - `pull`: the engine's pull() of the same repo (16 files, 16 connections, SHA-256 in a worker,
 *    files written under --dir), and `pull-hash-main` (hashThreads 0);
 * and reports process CPU (user + sys, all threads) per byte received. Everything after the imports
 * is counted, so a run includes the listing and the thread start-ups.
 */
import { fork } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { request } from "undici";
import { parseRepoSpec, pull } from "../src/engine/hub/index.js";
import { patternFile, startHubServer } from "../test/support/hub-server.js";

const MiB = 1 << 20;
const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : dflt);
const GIB = Number(opt("gib", "1"));
const files = Array.from({ length: 16 }, (_, i) => patternFile(`f${i}.bin`, Math.round(GIB * 64 * MiB), 100 + i));
const TOTAL = files.reduce((a, f) => a + f.size, 0);
const COMMIT = "b".repeat(40);

if (process.env.PULL_CPU_SERVER) {
  // Child: serve the repo, report the endpoints, stay up until the parent exits.
  const sha = new Map(files.map((f) => [f.path, createHash("sha256").update(f.read(0, f.size) as Uint8Array).digest("hex")]));
  const hub = await startHubServer({ repos: [{ id: "b/r", commit: COMMIT, files, sha256: (p) => sha.get(p) }] });
  process.send!({ hf: hub.hfEndpoint, cdn: hub.cdnOrigin });
  process.on("disconnect", () => process.exit(0));
} else {
  const server = fork(process.argv[1], args, { env: { ...process.env, PULL_CPU_SERVER: "1" }, execArgv: process.execArgv });
  const { hf, cdn } = await new Promise<{ hf: string; cdn: string }>((r) => server.once("message", (m) => r(m as { hf: string; cdn: string })));
  const sig = (p: string) => createHash("sha1").update(`b/r/${p}`).digest("hex");
  const modes: Record<string, () => Promise<void>> = {
    undici: async () => {
      await Promise.all(
        files.map(async (f) => {
          const r = await request(`${cdn}/cdn/b/r/${COMMIT}/${f.path}?sig=${sig(f.path)}`, { headers: { range: `bytes=0-${f.size - 1}` } });
          for await (const _ of r.body);
        }),
      );
    },
    pull: () => pullOnce(1),
    "pull-hash-main": () => pullOnce(0),
  };
  async function pullOnce(hashThreads: number) {
    const dir = mkdtempSync(join(resolve(opt("dir", tmpdir())), "dsr-pull-cpu-"));
    try {
      await pull({ ref: parseRepoSpec("b/r"), hub: { hfEndpoint: hf }, layout: { kind: "local-dir", dir }, connections: 16, hashThreads });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }
  const runs: Record<string, number[]> = {};
  for (let rep = 0; rep < Number(opt("reps", "3")); rep++) {
    for (const [name, fn] of Object.entries(modes)) {
      const c0 = process.cpuUsage();
      await fn();
      const c = process.cpuUsage(c0);
      (runs[name] ??= []).push(+(((c.user + c.system) * 1000) / TOTAL).toFixed(2));
    }
  }
  process.stdout.write(JSON.stringify({ bytesPerRun: TOTAL, loadavg1: loadavg()[0], nsPerByte: runs }, null, 2) + "\n");
  server.disconnect();
}
