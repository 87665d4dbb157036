/**
 * The main-thread side of the worker engine: implements TokenEngine by message passing to worker.ts.
 * Requests are validated here first so that errors such as a context overflow still throw from
 * submit() synchronously, as with the in-thread Scheduler; stats() returns the snapshot the worker
 * sends after every step.
 */
import { Worker } from "node:worker_threads";
import { DsrError } from "../../errors.js";
import type { OnnxManifest } from "../../onnx/build.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import type { SubmitRequest, TokenChunk, TokenEngine } from "../types.js";
import { Channel } from "./channel.js";
import type { DecoderSessionOptions } from "./decoder-session.js";
import { validateRequest, type EmbeddedStats, type EngineCounters, type SchedulerOptions } from "./scheduler.js";
import type { FromWorker, ToWorker, WireError } from "./worker-protocol.js";

const toError = (w: WireError) => new DsrError(w.code, w.message, { hint: w.hint, details: w.details });

export class WorkerEngine implements TokenEngine {
  private nextId = 1;
  private readonly channels = new Map<number, Channel<TokenChunk>>();
  private snapshot: EmbeddedStats;
  counters: EngineCounters = { prefillTokens: 0, decodeTokens: 0, prefillMs: 0, decodeMs: 0, decodeSteps: 0 };
  private closing?: Promise<void>;
  /** Set when the worker died: later submits fail at once instead of waiting forever. */
  private crashed?: DsrError;

  private constructor(
    private readonly worker: Worker,
    private readonly opts: SchedulerOptions,
    private readonly vocab: number,
    kvBytesPerToken: number,
    private readonly constraints: boolean,
  ) {
    const cap = opts.maxBatch * opts.maxContext;
    this.snapshot = { running: 0, waiting: 0, kvUsedTokens: 0, kvCapacityTokens: cap, maxContext: opts.maxContext, kvBytesPerToken, kvCapacityBytes: cap * kvBytesPerToken };
    worker.on("message", (m: FromWorker) => this.onMessage(m));
    const died = (why: string) => {
      this.crashed ??= new DsrError("DSR_ENGINE_FAILED", `engine worker ${why}`, { hint: "restart the engine; re-run with --verbose and report it" });
      for (const c of this.channels.values()) c.fail(this.crashed);
      this.channels.clear();
    };
    worker.on("error", (e) => died(`crashed: ${e.message}`));
    worker.on("exit", (code) => {
      if (!this.closing) died(`exited unexpectedly (code ${code})`);
    });
  }

  static async open(url: URL, onnxDir: string, manifest: OnnxManifest, session: DecoderSessionOptions, scheduler: SchedulerOptions, tokenBytes?: TokenByteTable): Promise<WorkerEngine> {
    const worker = new Worker(url);
    const vocab = await new Promise<number>((resolve, reject) => {
      const onMessage = (m: FromWorker) => {
        if (m.type === "opened") resolve(m.vocab);
        else if (m.type === "open-error") reject(toError(m.error));
        else return;
        worker.off("message", onMessage);
      };
      worker.on("message", onMessage);
      worker.once("error", reject);
      worker.postMessage({ type: "open", onnxDir, manifest, session, scheduler, tokenBytes } satisfies ToWorker);
    }).catch(async (e) => {
      await worker.terminate();
      throw e;
    });
    const { numLayers, kvHeads, headDim } = manifest.io;
    return new WorkerEngine(worker, scheduler, vocab, numLayers * 2 * kvHeads * headDim * 4, !!tokenBytes);
  }

  private onMessage(m: FromWorker): void {
    if (m.type === "stats") {
      this.snapshot = m.stats;
      this.counters = m.counters;
      return;
    }
    if (m.type !== "chunk" && m.type !== "end" && m.type !== "error") return;
    const ch = this.channels.get(m.id);
    if (!ch) return;
    if (m.type === "chunk") ch.push(m.chunk);
    else {
      this.channels.delete(m.id);
      if (m.type === "end") ch.end();
      else ch.fail(toError(m.error));
    }
  }

  private post(m: ToWorker): void {
    this.worker.postMessage(m);
  }

  submit(req: SubmitRequest): AsyncIterable<TokenChunk> {
    if (this.closing) throw new DsrError("DSR_ENGINE_CLOSED", "the embedded engine is closed", { hint: "open a new engine" });
    if (this.crashed) throw this.crashed;
    validateRequest(req, this.opts.maxContext, this.vocab, this.constraints);
    const id = this.nextId++;
    const cancel = () => {
      if (this.channels.has(id)) this.post({ type: "cancel", id });
    };
    const ch = new Channel<TokenChunk>(cancel);
    this.channels.set(id, ch);
    const { signal, ...rest } = req;
    if (signal) {
      if (signal.aborted) queueMicrotask(cancel);
      else signal.addEventListener("abort", cancel, { once: true });
    }
    this.post({ type: "submit", id, req: rest });
    return ch;
  }

  stats(): EmbeddedStats {
    return this.snapshot;
  }

  close(): Promise<void> {
    if (this.crashed) return (this.closing ??= this.worker.terminate().then(() => {}));
    this.closing ??= new Promise<void>((resolve) => {
      this.worker.on("message", (m: FromWorker) => {
        if (m.type === "closed") resolve();
      });
      this.post({ type: "close" });
    }).then(async () => {
      await this.worker.terminate();
    });
    return this.closing;
  }
}
