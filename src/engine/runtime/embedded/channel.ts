/** A single-consumer async queue: the scheduler pushes chunks, the caller of submit() iterates. */
export class Channel<T> implements AsyncIterable<T> {
  private items: T[] = [];
  private done = false;
  private error: unknown;
  private waiter?: () => void;

  constructor(private readonly onReturn: () => void) {}

  push(v: T): void {
    this.items.push(v);
    this.wake();
  }
  end(): void {
    this.done = true;
    this.wake();
  }
  fail(e: unknown): void {
    this.error = e;
    this.done = true;
    this.wake();
  }
  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return {
      next: async () => {
        for (;;) {
          if (this.items.length) return { value: this.items.shift()!, done: false };
          if (this.error !== undefined) {
            const e = this.error;
            this.error = undefined;
            throw e;
          }
          if (this.done) return { value: undefined, done: true };
          await new Promise<void>((r) => (this.waiter = r));
        }
      },
      // The consumer stopped early (break / exception): the request is cancelled.
      return: async () => {
        if (!this.done) this.onReturn();
        this.done = true;
        return { value: undefined, done: true };
      },
    };
  }
}
