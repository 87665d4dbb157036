/**
 * Admission control: at most `maxConcurrency` requests run; up to `maxQueue` wait in FIFO order; the
 * next one is refused at once with 429 and a Retry-After estimated from recent service times. A
 * waiting request leaves the queue when its client disconnects or its queue timeout passes (408).
 */
import type { Cancel, CancelListener } from "./cancel.js";
import { HttpError } from "./http-error.js";

export interface LimiterOptions {
  maxConcurrency: number;
  maxQueue: number;
  /** Longest wait in the queue before 408 (ms); 0 = no limit. */
  queueTimeoutMs: number;
}

/** A request's hold on a running slot; release() gives it back (once). An object, not a closure and its context, per request. */
export class Lease {
  private released = false;
  private readonly t0 = performance.now();
  constructor(private readonly limiter: Limiter) {}

  release(): void {
    if (this.released) return;
    this.released = true;
    this.limiter.released(performance.now() - this.t0);
  }
}

/** A request waiting in the queue: it leaves on its client's disconnect or its queue timeout. */
class Waiter implements CancelListener {
  private timer: NodeJS.Timeout | undefined;
  constructor(
    private readonly limiter: Limiter,
    readonly resolve: (lease: Lease) => void,
    private readonly reject: (e: unknown) => void,
    private readonly cancel: Cancel | undefined,
    timeoutMs: number,
  ) {
    if (timeoutMs > 0) {
      this.timer = setTimeout(() => this.leave(new HttpError(408, `request waited ${timeoutMs} ms in the queue without starting`, { code: "queue_timeout" })), timeoutMs);
    }
    cancel?.listen(this);
  }

  onCancel(): void {
    this.leave(new HttpError(499, "client closed the request while queued", { code: "client_closed" }));
  }

  /** Off the queue timer and the cancellation (it is leaving the queue, one way or the other). */
  cleanup(): void {
    if (this.timer) clearTimeout(this.timer);
    this.cancel?.unlisten(this);
  }

  private leave(e: HttpError): void {
    this.limiter.dequeue(this);
    this.cleanup();
    this.reject(e);
  }
}

export class Limiter {
  running = 0;
  private readonly queue: Waiter[] = [];
  private avgServiceMs = 1000; // exponentially weighted; seeds Retry-After before any request finished

  constructor(private readonly o: LimiterOptions) {}

  get waiting(): number {
    return this.queue.length;
  }

  /** The request's lease once it may run (at once when a slot is free). */
  acquire(cancel?: Cancel): Promise<Lease> | Lease {
    if (this.running < this.o.maxConcurrency && this.queue.length === 0) {
      this.running++;
      return new Lease(this);
    }
    if (this.queue.length >= this.o.maxQueue) {
      const retry = Math.max(1, Math.ceil(((this.queue.length / this.o.maxConcurrency + 1) * this.avgServiceMs) / 1000));
      throw new HttpError(429, `server busy: ${this.running} requests running and ${this.queue.length} queued (max ${this.o.maxConcurrency} + ${this.o.maxQueue})`, {
        code: "rate_limit_exceeded",
        headers: { "retry-after": String(retry) },
      });
    }
    return new Promise((resolve, reject) => {
      const w = new Waiter(this, resolve, reject, cancel, this.o.queueTimeoutMs);
      // a request cancelled before it queued has already been rejected
      if (!cancel?.aborted) this.queue.push(w);
    });
  }

  /** A lease ended after `serviceMs`: its slot passes straight to the next waiter, if any. */
  released(serviceMs: number): void {
    this.avgServiceMs = this.avgServiceMs * 0.9 + serviceMs * 0.1;
    const next = this.queue.shift();
    if (next) {
      next.cleanup();
      next.resolve(new Lease(this));
    } else {
      this.running--;
    }
  }

  dequeue(w: Waiter): void {
    const i = this.queue.indexOf(w);
    if (i >= 0) this.queue.splice(i, 1);
  }
}
