/**
 * A request's cancellation (client gone, timeout, shutdown). Like an AbortController, but the
 * AbortSignal is made only when something asks for one (a token engine's submission): most requests
 * are never cancelled, and on the proxy's hot path a controller, its signal and their listener
 * bookkeeping were 3% of the gateway's CPU per stream.
 */
export class Cancel {
  aborted = false;
  reason: unknown;
  private listeners: (() => void)[] | undefined;
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
    const ls = this.listeners;
    this.listeners = undefined;
    if (ls) for (const f of ls) f();
  }

  /** Calls `f` once on abort (at once if already aborted); returns the function that unsubscribes. */
  onAbort(f: () => void): () => void {
    if (this.aborted) {
      f();
      return noop;
    }
    (this.listeners ??= []).push(f);
    return () => {
      const i = this.listeners?.indexOf(f) ?? -1;
      if (i >= 0) this.listeners!.splice(i, 1);
    };
  }
}

const noop = () => undefined;
