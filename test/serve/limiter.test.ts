import { describe, expect, it } from "vitest";
import { Cancel } from "../../src/engine/serve/cancel.js";
import { HttpError } from "../../src/engine/serve/http-error.js";
import { Lease, Limiter } from "../../src/engine/serve/limiter.js";

const statusOf = (p: Promise<unknown>) => p.then(() => 0, (e: unknown) => (e instanceof HttpError ? e.status : -1));

describe("Limiter", () => {
  it("runs up to maxConcurrency at once; the next waits in FIFO order and gets a freed slot", async () => {
    const l = new Limiter({ maxConcurrency: 2, maxQueue: 10, queueTimeoutMs: 0 });
    const a = l.acquire();
    const b = l.acquire();
    expect(a).toBeInstanceOf(Lease);
    expect(b).toBeInstanceOf(Lease);
    const c = l.acquire();
    const d = l.acquire();
    expect(c).toBeInstanceOf(Promise);
    expect(l.waiting).toBe(2);
    const order: string[] = [];
    void (c as Promise<Lease>).then(() => order.push("c"));
    void (d as Promise<Lease>).then(() => order.push("d"));
    (a as Lease).release();
    (a as Lease).release(); // a second release frees nothing more
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(["c"]);
    expect(l.running).toBe(2);
    expect(l.waiting).toBe(1);
    (b as Lease).release();
    const dl = await d;
    expect(order).toEqual(["c", "d"]);
    (await c).release();
    dl.release();
    expect(l.running).toBe(0);
  });

  it("refuses with 429 and a Retry-After once the queue is full", () => {
    const l = new Limiter({ maxConcurrency: 1, maxQueue: 1, queueTimeoutMs: 0 });
    l.acquire();
    void l.acquire();
    let err: unknown;
    try {
      l.acquire();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(HttpError);
    expect((err as HttpError).status).toBe(429);
    expect(Number((err as HttpError).headers["retry-after"])).toBeGreaterThanOrEqual(1);
  });

  it("a waiter past its queue timeout gets 408 and leaves the queue", async () => {
    const l = new Limiter({ maxConcurrency: 1, maxQueue: 5, queueTimeoutMs: 30 });
    const held = l.acquire() as Lease;
    const w = l.acquire() as Promise<Lease>;
    expect(await statusOf(w)).toBe(408);
    expect(l.waiting).toBe(0);
    held.release();
    expect(l.running).toBe(0); // the slot was not handed to the waiter that left
  });

  it("a waiter whose client goes away gets 499 and leaves the queue; one cancelled before it queues never enters", async () => {
    const l = new Limiter({ maxConcurrency: 1, maxQueue: 5, queueTimeoutMs: 10_000 });
    const held = l.acquire() as Lease;
    const cancel = new Cancel();
    const w = l.acquire(cancel) as Promise<Lease>;
    expect(l.waiting).toBe(1);
    cancel.onClientClose();
    expect(await statusOf(w)).toBe(499);
    expect(l.waiting).toBe(0);

    const gone = new Cancel();
    gone.abort(new Error("gone"));
    expect(await statusOf(l.acquire(gone) as Promise<Lease>)).toBe(499);
    expect(l.waiting).toBe(0);
    held.release();
    expect(l.running).toBe(0);
  });

  it("a waiter that got its slot no longer listens to its cancellation or its timer", async () => {
    const l = new Limiter({ maxConcurrency: 1, maxQueue: 5, queueTimeoutMs: 40 });
    const held = l.acquire() as Lease;
    const cancel = new Cancel();
    const w = l.acquire(cancel) as Promise<Lease>;
    held.release();
    const lease = await w;
    cancel.abort(new Error("late"));
    await new Promise((r) => setTimeout(r, 60)); // past the queue timeout: nothing may fire
    expect(l.running).toBe(1);
    lease.release();
    expect(l.running).toBe(0);
  });
});

describe("Cancel", () => {
  it("tells each listener once, in order, and not those that unlistened", () => {
    const c = new Cancel();
    const told: string[] = [];
    const a = { onCancel: () => told.push("a") };
    const b = { onCancel: () => told.push("b") };
    const d = { onCancel: () => told.push("d") };
    c.listen(a);
    c.listen(b);
    c.listen(d);
    c.unlisten(a); // the first one: the next takes its place
    c.abort(new Error("x"));
    c.abort(new Error("again"));
    expect(told).toEqual(["b", "d"]);
    c.listen({ onCancel: () => told.push("late") }); // already aborted: told at once
    expect(told).toEqual(["b", "d", "late"]);
  });
});
