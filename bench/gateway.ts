/**
 * The gateway's own cost. A stand-in upstream (test/support/standin-upstream.ts, its own process)
 * streams 64 tokens per request at a fixed pace; the same closed-loop load reaches it (a) directly,
 * (b) through `dsr serve --upstream` and (c) through nginx configured as the seed guides do
 * (proxy_pass to an upstream block with keepalive, proxy_http_version 1.1, proxy_buffering off).
 *
 * Two runs per target: a latency run (1000 concurrent streams at the real pace: TTFT and inter-token
 * gaps, compared with direct) and a throughput run (1000 concurrent streams at a 1 ms pace, so the
 * machine's CPU is the limit: completed streams/s). CPU per stream = the proxy processes' utime+stime
 * (from /proc) over completed streams.
 *
 * The load generator runs in this process on one undici Pool per target (one keep-alive connection
 * per stream, SSE parsed by scanning for the blank line, no JSON parsing); its own CPU use is
 * reported so a saturated generator would be visible. Targets are measured in interleaved rounds
 * (direct, dsr, dsr --workers N, nginx, then the same in reverse order, …) so that load from other
 * processes drifts over all of them alike and no target always follows the same one. Usage: `npx tsx bench/gateway.ts [--concurrency 1000] [--pace-ms 50]
 * [--seconds 12] [--rounds 3] [--tokens 64] [--dsr-workers 2] [--nginx-workers auto] [--only direct,dsr_workers4,nginx]`
 * — prints one JSON document (`--only` measures just the named targets; keep direct and nginx among them).
 *
 * On a many-core machine each side gets fixed cores through `taskset`: `--proxy-cpus 0-3` pins dsr,
 * dsr --workers and nginx to the same cores, with nginx worker_processes = dsr --workers = 4;
 * `--upstream-cpus 4-7` runs the stand-in as that many processes there; `--loadgen-cpus 8-15` pins
 * this process, which then generates load from that many threads. `--compare-cli FILE` adds a
 * `dsr_baseline` target (another build of the CLI) for an A/B in the same run; `--compare-workers N`
 * adds that CLI with --workers N too, and `--compare-node-args "FLAGS"` runs the baseline targets
 * with those node flags and `--compare-env "K=V …"` with that environment (`--compare-cli bin/dsr
 * --compare-env DSR_RELAY=js`: the same build without its native relay) (the same CLI as baseline then A/Bs a V8 setting such as the young
 * generation's size; cluster workers inherit the primary's flags); `--dsr-node-args "FLAGS"` does the
 * same for the dsr targets (e.g. `--cpu-prof --cpu-prof-dir=DIR`, or `--import bench/loop-stats.mjs` with
 * DSR_LOOP_STATS_DIR set: each process's loop utilisation, turn length and GC time per second). `--floor [FILE]` adds bench/node-floor.ts
 * with --workers N (`node_floor_workersN`): raw byte forwarding, the least CPU a Node proxy spends per
 * stream, so that dsr's own overhead above Node's sockets is measured in the same run. Each Node proxy's read()/write()
 * calls per stream come from /proc/PID/io (how many events an upstream read carries). For a machine without
 * node_modules: `--dsr-cli`, `--standin` and `--nginx` name the bundled files (see docs/BENCHMARKS.md).
 * `--include-usage`: the clients ask for the usage chunk, as vLLM's benchmark_serving does (see INCLUDE_USAGE).
 * `--tls`: the proxies terminate HTTPS (dsr `--ssl-keyfile/--ssl-certfile`, nginx `listen … ssl`, the floor
 * on node:tls) with a P-256 certificate (tls.key/tls.crt beside the bench when carried, else made with
 * openssl); the clients trust it; direct stays plain HTTP (see TLS).
 * DSR_BENCH_CHILD_LOGS=DIR keeps each child's output in DIR (e.g. with `--dsr-node-args --trace-gc-nvp`:
 * every worker's GC pauses and their phases).
 * `--reasoning-tokens N [--reasoning-field reasoning|reasoning_content]`: R1-shaped chat streams whose
 * first N tokens are reasoning deltas, which dsr renames (see REASONING_TOKENS); `--deepseek-shape`
 * sends them in DeepSeek's API shape (the absent part null in every delta, as SGLang does).
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { cpus, loadavg, tmpdir } from "node:os";
import { basename, join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { createWriteStream, existsSync, readFileSync } from "node:fs";
import { Agent, fetch as undiciFetch, Pool } from "undici";
import { freePort } from "../src/engine/serve/free-ports.js";

const ROOT = process.env.DSR_BENCH_ROOT ?? dirname(dirname(fileURLToPath(import.meta.url)));
const arg = (name: string, d: string) => {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : d;
};
/** Number of CPUs in a taskset list such as "0-3,8". */
const cpuCount = (list: string) => list.split(",").reduce((n, r) => n + (r.includes("-") ? Number(r.split("-")[1]) - Number(r.split("-")[0]) + 1 : 1), 0);
const CONC = Number(arg("--concurrency", "1000"));
const PACE = Number(arg("--pace-ms", "50"));
/**
 * Tokens per stream (64). `--tokens 1` leaves each stream about one upstream read, so CPU per stream
 * is then mostly the per-request cost (heads, body, routing, bookkeeping); the difference from the
 * 64-token figure is the per-read cost.
 */
const TOKENS = Number(arg("--tokens", "64"));
const SECONDS = Number(arg("--seconds", "12"));
const ROUNDS = Number(arg("--rounds", "3"));
const PROXY_CPUS = arg("--proxy-cpus", "");
const UPSTREAM_CPUS = arg("--upstream-cpus", "");
const LOADGEN_CPUS = arg("--loadgen-cpus", "");
const NGINX_WORKERS = arg("--nginx-workers", PROXY_CPUS ? String(cpuCount(PROXY_CPUS)) : "auto");
const DSR_WORKERS = Number(arg("--dsr-workers", String(PROXY_CPUS ? cpuCount(PROXY_CPUS) : cpus().length)));
const UPSTREAM_WORKERS = Number(arg("--upstream-workers", String(UPSTREAM_CPUS ? cpuCount(UPSTREAM_CPUS) : 1)));
const LOADGEN_THREADS = Number(arg("--loadgen-threads", String(LOADGEN_CPUS ? cpuCount(LOADGEN_CPUS) : 1)));
const DSR_CLI = arg("--dsr-cli", join(ROOT, "bin/dsr"));
const COMPARE_CLI = arg("--compare-cli", "");
/** Node flags for the baseline targets (e.g. `--max-semi-space-size=2`: the same CLI as baseline A/Bs a V8 setting). */
const COMPARE_NODE_ARGS = arg("--compare-node-args", "").split(" ").filter(Boolean);
/** `--compare-env "K=V …"`: environment for the baseline targets only (e.g. DSR_RELAY=js: the same CLI without its native relay). */
const COMPARE_ENV = Object.fromEntries(arg("--compare-env", "").split(" ").filter(Boolean).map((kv) => [kv.slice(0, kv.indexOf("=")), kv.slice(kv.indexOf("=") + 1)]));
/** Node flags for the dsr targets (e.g. `--cpu-prof --cpu-prof-dir=DIR`: each process and worker writes a profile when it exits). */
const DSR_NODE_ARGS = arg("--dsr-node-args", "").split(" ").filter(Boolean);
/** Which runs to make (e.g. `--runs throughput` for a profile of the throughput limit alone). */
const RUNS = arg("--runs", "latency,throughput").split(",");
/** `--only direct,dsr_workers4,nginx`: measure only these targets (the others still start, idle), to spend a short device session on an A/B. */
const ONLY = arg("--only", "").split(",").filter(Boolean);
/** Also run the baseline CLI with --workers N (0: not). */
const COMPARE_WORKERS = Number(arg("--compare-workers", "0"));
const STANDIN = arg("--standin", join(ROOT, "test/support/standin-upstream.ts"));
/** Adds bench/node-floor (the least a Node proxy can do: raw forwarding) with --workers N as a target; a path names a bundled copy. */
const floorFile = process.argv.includes("--floor") ? (arg("--floor", "") as string | undefined) : undefined;
const FLOOR = floorFile === undefined ? "" : floorFile && !floorFile.startsWith("-") ? floorFile : join(ROOT, "bench/node-floor.ts");
const NGINX = arg("--nginx", "nginx");
/**
 * `--include-usage`: every client asks for the usage chunk (`stream_options.include_usage`), as
 * vLLM's benchmark_serving does. Without it the clients do not, so dsr asks the upstream for usage
 * itself (to count tokens) and drops the chunk, while nginx and the floor forward the body as is:
 * the stand-in then writes one event more per stream through dsr than through them.
 */
const INCLUDE_USAGE = process.argv.includes("--include-usage");
/**
 * `--reasoning-tokens N [--reasoning-field reasoning|reasoning_content]`: R1-shaped streams. The
 * clients ask for chat completions, and the stand-in sends the first N of each stream's tokens as
 * `delta.reasoning` (vLLM's name; `reasoning_content` for older vLLM and SGLang), which dsr renames
 * to its configured fields (both by default) while nginx passes them on. TTFT is then the first
 * token's event, after the role-only chunk.
 */
const REASONING_TOKENS = Number(arg("--reasoning-tokens", "0"));
const REASONING_FIELD = arg("--reasoning-field", "reasoning");
/** `--deepseek-shape`: the stand-in's deltas name the absent part as null (DeepSeek's API shape, SGLang's). */
const DEEPSEEK_SHAPE = process.argv.includes("--deepseek-shape");
const CHAT = REASONING_TOKENS > 0;
/**
 * `--tls`: every proxy serves HTTPS to the load generator (each with the same key and certificate),
 * while it reaches the stand-in over plain HTTP as before. The key and certificate are tls.key and
 * tls.crt under the bench root when present (the device bundle carries them), else openssl makes them.
 */
const TLS = process.argv.includes("--tls");
/** The certificate the load generator's threads trust (sent to them as workerData). */
const TRUSTED: string | undefined = isMainThread ? undefined : (workerData as { ca?: string } | null)?.ca;
/** A command pinned to `list` (taskset execs it, so the pid is the command's own). */
const pinned = (list: string, cmd: string, args: string[]): [string, string[]] => (list ? ["taskset", ["-c", list, cmd, ...args]] : [cmd, args]);

interface RunResult {
  streams: number;
  errors: number;
  seconds: number;
  streams_per_s: number;
  ttft_ms: { p50: number; p99: number; mean: number };
  itl_ms: { p50: number; p99: number; mean: number };
  proxy_cpu_ms_per_stream?: number;
  proxy_cpu_util?: number;
  /** Share of the proxy's CPU spent in the kernel (stime over utime + stime). */
  proxy_cpu_kernel_share?: number;
  proxy_reads_per_stream?: number;
  proxy_writes_per_stream?: number;
  loadgen_cpu_util: number;
}

interface Samples {
  ttft: number[];
  itl: number[];
  streams: number;
  errors: number;
  seconds: number;
  proxyCpuMs?: number;
  proxySysMs?: number;
  /** read()/write() system calls of the proxy processes (/proc/PID/io; nginx's recv() is not counted there). */
  proxySyscalls?: { reads: number; writes: number };
  selfCpuMs: number;
}

/**
 * Closed loop: `conc` workers each send a streaming completion, read it to the end, repeat. Worker
 * starts are staggered over one stream's duration so arrivals are spread (not 1000 at one instant);
 * only what happens between measure() and stop() is recorded.
 */
class Loader {
  constructor(private readonly ca: string | undefined) {}
  private readonly pools = new Map<string, Pool>();
  private measuring = false;
  private stopped = false;
  private running: Promise<void>[] = [];
  private ttft: number[] = [];
  private itl: number[] = [];
  private streams = 0;
  private errors = 0;

  run(url: string, conc: number, streamMs: number, offset: number, total: number): void {
    let pool = this.pools.get(url);
    const connect = url.startsWith("https:") ? { ca: this.ca } : undefined;
    if (!pool) this.pools.set(url, (pool = new Pool(url, { connections: conc, pipelining: 1, keepAliveTimeout: 60_000, headersTimeout: 0, bodyTimeout: 0, connect })));
    Object.assign(this, { measuring: false, stopped: false, ttft: [], itl: [], streams: 0, errors: 0 });
    const p = pool;
    this.running = Array.from({ length: conc }, async (_, i) => {
      await sleep(((offset + i) * streamMs) / total);
      while (!this.stopped) await this.one(p);
    });
  }

  measure(): void {
    this.measuring = true;
  }

  async stop(): Promise<{ ttft: number[]; itl: number[]; streams: number; errors: number }> {
    this.measuring = false;
    this.stopped = true;
    await Promise.all(this.running);
    return { ttft: this.ttft, itl: this.itl, streams: this.streams, errors: this.errors };
  }

  close(): Promise<unknown> {
    return Promise.all([...this.pools.values()].map((p) => p.close()));
  }

  private one(pool: Pool): Promise<void> {
    const usage = INCLUDE_USAGE ? { stream_options: { include_usage: true } } : {};
    const body = JSON.stringify(CHAT ? { model: "standin", messages: [{ role: "user", content: "hello" }], max_tokens: TOKENS, stream: true, ...usage } : { model: "standin", prompt: "hello", max_tokens: TOKENS, stream: true, ...usage });
    const skip = CHAT ? 1 : 0; // the role-only chunk a chat stream starts with carries no token
    return new Promise<void>((resolve) => {
      const t0 = performance.now();
      let last = 0;
      let first = true;
      let events = 0;
      const rec = this.measuring;
      pool.request({ path: CHAT ? "/v1/chat/completions" : "/v1/completions", method: "POST", headers: { "content-type": "application/json" }, body }, (err, res) => {
        if (err || !res || res.statusCode !== 200) {
          if (rec) this.errors++;
          res?.body?.resume();
          return resolve();
        }
        res.body.on("data", (chunk: Buffer) => {
          const now = performance.now();
          // every "\n\n" ends an event; the last one is [DONE]
          let i = chunk.indexOf(10);
          while (i >= 0) {
            if (chunk[i + 1] === 10) {
              events++;
              if (events > skip) {
                if (events <= TOKENS + skip && rec) {
                  if (first) this.ttft.push(now - t0);
                  else this.itl.push(now - last);
                }
                first = false;
              }
              last = now;
            }
            i = chunk.indexOf(10, i + 1);
          }
        });
        res.body.on("end", () => {
          if (rec) {
            if (events >= skip + TOKENS + (INCLUDE_USAGE ? 2 : 1)) this.streams++; // the role chunk (chat), the tokens, the usage chunk when asked for, [DONE]
            else this.errors++;
          }
          resolve();
        });
        res.body.on("error", () => {
          if (rec) this.errors++;
          resolve();
        });
      });
    });
  }
}

type LoaderMsg = { op: "run"; url: string; conc: number; streamMs: number; offset: number; total: number } | { op: "measure" } | { op: "stop" } | { op: "close" };

/** The load generator: in this thread, or spread over `threads` worker threads (many-core machines). */
function loadGenerator(threads: number, ca: string | undefined) {
  if (threads <= 1) {
    const l = new Loader(ca);
    return {
      run: (url: string, conc: number, streamMs: number) => l.run(url, conc, streamMs, 0, conc),
      measure: () => l.measure(),
      stop: () => l.stop(),
      close: () => l.close(),
    };
  }
  // from the .ts source (development tree) a thread registers tsx before importing this file (tsx's
  // own hooks do not reach worker threads); the bundle is plain JS
  const src = import.meta.url.endsWith(".ts") ? `import("tsx/esm/api").then((t) => t.register()).then(() => import(${JSON.stringify(import.meta.url)}))` : new URL(import.meta.url);
  const workers = Array.from({ length: threads }, () => new Worker(src, { eval: typeof src === "string", argv: process.argv.slice(2), workerData: { ca } }));
  const send = (w: Worker, m: LoaderMsg) => w.postMessage(m);
  return {
    run(url: string, conc: number, streamMs: number) {
      let offset = 0;
      workers.forEach((w, k) => {
        const n = Math.floor(conc / threads) + (k < conc % threads ? 1 : 0);
        send(w, { op: "run", url, conc: n, streamMs, offset, total: conc });
        offset += n;
      });
    },
    measure: () => workers.forEach((w) => send(w, { op: "measure" })),
    async stop() {
      const parts = await Promise.all(
        workers.map(
          (w) =>
            new Promise<{ ttft: number[]; itl: number[]; streams: number; errors: number }>((resolve) => {
              w.once("message", resolve);
              send(w, { op: "stop" });
            }),
        ),
      );
      return { ttft: parts.flatMap((p) => p.ttft), itl: parts.flatMap((p) => p.itl), streams: parts.reduce((a, p) => a + p.streams, 0), errors: parts.reduce((a, p) => a + p.errors, 0) };
    },
    async close() {
      await Promise.all(workers.map((w) => new Promise((r) => (w.once("exit", r), send(w, { op: "close" })))));
    },
  };
}

/** Worker-thread side of loadGenerator(). */
function serveLoader(): void {
  const l = new Loader(TRUSTED);
  parentPort!.on("message", async (m: LoaderMsg) => {
    if (m.op === "run") l.run(m.url, m.conc, m.streamMs, m.offset, m.total);
    else if (m.op === "measure") l.measure();
    else if (m.op === "stop") parentPort!.postMessage(await l.stop());
    else {
      await l.close();
      process.exit(0);
    }
  });
}

/** One measurement of one target: warm-up of 1.5 stream durations (at least 2 s), then `seconds` recorded. */
async function load(gen: ReturnType<typeof loadGenerator>, url: string, conc: number, seconds: number, streamMs: number, proxyPids: () => Promise<number[]>): Promise<Samples> {
  gen.run(url, conc, streamMs);
  await sleep(Math.max(2000, 1.5 * streamMs));
  const pids = await proxyPids();
  const cpu0 = await cpuMs(pids);
  const io0 = await syscalls(pids);
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  gen.measure();
  await sleep(seconds * 1000);
  const stopped = gen.stop(); // recording ends now; the streams in flight drain afterwards
  const dt = (performance.now() - t0) / 1000;
  const cpu1 = await cpuMs(pids);
  const io1 = await syscalls(pids);
  const self = process.cpuUsage(self0);
  const r = await stopped;
  return {
    ...r,
    seconds: dt,
    proxyCpuMs: pids.length ? cpu1.total - cpu0.total : undefined,
    proxySysMs: pids.length ? cpu1.sys - cpu0.sys : undefined,
    proxySyscalls: pids.length ? { reads: io1.reads - io0.reads, writes: io1.writes - io0.writes } : undefined,
    selfCpuMs: (self.user + self.system) / 1000,
  };
}

function merge(parts: Samples[]): RunResult {
  const ttft = parts.flatMap((p) => p.ttft);
  const itl = parts.flatMap((p) => p.itl);
  const streams = parts.reduce((a, p) => a + p.streams, 0);
  const dt = parts.reduce((a, p) => a + p.seconds, 0);
  const proxy = parts[0].proxyCpuMs === undefined ? undefined : parts.reduce((a, p) => a + (p.proxyCpuMs ?? 0), 0);
  const perStream = (k: "reads" | "writes") => (parts[0].proxySyscalls ? round(parts.reduce((a, p) => a + (p.proxySyscalls?.[k] ?? 0), 0) / Math.max(1, streams), 2) : undefined);
  return {
    streams,
    errors: parts.reduce((a, p) => a + p.errors, 0),
    seconds: round(dt),
    streams_per_s: round(streams / dt),
    ttft_ms: summary(ttft),
    itl_ms: summary(itl),
    proxy_cpu_ms_per_stream: proxy === undefined ? undefined : round(proxy / Math.max(1, streams), 3),
    proxy_cpu_util: proxy === undefined ? undefined : round(proxy / 1000 / dt),
    proxy_cpu_kernel_share: proxy ? round(parts.reduce((a, p) => a + (p.proxySysMs ?? 0), 0) / proxy, 3) : undefined,
    proxy_reads_per_stream: perStream("reads"),
    proxy_writes_per_stream: perStream("writes"),
    loadgen_cpu_util: round(parts.reduce((a, p) => a + p.selfCpuMs, 0) / 1000 / dt),
  };
}

function summary(xs: number[]): { p50: number; p99: number; mean: number } {
  if (xs.length === 0) return { p50: NaN, p99: NaN, mean: NaN };
  const s = Float64Array.from(xs).sort();
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * (s.length - 1)))];
  return { p50: round(q(0.5), 3), p99: round(q(0.99), 3), mean: round(s.reduce((a, b) => a + b, 0) / s.length, 3) };
}

/** utime + stime (and stime alone) of the given processes, in ms (clock ticks are 1/100 s on Linux). */
async function cpuMs(pids: number[]): Promise<{ total: number; sys: number }> {
  let user = 0;
  let sys = 0;
  for (const p of pids) {
    const stat = await readFile(`/proc/${p}/stat`, "utf8").catch(() => "");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    user += Number(f[11] ?? 0);
    sys += Number(f[12] ?? 0);
  }
  return { total: (user + sys) * 10, sys: sys * 10 };
}

/** read-like and write-like system calls of the given processes (syscr / syscw in /proc/PID/io). */
async function syscalls(pids: number[]): Promise<{ reads: number; writes: number }> {
  let reads = 0;
  let writes = 0;
  for (const p of pids) {
    const io = await readFile(`/proc/${p}/io`, "utf8").catch(() => "");
    reads += Number(/syscr: (\d+)/.exec(io)?.[1] ?? 0);
    writes += Number(/syscw: (\d+)/.exec(io)?.[1] ?? 0);
  }
  return { reads, writes };
}

async function childrenOf(pid: number): Promise<number[]> {
  const out: number[] = [];
  for (const d of await readdir("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    const stat = await readFile(`/proc/${d}/stat`, "utf8").catch(() => "");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    if (Number(f[1]) === pid) out.push(Number(d));
  }
  return out;
}

function start(cmd: string, args: string[], ready: RegExp, opts: { cwd?: string; env?: Record<string, string> } = {}): Promise<{ proc: ChildProcess; match: RegExpMatchArray }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(cmd, args, { cwd: opts.cwd ?? ROOT, stdio: ["ignore", "pipe", "pipe"], env: opts.env ? { ...process.env, ...opts.env } : undefined });
    let buf = "";
    // DSR_BENCH_CHILD_LOGS=DIR keeps each child's output (e.g. `--dsr-node-args --trace-gc-nvp`)
    const log = process.env.DSR_BENCH_CHILD_LOGS ? createWriteStream(join(process.env.DSR_BENCH_CHILD_LOGS, `${basename(args.find((a) => !a.startsWith("-")) ?? cmd)}-${proc.pid}.log`)) : undefined;
    const on = (d: Buffer) => {
      log?.write(d);
      if (buf.length > 65536) return; // ready long since: keep only the start
      buf += d.toString();
      const m = ready.exec(buf);
      if (m) resolve({ proc, match: m });
    };
    proc.stdout!.on("data", on);
    proc.stderr!.on("data", on);
    proc.on("exit", (c) => reject(new Error(`${cmd} exited with ${c}: ${buf}`)));
    setTimeout(() => reject(new Error(`${cmd} did not start: ${buf}`)), 30_000);
  });
}


/** The proxies' key and certificate for --tls: the carried pair under the bench root, else a fresh one from openssl. */
function certificate(dir: string): { key: string; cert: string; ca: string } {
  let key = join(ROOT, "tls.key");
  let cert = join(ROOT, "tls.crt");
  if (!existsSync(key) || !existsSync(cert)) {
    [key, cert] = [join(dir, "tls.key"), join(dir, "tls.crt")];
    const r = spawnSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`--tls: openssl could not make a certificate: ${r.error?.message ?? r.stderr}`);
  }
  return { key, cert, ca: readFileSync(cert, "utf8") };
}

async function startNginx(upstreamPort: number, dir: string, tls?: { key: string; cert: string; ca: string }): Promise<{ proc: ChildProcess; port: number }> {
  const port = await freePort();
  // As the seed guides configure it in front of vLLM: upstream keepalive, HTTP/1.1 to the upstream,
  // no buffering so SSE tokens pass at once, long read timeouts.
  const conf = `
daemon off;
user root;
worker_processes ${NGINX_WORKERS};
worker_rlimit_nofile 20000;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path ${dir}/body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  upstream llm { server 127.0.0.1:${upstreamPort}; keepalive 1024; }
  server {
    listen 127.0.0.1:${port}${tls ? " ssl" : ""} backlog=4096;${tls ? `
    ssl_certificate ${tls.cert};
    ssl_certificate_key ${tls.key};` : ""}
    location / {
      proxy_pass http://llm;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_buffering off;
      proxy_cache off;
      proxy_read_timeout 3600s;
      keepalive_requests 100000;
    }
  }
}`;
  await writeFile(join(dir, "nginx.conf"), conf);
  // -e: the startup error log too (the compiled-in /var/log/nginx may not exist where nginx was carried)
  const proc = spawn(...pinned(PROXY_CPUS, NGINX, ["-c", join(dir, "nginx.conf"), "-p", dir, "-e", join(dir, "error.log")]), { stdio: ["ignore", "pipe", "pipe"] });
  for (let i = 0; i < 100; i++) {
    await sleep(100);
    const dispatcher = tls ? new Agent({ connect: { ca: tls.ca } }) : undefined;
    const ok = await undiciFetch(`${tls ? "https" : "http"}://127.0.0.1:${port}/health`, { dispatcher }).then((r) => r.ok, () => false);
    if (ok) return { proc, port };
  }
  throw new Error(`nginx did not start: ${await readFile(join(dir, "error.log"), "utf8").catch(() => "")}`);
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), "dsr-bench-gw-"));
  const procs: ChildProcess[] = [];
  // a .ts script runs through tsx (development tree); a bundled .mjs with plain node
  const scriptArgs = (file: string) => (file.endsWith(".ts") ? ["--import", "tsx", file] : [file]);
  const startUpstream = async (pace: number) => {
    const u = await start(...pinned(UPSTREAM_CPUS, process.execPath, [...scriptArgs(STANDIN), "--port", "0", "--tokens", String(TOKENS), "--pace-ms", String(pace), "--workers", String(UPSTREAM_WORKERS), "--reasoning-tokens", String(REASONING_TOKENS), "--reasoning-field", REASONING_FIELD, ...(DEEPSEEK_SHAPE ? ["--deepseek-shape"] : [])]), /"port":(\d+)/);
    procs.push(u.proc);
    return { proc: u.proc, port: Number(u.match[1]) };
  };
  if (LOADGEN_CPUS) {
    // this process is the load generator: pin all its threads (children are pinned on their own)
    const r = spawnSync("taskset", ["-a", "-p", "-c", LOADGEN_CPUS, String(process.pid)], { encoding: "utf8" });
    if (r.status !== 0) throw new Error(`taskset could not pin the load generator: ${r.error?.message ?? r.stderr}`);
  }
  const tls = TLS ? certificate(dir) : undefined;
  const gen = loadGenerator(LOADGEN_THREADS, tls?.ca);
  const results: Record<string, Record<string, RunResult>> = {};
  try {
    const runs = ([["latency", PACE, SECONDS], ["throughput", 1, Math.max(6, SECONDS / 2)]] as const).filter(([run]) => RUNS.includes(run));
    for (const [run, pace, secs] of runs) {
      const up = await startUpstream(pace);
      const serveArgs = ["serve", "--upstream", `http://127.0.0.1:${up.port}`, "--port", "0", "--max-concurrency", "100000", "--max-queue", "100000", ...(tls ? ["--ssl-keyfile", tls.key, "--ssl-certfile", tls.cert] : [])];
      const serving = /^serving .* at (https?:\/\/[^\s/]+)\/v1/m;
      const gw = await start(...pinned(PROXY_CPUS, process.execPath, [...DSR_NODE_ARGS, DSR_CLI, ...serveArgs]), serving);
      procs.push(gw.proc);
      const gw2 = await start(...pinned(PROXY_CPUS, process.execPath, [...DSR_NODE_ARGS, DSR_CLI, ...serveArgs, "--workers", String(DSR_WORKERS)]), serving);
      procs.push(gw2.proc);
      const base = COMPARE_CLI ? await start(...pinned(PROXY_CPUS, process.execPath, [...COMPARE_NODE_ARGS, COMPARE_CLI, ...serveArgs]), serving, { env: COMPARE_ENV }) : undefined;
      if (base) procs.push(base.proc);
      const base2 = COMPARE_CLI && COMPARE_WORKERS > 1 ? await start(...pinned(PROXY_CPUS, process.execPath, [...COMPARE_NODE_ARGS, COMPARE_CLI, ...serveArgs, "--workers", String(COMPARE_WORKERS)]), serving, { env: COMPARE_ENV }) : undefined;
      if (base2) procs.push(base2.proc);
      const floor = FLOOR ? await start(...pinned(PROXY_CPUS, process.execPath, [...scriptArgs(FLOOR), ...serveArgs, "--workers", String(DSR_WORKERS)]), serving) : undefined;
      if (floor) procs.push(floor.proc);
      const ng = await startNginx(up.port, dir, tls);
      procs.push(ng.proc);
      const nginxWorkers = () => childrenOf(ng.proc.pid!);
      const allTargets: [string, string, () => Promise<number[]>][] = [
        ["direct", `http://127.0.0.1:${up.port}`, async () => []],
        ["dsr", gw.match[1], async () => [gw.proc.pid!]],
        ...(base ? [["dsr_baseline", base.match[1], async () => [base.proc.pid!]] as [string, string, () => Promise<number[]>]] : []),
        [`dsr_workers${DSR_WORKERS}`, gw2.match[1], async () => [gw2.proc.pid!, ...(await childrenOf(gw2.proc.pid!))]],
        ...(base2 ? [[`dsr_baseline_workers${COMPARE_WORKERS}`, base2.match[1], async () => [base2.proc.pid!, ...(await childrenOf(base2.proc.pid!))]] as [string, string, () => Promise<number[]>]] : []),
        ...(floor ? [[`node_floor_workers${DSR_WORKERS}`, floor.match[1], async () => [floor.proc.pid!, ...(await childrenOf(floor.proc.pid!))]] as [string, string, () => Promise<number[]>]] : []),
        ["nginx", `${tls ? "https" : "http"}://127.0.0.1:${ng.port}`, nginxWorkers],
      ];
      const targets = allTargets.filter(([name]) => ONLY.length === 0 || ONLY.includes(name));
      // Rounds interleave the targets, so load from other processes on the machine drifts over all
      // of them alike instead of favouring whichever ran first. Pools stay open (connections warm).
      const parts: Samples[][] = targets.map(() => []);
      for (let round = 0; round < ROUNDS; round++) {
        // every other round goes in reverse order (A B C, C B A, …), so that a target's place in the
        // round (what ran just before it, how long the stand-in has been busy) evens out over rounds
        for (let i = 0; i < targets.length; i++) {
          const t = round % 2 === 0 ? i : targets.length - 1 - i;
          const part = await load(gen, targets[t][1], CONC, secs / ROUNDS, TOKENS * pace, targets[t][2]);
          parts[t].push(part);
          // progress on stderr (stdout is the JSON document)
          process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${run} round ${round + 1}/${ROUNDS} ${targets[t][0]}: ${part.streams} streams, ${part.errors} errors\n`);
        }
      }
      results[run] = Object.fromEntries(targets.map(([name], t) => [name, merge(parts[t])]));
      for (const p of [ng.proc, gw.proc, gw2.proc, base?.proc, base2?.proc, floor?.proc, up.proc]) if (p) await stopProc(p);
    }
  } finally {
    await gen.close();
    for (const p of procs) await stopProc(p);
    await rm(dir, { recursive: true, force: true });
  }
  const lat = results.latency as Record<string, RunResult> | undefined;
  const added = (t: string) => lat && {
    ttft_p50_ms: round(lat[t].ttft_ms.p50 - lat.direct.ttft_ms.p50, 3),
    ttft_p99_ms: round(lat[t].ttft_ms.p99 - lat.direct.ttft_ms.p99, 3),
    itl_p50_ms: round(lat[t].itl_ms.p50 - lat.direct.itl_ms.p50, 3),
    itl_p99_ms: round(lat[t].itl_ms.p99 - lat.direct.itl_ms.p99, 3),
  };
  const thr = results.throughput as Record<string, RunResult> | undefined;
  const proxies = Object.keys(lat ?? thr ?? {}).filter((t) => t !== "direct");
  const each = <T>(f: (t: string) => T) => Object.fromEntries(proxies.map((t) => [t, f(t)]));
  const doc = {
    schema: "dsr.bench.gateway/1",
    config: {
      dsr_workers: DSR_WORKERS,
      concurrency: CONC,
      tokens_per_stream: TOKENS,
      tls: TLS,
      latency_pace_ms: PACE,
      throughput_pace_ms: 1,
      seconds: SECONDS,
      rounds: ROUNDS,
      warmup: "1.5 stream durations (at least 2 s) per round",
      nginx_worker_processes: NGINX_WORKERS,
      endpoint: "/v1/completions stream",
      client_include_usage: INCLUDE_USAGE,
      reasoning_tokens_per_stream: REASONING_TOKENS,
      deepseek_shape: DEEPSEEK_SHAPE,
      reasoning_field: CHAT ? REASONING_FIELD : undefined,
      cpus: { proxy: PROXY_CPUS || "any", upstream: UPSTREAM_CPUS || "any", loadgen: LOADGEN_CPUS || "any" },
      upstream_processes: UPSTREAM_WORKERS,
      loadgen_threads: LOADGEN_THREADS,
      baseline_cli: COMPARE_CLI || undefined,
      baseline_node_args: COMPARE_NODE_ARGS.length ? COMPARE_NODE_ARGS.join(" ") : undefined,
      baseline_env: Object.keys(COMPARE_ENV).length ? COMPARE_ENV : undefined,
      baseline_workers: COMPARE_WORKERS > 1 ? COMPARE_WORKERS : undefined,
    },
    environment: { cpus: cpus().length, cpu_model: cpus()[0]?.model, node: process.version, loadavg_start_1m: round(loadavg()[0]), date: new Date().toISOString() },
    added_latency_vs_direct: lat && each(added),
    max_streams_per_s: thr && { direct: thr.direct.streams_per_s, ...each((t) => thr[t].streams_per_s) },
    cpu_ms_per_stream: {
      throughput_run: thr && each((t) => thr[t].proxy_cpu_ms_per_stream),
      latency_run: lat && each((t) => lat[t].proxy_cpu_ms_per_stream),
      kernel_share: { throughput_run: thr && each((t) => thr[t].proxy_cpu_kernel_share), latency_run: lat && each((t) => lat[t].proxy_cpu_kernel_share) },
    },
    // how many events each upstream read carried: 64 tokens + [DONE] over (reads - 1 request read)
    syscalls_per_stream: {
      throughput_run: thr && each((t) => ({ reads: thr[t].proxy_reads_per_stream, writes: thr[t].proxy_writes_per_stream })),
      latency_run: lat && each((t) => ({ reads: lat[t].proxy_reads_per_stream, writes: lat[t].proxy_writes_per_stream })),
      note: "read()/write() calls from /proc/PID/io; nginx receives with recv(), which is not counted there",
    },
    targets: {
      p99_added_le_2ms: lat && each((t) => added(t)!.ttft_p99_ms <= 2 && added(t)!.itl_p99_ms <= 2),
      throughput_ge_nginx: thr && each((t) => thr[t].streams_per_s >= thr.nginx.streams_per_s),
    },
    runs: results,
  };
  process.stdout.write(JSON.stringify(doc, null, 2) + "\n");
}

async function stopProc(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null || p.signalCode !== null) return;
  const done = new Promise((r) => p.once("exit", r));
  p.kill("SIGTERM");
  const t = setTimeout(() => p.kill("SIGKILL"), 5000);
  await done;
  clearTimeout(t);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const round = (x: number, d = 2) => Math.round(x * 10 ** d) / 10 ** d;

if (isMainThread) await main();
else serveLoader();
