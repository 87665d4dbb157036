/**
 * `dsr serve --workers N`: the gateway in N processes (node:cluster) sharing one listening socket,
 * so a proxy under heavy streaming load uses every core, as nginx's worker processes do. The primary
 * runs the engines and supervisors; each worker re-runs `dsr serve` with the same flags plus a
 * WorkerSpec in its environment and fronts the instances the primary started. /metrics on any worker
 * returns the sum over the primary and all workers (prom-client's AggregatorRegistry), collected
 * over the cluster IPC channel, and per-key limits are kept by the primary, which the workers ask for
 * each request of a limited key (a key's limits hold across workers, whichever a connection lands
 * on). Workers that die are restarted, their admitted requests released; on shutdown each drains.
 */
import cluster, { type Worker } from "node:cluster";
import { AggregatorRegistry } from "prom-client";

type metric = object; // one metric family as prom-client's getMetricsAsJSON() returns it
import type { GatewayMetrics } from "../engine/serve/metrics.js";
import { HttpError } from "../engine/serve/http-error.js";
import { KeyLimits, type KeyGate, type KeyLimitOptions, type KeyRelease } from "../engine/serve/key-limits.js";
import type { WorkerPool, WorkerSpec } from "../engine/serve/server.js";

const SPEC_ENV = "DSR_SERVE_WORKER_SPEC";
/** Each gateway worker's V8 semi-space (MB): its young generation is twice this. */
const WORKER_SEMI_SPACE_MB = 32;

type Msg =
  | { type: "dsr:metrics-req"; id: number }
  | { type: "dsr:metrics"; id: number; body: string; contentType: string }
  | { type: "dsr:collect"; id: number }
  | { type: "dsr:collected"; id: number; json: metric[] }
  | { type: "dsr:shutdown" }
  | { type: "dsr:key-admit"; id: number; key: string }
  | { type: "dsr:key-admitted"; id: number; headers?: Record<string, string>; refused?: { status: number; code: string | null; message: string } }
  | { type: "dsr:key-done"; id: number; tokens: number }
  | { type: "dsr:probe"; id: number }
  | { type: "dsr:probed"; id: number };

/** How long a worker waits for the primary's answer on a key before giving up with a 503. */
const KEY_ADMIT_TIMEOUT_MS = 5000;

export function workerSpec(env: NodeJS.ProcessEnv): WorkerSpec | undefined {
  return cluster.isWorker && env[SPEC_ENV] ? (JSON.parse(env[SPEC_ENV]) as WorkerSpec) : undefined;
}

/** Worker side: answers the primary's collection requests and asks it for the cluster-wide exposition. */
export function workerChannel(metrics: () => GatewayMetrics | undefined, onShutdown: () => void) {
  let next = 0;
  const pending = new Map<number, (v: { contentType: string; body: string }) => void>();
  const admitting = new Map<number, (m: Extract<Msg, { type: "dsr:key-admitted" }>) => void>();
  let probe: (() => Promise<void>) | undefined;
  process.on("message", (m: Msg) => {
    if (m?.type === "dsr:probe") {
      void (probe?.() ?? Promise.resolve()).finally(() => process.send!({ type: "dsr:probed", id: m.id } satisfies Msg));
      return;
    }
    if (m?.type === "dsr:key-admitted") {
      admitting.get(m.id)?.(m);
      admitting.delete(m.id);
      return;
    }
    if (m?.type === "dsr:collect") {
      void (async () => process.send!({ type: "dsr:collected", id: m.id, json: ((await metrics()?.json()) ?? []) as metric[] } satisfies Msg))();
    } else if (m?.type === "dsr:metrics") {
      pending.get(m.id)?.({ contentType: m.contentType, body: m.body });
      pending.delete(m.id);
    } else if (m?.type === "dsr:shutdown") {
      onShutdown();
    }
  });
  const keyGate: KeyGate = {
    admit: (key) =>
      new Promise<KeyRelease>((resolve, reject) => {
        const id = ++next;
        const t = setTimeout(() => {
          admitting.delete(id);
          reject(new HttpError(503, "the gateway's per-key limits did not answer in time", { code: "unavailable", headers: { "retry-after": "1" } }));
        }, KEY_ADMIT_TIMEOUT_MS);
        admitting.set(id, (m) => {
          clearTimeout(t);
          const r = m.refused;
          if (r) return reject(new HttpError(r.status, r.message, { code: r.code, headers: m.headers }));
          let done = false;
          const release: KeyRelease = (tokens = 0) => {
            if (done || !process.connected) return;
            done = true;
            process.send!({ type: "dsr:key-done", id, tokens } satisfies Msg);
          };
          release.headers = m.headers;
          resolve(release);
        });
        process.send!({ type: "dsr:key-admit", id, key } satisfies Msg);
      }),
  };
  return {
    keyGate,
    /** What the primary's "probe now" runs: this worker's health probes of the instances. */
    setProbe: (fn: () => Promise<void>) => void (probe = fn),
    metricsSource: () =>
      new Promise<{ contentType: string; body: string }>((resolve) => {
        const id = ++next;
        pending.set(id, resolve);
        process.send!({ type: "dsr:metrics-req", id } satisfies Msg);
      }),
  };
}

/**
 * The node flags a gateway worker runs with: the primary's own, plus
 *
 * - `--single-threaded-gc`: workers collect garbage on their own thread; with every core running a
 *   worker, V8's parallel GC helpers only compete with the other workers. Measured on 4 pinned cores
 *   (docs/BENCHMARKS.md, gateway): 9.4k -> 11.2k streams/s, 0.42 -> 0.35 ms CPU per stream, p99
 *   added TTFT 1.8 -> 0.6 ms. A GC threading flag the user gave (`--no-single-threaded-gc`,
 *   `--[no-]parallel-scavenge`, `--[no-]concurrent-marking`, `--[no-]parallel-marking`) wins.
 * - a 32 MB semi-space from the start (V8's default grows to 16 MB): a scavenge copies what is
 *   alive, i.e. the state of the streams in flight, about the same at any moment, so a young
 *   generation twice the size halves how often that copy is made. Measured on the device's 4 pinned
 *   cores at ~13k streams/s: scavenges took 35-83 ms of each worker's second with the default and
 *   14-19 ms with this (docs/BENCHMARKS.md, session 7). A semi-space flag the user gave (node's
 *   command line or NODE_OPTIONS) wins.
 */
export function workerExecArgv(execArgv: readonly string[], env: NodeJS.ProcessEnv): string[] {
  const given = `${execArgv.join(" ")} ${env.NODE_OPTIONS ?? ""}`;
  const semi = /semi-space-size/.test(given) ? [] : [`--max-semi-space-size=${WORKER_SEMI_SPACE_MB}`, `--min-semi-space-size=${WORKER_SEMI_SPACE_MB}`];
  const threads = /single-threaded-gc|parallel-scavenge|concurrent-marking|parallel-marking/.test(given) ? [] : ["--single-threaded-gc"];
  return [...execArgv, ...threads, ...semi];
}

/** Primary side: forks the workers, serves their metrics requests and keeps the per-key limits for all of them. */
export function workerForker(primaryMetrics: () => GatewayMetrics | undefined, note: (l: string) => void, keyLimits?: KeyLimitOptions) {
  return async (spec: Omit<WorkerSpec, "index">): Promise<WorkerPool> => {
    const workers = new Map<number, Worker>();
    const limits = keyLimits && new KeyLimits(keyLimits);
    /** Per worker: its admitted requests' releases, by the worker's id (released all at once if it dies). */
    const leases = new Map<Worker, Map<number, KeyRelease>>();
    cluster.setupPrimary({ execArgv: workerExecArgv(process.execArgv, process.env) });
    let stopping = false;
    let collectId = 0;
    const collecting = new Map<number, { left: number; parts: metric[][]; done: () => void }>();

    const probing = new Map<number, () => void>();
    const onMessage = (w: Worker) => async (m: Msg) => {
      if (m?.type === "dsr:probed") {
        probing.get(m.id)?.();
      } else if (m?.type === "dsr:key-admit") {
        let answer: Msg;
        try {
          if (!limits) throw new HttpError(500, "no per-key limits are configured");
          const release = limits.admit(m.key);
          let mine = leases.get(w);
          if (!mine) leases.set(w, (mine = new Map()));
          mine.set(m.id, release);
          answer = { type: "dsr:key-admitted", id: m.id, headers: release.headers };
        } catch (e) {
          const err = e instanceof HttpError ? e : new HttpError(500, String(e));
          answer = { type: "dsr:key-admitted", id: m.id, headers: err.headers, refused: { status: err.status, code: err.code, message: err.message } };
        }
        if (w.isConnected()) w.send(answer);
      } else if (m?.type === "dsr:key-done") {
        const mine = leases.get(w);
        mine?.get(m.id)?.(m.tokens);
        mine?.delete(m.id);
      } else if (m?.type === "dsr:collected") {
        const c = collecting.get(m.id);
        if (!c) return;
        c.parts.push(m.json);
        if (--c.left === 0) c.done();
      } else if (m?.type === "dsr:metrics-req") {
        const id = ++collectId;
        const live = [...workers.values()].filter((x) => x.isConnected());
        const parts: metric[][] = [];
        await new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 2000); // a stuck worker must not hang /metrics
          collecting.set(id, { left: live.length, parts, done: () => (clearTimeout(t), resolve()) });
          for (const x of live) x.send({ type: "dsr:collect", id } satisfies Msg);
        });
        collecting.delete(id);
        const own = primaryMetrics();
        if (own) parts.push((await own.json()) as metric[]);
        const reg = AggregatorRegistry.aggregate(parts);
        w.send({ type: "dsr:metrics", id: m.id, body: await reg.metrics(), contentType: reg.contentType } satisfies Msg);
      }
    };

    const fork = (index: number): Worker => {
      const w = cluster.fork({ [SPEC_ENV]: JSON.stringify({ ...spec, index } satisfies WorkerSpec) });
      workers.set(index, w);
      w.on("message", onMessage(w));
      w.on("exit", (code, sig) => {
        // what it had admitted is over: its places in flight are free again
        for (const release of leases.get(w)?.values() ?? []) release();
        leases.delete(w);
        if (stopping || workers.get(index) !== w) return;
        note(`gateway worker w${index} ${sig ? `killed by ${sig}` : `exited with code ${code}`}; restarting`);
        setTimeout(() => !stopping && fork(index), 500);
      });
      return w;
    };

    const listening = new Promise<string>((resolve, reject) => {
      let n = 0;
      const onListen = (_w: Worker, a: { address: string | null; port: number }) => {
        if (++n === spec.workers) {
          cluster.off("listening", onListen);
          const host = !a.address || a.address === "::" ? "127.0.0.1" : a.address.includes(":") ? `[${a.address}]` : a.address;
          resolve(`${spec.https ? "https" : "http"}://${host}:${a.port}`);
        }
      };
      cluster.on("listening", onListen);
      cluster.once("exit", (_w, code, sig) => n < spec.workers && reject(new Error(`a gateway worker ${sig ? `was killed by ${sig}` : `exited with code ${code}`} before listening`)));
    });
    for (let i = 0; i < spec.workers; i++) fork(i);
    let url: string;
    try {
      url = await listening;
    } catch (e) {
      stopping = true;
      for (const w of workers.values()) w.process.kill("SIGKILL");
      throw e;
    }
    return {
      url,
      inFlight: () => NaN,
      async probe() {
        // every live worker probes its instances now; a stuck one does not hold this up for long
        const live = [...workers.values()].filter((x) => x.isConnected());
        await Promise.all(
          live.map(
            (w) =>
              new Promise<void>((resolve) => {
                const id = ++collectId;
                const t = setTimeout(() => (probing.delete(id), resolve()), 5000);
                probing.set(id, () => (clearTimeout(t), probing.delete(id), resolve()));
                w.send({ type: "dsr:probe", id } satisfies Msg);
              }),
          ),
        );
      },
      reload() {
        // each worker re-reads the key file and certificate it was started with (serve.ts)
        for (const w of workers.values()) if (w.isConnected()) w.process.kill("SIGHUP");
      },
      async stop(graceMs) {
        stopping = true;
        await Promise.all(
          [...workers.values()].map(
            (w) =>
              new Promise<void>((resolve) => {
                if (!w.isConnected()) return resolve();
                const t = setTimeout(() => w.process.kill("SIGKILL"), graceMs + 5000);
                w.once("exit", () => (clearTimeout(t), resolve()));
                w.send({ type: "dsr:shutdown" } satisfies Msg);
              }),
          ),
        );
        return 0;
      },
    };
  };
}
