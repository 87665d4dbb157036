/**
 * Admission control: at most `maxConcurrency` requests run; up to `maxQueue` wait in FIFO order; the
 * next one is refused at once with 429 and a Retry-After estimated from recent service times. A
 * waiting request leaves the queue when its client disconnects or its queue timeout passes (408).
 */
import type { Cancel } from "./cancel.js";
import { HttpError } from "./http-error.js";

export interface LimiterOptions {
  maxConcurrency: number;
  maxQueue: number;
  /** Longest wait in the queue before 408 (ms); 0 = no limit. */
  queueTimeoutMs: number;
}

interface Waiter {
  resolve: (release: () => void) => void;
  reject: (e: unknown) => void;
  cleanup: () => void;
}

export class Limiter {
  running = 0;
  private readonly queue: Waiter[] = [];
  private avgServiceMs = 1000; // exponentially weighted; seeds Retry-After before any request finished

  constructor(private readonly o: LimiterOptions) {}

  get waiting(): number {
    return this.queue.length;
  }

  /** Resolves with a release function once the request may run. */
  acquire(cancel?: Cancel): Promise<() => void> | (() => void) {
    if (this.running < this.o.maxConcurrency && this.queue.length === 0) {
      this.running++;
      return this.releaser();
    }
    if (this.queue.length >= this.o.maxQueue) {
      const retry = Math.max(1, Math.ceil(((this.queue.length / this.o.maxConcurrency + 1) * this.avgServiceMs) / 1000));
      throw new HttpError(429, `server busy: ${this.running} requests running and ${this.queue.length} queued (max ${this.o.maxConcurrency} + ${this.o.maxQueue})`, {
        code: "rate_limit_exceeded",
        headers: { "retry-after": String(retry) },
      });
    }
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let unsubscribe: (() => void) | undefined;
      const remove = () => {
        const i = this.queue.indexOf(w);
        if (i >= 0) this.queue.splice(i, 1);
        w.cleanup();
      };
      const w: Waiter = {
        resolve,
        reject,
        cleanup: () => {
          if (timer) clearTimeout(timer);
          unsubscribe?.();
        },
      };
      if (this.o.queueTimeoutMs > 0) {
        timer = setTimeout(() => {
          remove();
          reject(new HttpError(408, `request waited ${this.o.queueTimeoutMs} ms in the queue without starting`, { code: "queue_timeout" }));
        }, this.o.queueTimeoutMs);
      }
      this.queue.push(w);
      unsubscribe = cancel?.onAbort(() => {
        remove();
        reject(new HttpError(499, "client closed the request while queued", { code: "client_closed" }));
      });
    });
  }

  private releaser(): () => void {
    const t0 = performance.now();
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.avgServiceMs = this.avgServiceMs * 0.9 + (performance.now() - t0) * 0.1;
      const next = this.queue.shift();
      if (next) {
        next.cleanup();
        next.resolve(this.releaser()); // the slot passes straight to the next waiter
      } else {
        this.running--;
      }
    };
  }
}
