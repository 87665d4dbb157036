/**
 * Runs one engine child (vLLM, SGLang, or a `dsr serve --engine embedded` instance) and keeps it
 * alive: its output is passed line by line to `onLog` (the command prefixes it), readiness is a real
 * HTTP check (vLLM /health, SGLang /health_generate, dsr /ready — facts §1.7), and a crash restarts
 * it after an exponential backoff (reset once it has stayed up for a while). While it is down or
 * starting, `ready` is false so the router sends its traffic elsewhere.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { request } from "undici";
import { DsrError } from "../errors.js";

export interface ChildSpec {
  name: string;
  command: string;
  args: string[];
  env?: Record<string, string | undefined>;
  /** Full URL that answers 200 once the child can serve. */
  readyUrl: string;
}

export type ChildState = "starting" | "ready" | "backoff" | "stopping" | "stopped";

export interface SupervisorOptions {
  onLog?: (name: string, line: string) => void;
  onState?: (name: string, state: ChildState, detail?: string) => void;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Uptime after which the backoff resets. */
  stableMs?: number;
  readyPollMs?: number;
  /** Health re-check while ready; a failure marks it not ready until the next success. */
  livenessPollMs?: number;
  /** A child that never became ready and exited this many times is given up on (waitReady rejects). */
  maxStartFailures?: number;
}

export class Supervisor {
  state: ChildState = "stopped";
  restarts = 0;
  lastExit?: string;
  private child?: ChildProcess;
  private stopping = false;
  private backoff: number;
  private timer?: NodeJS.Timeout;
  private startedAt = 0;
  private readyWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private everReady = false;
  private startFailures = 0;

  constructor(readonly spec: ChildSpec, private readonly o: SupervisorOptions = {}) {
    this.backoff = o.backoffInitialMs ?? 1000;
  }

  get ready(): boolean {
    return this.state === "ready";
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  start(): void {
    this.stopping = false;
    this.launch();
  }

  /** Resolves once ready; rejects if `signal` aborts or `timeoutMs` passes first. */
  waitReady(timeoutMs: number, signal?: AbortSignal): Promise<void> {
    if (this.ready) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        cleanup();
        reject(new DsrError("DSR_ENGINE_NOT_READY", `${this.spec.name} did not become ready within ${Math.round(timeoutMs / 1000)} s (${this.spec.readyUrl})`, {
          hint: `read its log lines above (prefixed [${this.spec.name}]); raise --ready-timeout for large models`,
        }));
      }, timeoutMs);
      const onAbort = () => {
        cleanup();
        reject(signal!.reason);
      };
      const w = { resolve: () => (cleanup(), resolve()), reject: (e: unknown) => (cleanup(), reject(e)) };
      const cleanup = () => {
        clearTimeout(t);
        signal?.removeEventListener("abort", onAbort);
        this.readyWaiters = this.readyWaiters.filter((x) => x !== w);
      };
      signal?.addEventListener("abort", onAbort, { once: true });
      this.readyWaiters.push(w);
    });
  }

  /** No more restarts (shutdown began); a running child keeps serving until stop(). */
  holdRestarts(): void {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; no restart. */
  async stop(graceMs: number): Promise<void> {
    this.stopping = true;
    if (this.timer) clearTimeout(this.timer);
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) {
      this.setState("stopped");
      return;
    }
    this.setState("stopping");
    const exited = new Promise<void>((r) => c.once("exit", () => r()));
    c.kill("SIGTERM");
    const t = setTimeout(() => c.kill("SIGKILL"), graceMs);
    await exited;
    clearTimeout(t);
    this.setState("stopped");
  }

  private launch(): void {
    this.setState("starting");
    this.startedAt = Date.now();
    let child: ChildProcess;
    try {
      child = spawn(this.spec.command, this.spec.args, { env: { ...process.env, ...this.spec.env }, stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      this.child = undefined;
      this.onExit(undefined, `could not start: ${(e as Error).message}`);
      return;
    }
    this.child = child;
    for (const s of [child.stdout, child.stderr]) {
      if (s) createInterface({ input: s }).on("line", (l) => this.o.onLog?.(this.spec.name, l));
    }
    child.once("error", (e) => this.onExit(child, `could not start ${this.spec.command}: ${e.message}`));
    child.once("exit", (code, sig) => this.onExit(child, sig ? `killed by ${sig}` : `exited with code ${code}`));
    void this.pollReady(child);
  }

  private onExit(child: ChildProcess | undefined, why: string): void {
    if (child !== this.child) return; // 'error' and 'exit' can both fire for one child
    this.lastExit = why;
    this.child = undefined;
    if (this.stopping) return;
    if (!this.everReady && ++this.startFailures >= (this.o.maxStartFailures ?? 5)) {
      // a bad flag, a missing module, no GPU memory: restarting would only repeat it
      this.stopping = true;
      this.setState("stopped", `${why}; gave up after ${this.startFailures} failed starts`);
      const err = new DsrError("DSR_ENGINE_FAILED", `${this.spec.name} (${this.spec.command}) ${why} ${this.startFailures} times before becoming ready`, {
        hint: `read its log lines above (prefixed [${this.spec.name}]); the command was: ${this.spec.command} ${this.spec.args.join(" ")}`,
      });
      for (const w of this.readyWaiters.slice()) w.reject(err);
      return;
    }
    if (Date.now() - this.startedAt > (this.o.stableMs ?? 60_000)) this.backoff = this.o.backoffInitialMs ?? 1000;
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, this.o.backoffMaxMs ?? 30_000);
    this.restarts++;
    this.setState("backoff", `${why}; restarting in ${(wait / 1000).toFixed(1)} s`);
    this.timer = setTimeout(() => this.launch(), wait);
  }

  private async pollReady(child: ChildProcess): Promise<void> {
    const alive = () => this.child === child && !this.stopping;
    while (alive()) {
      const ok = await check(this.spec.readyUrl);
      if (!alive()) return;
      if (ok && this.state !== "ready") {
        this.everReady = true;
        this.setState("ready");
        for (const w of this.readyWaiters.slice()) w.resolve();
      } else if (!ok && this.state === "ready") {
        this.setState("starting", `${this.spec.readyUrl} stopped answering 200`);
      }
      await sleep(this.state === "ready" ? this.o.livenessPollMs ?? 2000 : this.o.readyPollMs ?? 250);
    }
  }

  private setState(s: ChildState, detail?: string): void {
    if (this.state === s && !detail) return;
    this.state = s;
    this.o.onState?.(this.spec.name, s, detail);
  }
}

async function check(url: string): Promise<boolean> {
  try {
    const r = await request(url, { method: "GET", headersTimeout: 10_000, bodyTimeout: 10_000 });
    await r.body.dump();
    return r.statusCode === 200;
  } catch {
    return false;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
