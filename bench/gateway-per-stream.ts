/**
 * Per-stream CPU of one `dsr serve --upstream` process and of bench/node-floor.ts (raw forwarding)
 * on this machine, split into user and kernel time, with the read()/write() calls per stream, from
 * /proc. A quicker, single-machine companion of bench/gateway.ts for A/B-ing a change to the relay:
 * `npx tsx bench/gateway-per-stream.ts TOKENS CONCURRENCY SECONDS` (e.g. 64 100 8) prints one JSON
 * line per target. DSR_BIN=path/to/cli.mjs measures another build (a dist/ inside a checkout, so
 * that its packages resolve); DSR_ARGS="node flags" runs dsr with them (e.g. --cpu-prof
 * --cpu-prof-dir=DIR; the process then gets SIGTERM, so the profile is written). REASONING=N makes
 * the streams R1-shaped chat completions whose first N tokens are reasoning deltas (the stand-in's
 * `--reasoning-tokens`), which dsr renames to both fields by default; DEEPSEEK_SHAPE=1 sends them in
 * DeepSeek's API shape (`reasoning_content`, the absent part null in every delta), as SGLang does.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { Pool } from "undici";
const [TOK, CONC, SECS] = process.argv.slice(2).map(Number);
const start = (cmd: string, args: string[], re: RegExp) => new Promise<{ pid: number; m: RegExpMatchArray; kill: () => void }>((res, rej) => {
  const p = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  const on = (b: Buffer) => { out += b; const m = out.match(re); if (m) res({ pid: p.pid!, m, kill: () => p.kill("SIGKILL") }); };
  p.stdout.on("data", on); p.stderr.on("data", on);
  p.on("exit", (c) => rej(new Error(`${cmd} exited ${c}: ${out}`)));
});
const io = (pid: number) => { const t = readFileSync(`/proc/${pid}/io`, "utf8"); return [Number(/syscr: (\d+)/.exec(t)![1]), Number(/syscw: (\d+)/.exec(t)![1])]; };
const cpu = (pid: number) => { const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" "); return [Number(f[11]), Number(f[12])]; };
const REASONING = Number(process.env.REASONING ?? 0);
const up = await start(process.execPath, ["--import", "tsx", "test/support/standin-upstream.ts", "--port", "0", "--tokens", String(TOK), "--pace-ms", "1", "--reasoning-tokens", String(REASONING), ...(process.env.DEEPSEEK_SHAPE ? ["--deepseek-shape", "--reasoning-field", "reasoning_content"] : [])], /"port":(\d+)/);
const U = `http://127.0.0.1:${up.m[1]}`;
const serving = /^serving .* at (http:\/\/[^\s/]+)\/v1/m;
const targets: [string, string[]][] = [
  ["dsr", [...(process.env.DSR_ARGS ? process.env.DSR_ARGS.split(" ") : []), process.env.DSR_BIN ?? "bin/dsr", "serve", "--upstream", U, "--port", "0", "--max-concurrency", "100000"]],
  ["floor", ["--import", "tsx", "bench/node-floor.ts", "serve", "--upstream", U, "--port", "0"]],
];
const body = JSON.stringify(REASONING > 0 ? { model: "standin", messages: [{ role: "user", content: "hello" }], max_tokens: TOK, stream: true } : { model: "standin", prompt: "hello", max_tokens: TOK, stream: true });
const path = REASONING > 0 ? "/v1/chat/completions" : "/v1/completions";
for (const [name, args] of targets) {
  const t = await start(process.execPath, args, serving);
  const pool = new Pool(t.m[1], { connections: CONC, pipelining: 1 });
  let n = 0, stop = false, measuring = false;
  const one = async () => { while (!stop) { const r = await pool.request({ path, method: "POST", headers: { "content-type": "application/json" }, body }); for await (const _ of r.body) {} if (measuring) n++; } };
  const loops = Array.from({ length: CONC }, one);
  await new Promise((r) => setTimeout(r, 2000));
  const c0 = cpu(t.pid); const i0 = io(t.pid); measuring = true; const t0 = performance.now();
  await new Promise((r) => setTimeout(r, SECS * 1000));
  measuring = false; const c1 = cpu(t.pid); const i1 = io(t.pid); const dt = (performance.now() - t0) / 1000;
  stop = true; await Promise.all(loops); await pool.close();
  const u = (c1[0] - c0[0]) * 10 / n, s = (c1[1] - c0[1]) * 10 / n;
  console.log(JSON.stringify({ name, tokens: TOK, reasoning: REASONING, streams_per_s: Math.round(n / dt), user_us: Math.round(u * 1000), sys_us: Math.round(s * 1000), reads: +((i1[0]-i0[0])/n).toFixed(2), writes: +((i1[1]-i0[1])/n).toFixed(2) }));
  if (process.env.DSR_ARGS) { process.kill(t.pid, "SIGTERM"); await new Promise((r) => setTimeout(r, 1500)); } t.kill();
}
up.kill();
process.exit(0);
