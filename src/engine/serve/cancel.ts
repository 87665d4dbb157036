/**
 * A request's cancellation (client gone, timeout, shutdown). Like an AbortController, but the
 * AbortSignal is made only when something asks for one (a token engine's submission): most requests
 * are never cancelled, and on the proxy's hot path a controller, its signal and their listener
 * bookkeeping were 3% of the gateway's CPU per stream.
 */
import { HttpError } from "./http-error.js";

/**
 * Told once when the request is cancelled. An object with a method rather than a closure: the
 * proxy's per-try object listens itself, so a request in flight holds no function, context and
 * unsubscribe closure for it (what every scavenge copies while streams are in flight).
 */
export interface CancelListener {
  onCancel(): void;
}

export class Cancel {
  aborted = false;
  reason: unknown;
  /** The listeners: one is the usual case, kept without an array. */
  private first: CancelListener | undefined;
  private more: CancelListener[] | undefined;
  private ac: AbortController | undefined;

  /** An AbortSignal that follows this cancellation (made on first use). */
  get signal(): AbortSignal {
    if (!this.ac) {
      this.ac = new AbortController();
      if (this.aborted) this.ac.abort(this.reason);
    }
    return this.ac.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.ac?.abort(reason);
    const { first, more } = this;
    this.first = this.more = undefined;
    first?.onCancel();
    if (more) for (const l of more) l.onCancel();
  }

  /** The client's connection closed before the answer ended (h1-server's close listener). */
  onClientClose(): void {
    this.abort(new HttpError(499, "client disconnected", { code: "client_closed" }));
  }

  /** Tells `l` once on abort (at once if already aborted), unless it unlistens first. */
  listen(l: CancelListener): void {
    if (this.aborted) return l.onCancel();
    if (this.first === undefined) this.first = l;
    else (this.more ??= []).push(l);
  }

  unlisten(l: CancelListener): void {
    if (this.first === l) this.first = this.more?.shift();
    else if (this.more) {
      const i = this.more.indexOf(l);
      if (i >= 0) this.more.splice(i, 1);
    }
  }
}
