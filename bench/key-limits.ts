/**
 * What per-key limits cost with gateway workers: each request of a limited key asks the primary
 * (serve-workers.ts) before it goes on, one IPC round trip. Two `dsr serve --workers N` over the same
 * stand-in upstream (its own process, 1-token answers, so the request path is all there is), both
 * with an API key file: one without limits, one with limits set so high they never refuse. The same
 * closed loop of C concurrent non-streaming requests (one key) hits each in interleaved rounds.
 *
 *   npx tsx bench/key-limits.ts [--workers 2] [--concurrency 32] [--seconds 6] [--rounds 2]
 *
 * On a machine without node_modules, `--dsr-cli` and `--standin` name the bundled CLI and stand-in
 * (bench/gateway-device-build.sh makes them, and this bench as key-limits.mjs).
 *
 * Prints one JSON document: per target, requests/s and latency p50/p99 (ms), and the difference.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";

const ROOT = process.env.DSR_BENCH_ROOT ?? dirname(dirname(fileURLToPath(import.meta.url)));
const { values: a } = parseArgs({
  options: {
    workers: { type: "string", default: "2" },
    concurrency: { type: "string", default: "32" },
    seconds: { type: "string", default: "6" },
    rounds: { type: "string", default: "2" },
    "dsr-cli": { type: "string", default: join(ROOT, "bin/dsr") },
    standin: { type: "string" },
  },
});
const [W, C, S, ROUNDS] = [a.workers, a.concurrency, a.seconds, a.rounds].map(Number);

/** Starts a process and resolves with the first match of `re` in its output. */
function start(args: string[], re: RegExp): Promise<{ proc: ChildProcess; m: RegExpMatchArray }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    const on = (b: Buffer) => {
      out += b;
      const m = out.match(re);
      if (m) resolve({ proc, m });
    };
    proc.stdout!.on("data", on);
    proc.stderr!.on("data", on);
    proc.on("exit", (c) => reject(new Error(`exited ${c}: ${out}`)));
  });
}

const stop = (p: ChildProcess) => new Promise<void>((r) => (p.exitCode !== null ? r() : (p.once("exit", () => r()), p.kill("SIGTERM"))));
const pct = (xs: number[], p: number) => xs.sort((x, y) => x - y)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))] ?? NaN;

async function load(url: string): Promise<{ rps: number; p50: number; p99: number; errors: number }> {
  const dispatcher = new Agent({ connections: C, pipelining: 1 });
  const body = JSON.stringify({ prompt: "x", max_tokens: 1 }); // the served model by default
  const lat: number[] = [];
  let errors = 0;
  const until = performance.now() + S * 1000;
  const one = async () => {
    while (performance.now() < until) {
      const t0 = performance.now();
      const r = await request(`${url}/v1/completions`, { method: "POST", body, headers: { "content-type": "application/json", authorization: "Bearer sk-bench" }, dispatcher });
      await r.body.text();
      if (r.statusCode === 200) lat.push(performance.now() - t0);
      else errors++;
    }
  };
  const t0 = performance.now();
  await Promise.all(Array.from({ length: C }, one));
  const secs = (performance.now() - t0) / 1000;
  await dispatcher.close();
  return { rps: Math.round(lat.length / secs), p50: +pct(lat, 50).toFixed(3), p99: +pct(lat, 99).toFixed(3), errors };
}

const dir = mkdtempSync(join(tmpdir(), "dsr-keybench-"));
const keys = join(dir, "keys.txt");
await writeFile(keys, "sk-bench bench\n");
const standin = a.standin ? [a.standin] : ["--import", "tsx", join(ROOT, "test/support/standin-upstream.ts")];
const up = await start([...standin, "--port", "0", "--tokens", "1", "--pace-ms", "1"], /"port":(\d+)/);
const upstream = `http://127.0.0.1:${up.m[1]}`;
const serving = /^serving .* at (http:\/\/[^\s/]+)\/v1/m;
const common = [a["dsr-cli"]!, "serve", "--upstream", upstream, "--port", "0", "--workers", String(W), "--api-key-file", keys, "--max-concurrency", "100000"];
const targets = {
  no_limits: await start(common, serving),
  limits_ipc: await start([...common, "--key-rpm", "1000000000", "--key-max-parallel", "1000000"], serving),
};
const runs: Record<string, Awaited<ReturnType<typeof load>>[]> = { no_limits: [], limits_ipc: [] };
try {
  for (const [name, t] of Object.entries(targets)) await load(t.m[1]); // warm-up
  for (let r = 0; r < ROUNDS; r++) for (const [name, t] of Object.entries(targets)) runs[name].push(await load(t.m[1]));
} finally {
  await Promise.all([...Object.values(targets).map((t) => stop(t.proc)), stop(up.proc)]);
}
const best = (xs: Awaited<ReturnType<typeof load>>[]) => xs.reduce((b, x) => (x.rps > b.rps ? x : b));
const [n, l] = [best(runs.no_limits), best(runs.limits_ipc)];
console.log(
  JSON.stringify(
    {
      workers: W,
      concurrency: C,
      seconds: S,
      rounds: ROUNDS,
      no_limits: n,
      limits_ipc: l,
      added_p50_ms: +(l.p50 - n.p50).toFixed(3),
      added_p99_ms: +(l.p99 - n.p99).toFixed(3),
      rps_ratio: +(l.rps / n.rps).toFixed(3),
      runs,
    },
    null,
    2,
  ),
);
