/**
 * Executors for convert tasks: a pool of worker threads (the CLI's path: all cores), or the same
 * TaskRunner inline on the calling thread (unit tests under vitest, which cannot start TS workers,
 * and `--threads 1`). Each worker gets at most two tasks at a time — one running, one queued — so
 * the main thread's message latency never leaves a core idle, and memory stays at two runners'
 * worth of buffers per thread at most.
 */
import { Worker } from "node:worker_threads";
import { TaskRunner, deserializeError, type SerializedError, type Task, type TaskResult } from "./tasks.js";

export interface Executor {
  readonly threads: number;
  run(task: Task): Promise<TaskResult>;
  /** Largest total of task buffers the executor's threads held at once (bytes). */
  peakBufferBytes(): number;
  close(): Promise<void>;
}

export class InlineExecutor implements Executor {
  readonly threads = 1;
  private runner = new TaskRunner();
  private peak = 0;
  async run(task: Task): Promise<TaskResult> {
    const r = this.runner.run(task);
    this.peak = Math.max(this.peak, this.runner.bufferBytes);
    return r;
  }
  peakBufferBytes(): number {
    return this.peak;
  }
  async close(): Promise<void> {}
}

interface Pending {
  resolve: (r: TaskResult) => void;
  reject: (e: Error) => void;
}
interface Slot {
  worker: Worker;
  inFlight: number;
  /** The most bytes this worker's runner has held in buffers (it reports after every task). */
  maxBuffer: number;
  pending: Map<number, Pending>;
}

const PER_WORKER_DEPTH = 2;

export class WorkerPool implements Executor {
  private slots: Slot[] = [];
  private waiting: { task: Task; p: Pending }[] = [];
  private nextId = 0;
  private failed?: Error;

  constructor(workerUrl: URL, readonly threads: number) {
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(workerUrl);
      const slot: Slot = { worker, inFlight: 0, maxBuffer: 0, pending: new Map() };
      worker.on("message", (m: { id: number; ok: boolean; result?: TaskResult; error?: SerializedError; bufferBytes: number }) => {
        slot.maxBuffer = Math.max(slot.maxBuffer, m.bufferBytes);
        const p = slot.pending.get(m.id);
        if (!p) return;
        slot.pending.delete(m.id);
        slot.inFlight--;
        if (m.ok) p.resolve(m.result!);
        else p.reject(deserializeError(m.error!));
        this.pump();
      });
      worker.on("error", (e) => this.fail(e));
      worker.on("exit", (code) => {
        if (code !== 0 && !this.failed) this.fail(new Error(`convert worker exited with code ${code}`));
      });
      this.slots.push(slot);
    }
  }

  private fail(e: Error): void {
    this.failed = e;
    for (const s of this.slots) {
      for (const p of s.pending.values()) p.reject(e);
      s.pending.clear();
    }
    for (const w of this.waiting) w.p.reject(e);
    this.waiting = [];
  }

  run(task: Task): Promise<TaskResult> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      this.waiting.push({ task, p: { resolve, reject } });
      this.pump();
    });
  }

  private pump(): void {
    while (this.waiting.length > 0) {
      let best: Slot | undefined;
      for (const s of this.slots) if (s.inFlight < PER_WORKER_DEPTH && (!best || s.inFlight < best.inFlight)) best = s;
      if (!best) return;
      const { task, p } = this.waiting.shift()!;
      const id = this.nextId++;
      best.pending.set(id, p);
      best.inFlight++;
      best.worker.postMessage({ id, task });
    }
  }

  peakBufferBytes(): number {
    return this.slots.reduce((a, s) => a + s.maxBuffer, 0);
  }

  async close(): Promise<void> {
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
