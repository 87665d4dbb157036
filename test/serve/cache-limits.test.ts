/**
 * Response cache (in-memory LRU+TTL, and Redis shared by two gateways with a real redis-server),
 * overload (429 + Retry-After), request-log rotation, and the router's balancing rules.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readdirSync, readFileSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { MemoryCache, cacheKey } from "../../src/engine/serve/cache.js";
import { RequestLog } from "../../src/engine/serve/request-log.js";
import { Router } from "../../src/engine/serve/router.js";
import { workerExecArgv } from "../../src/commands/serve-workers.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { startRedis, startServe } from "./helpers.js";

describe("response cache", () => {
  it("keys only deterministic requests, ignoring key order and `user`", () => {
    expect(cacheKey("chat", "m", { messages: [], temperature: 0.7 })).toBeUndefined();
    const a = cacheKey("chat", "m", { temperature: 0, messages: [{ role: "user", content: "x" }], user: "u1" });
    const b = cacheKey("chat", "m", { messages: [{ content: "x", role: "user" }], temperature: 0, user: "u2" });
    expect(a).toBeDefined();
    expect(a).toBe(b);
    expect(cacheKey("chat", "m", { seed: 3, messages: [] })).toBeDefined();
    expect(cacheKey("chat", "m", { seed: 3, n: 2, messages: [] })).toBeUndefined();
    expect(cacheKey("completions", "m", { temperature: 0, prompt: "x" })).not.toBe(cacheKey("completions", "m", { temperature: 0, prompt: "x", stream: true }));
  });

  it("memory cache: LRU eviction and TTL expiry", async () => {
    let now = 0;
    const c = new MemoryCache(2, 1000, () => now);
    await c.set("a", { contentType: "x", body: "1" });
    await c.set("b", { contentType: "x", body: "2" });
    await c.get("a"); // a is now the most recent
    await c.set("c", { contentType: "x", body: "3" });
    expect(await c.get("b")).toBeUndefined();
    expect((await c.get("a"))?.body).toBe("1");
    now = 1500;
    expect(await c.get("a")).toBeUndefined();
  });

  describe("Redis shared by two gateways", () => {
    let redis: Awaited<ReturnType<typeof startRedis>>;
    let up: Standin;
    beforeAll(async () => {
      redis = await startRedis();
      up = await startStandin({ tokens: 6, paceMs: 1, model: "m" });
    });
    afterAll(async () => {
      await up?.close();
      await redis?.stop();
    });

    it("an answer computed through gateway A is served by gateway B from Redis, stream and non-stream", async () => {
      const a = await startServe(["--upstream", up.url, "--cache", redis.url]);
      const b = await startServe(["--upstream", up.url, "--cache", redis.url]);
      try {
        const body = JSON.stringify({ model: "m", prompt: "same question", temperature: 0, max_tokens: 4 });
        const post = (g: string, s = body) => fetch(`${g}/v1/completions`, { method: "POST", body: s });
        const first = await post(a.url);
        expect(first.headers.get("x-dsr-cache")).toBeNull();
        const firstText = await first.text();
        const n = up.requests.length;
        const second = await post(b.url);
        expect(second.headers.get("x-dsr-cache")).toBe("hit");
        expect(await second.text()).toBe(firstText);
        expect(up.requests.length).toBe(n); // the upstream did not see it again
        const sbody = JSON.stringify({ model: "m", prompt: "same question", temperature: 0, max_tokens: 4, stream: true });
        const s1 = await (await post(b.url, sbody)).text();
        const s2 = await post(a.url, sbody);
        expect(s2.headers.get("x-dsr-cache")).toBe("hit");
        expect(s2.headers.get("content-type")).toMatch(/text\/event-stream/);
        expect(await s2.text()).toBe(s1);
        // sampling requests are never cached
        const hot = JSON.stringify({ model: "m", prompt: "same question", temperature: 0.8, max_tokens: 4 });
        await post(a.url, hot);
        expect((await post(b.url, hot)).headers.get("x-dsr-cache")).toBeNull();
        const m = await (await fetch(`${a.url}/metrics`)).text();
        expect(m).toMatch(/dsr:response_cache_lookups_total\{result="hit",model_name="m"\} 1/);
      } finally {
        await a.stop();
        await b.stop();
      }
    });
  });
});

describe("overload", () => {
  it("answers 429 with Retry-After once --max-concurrency + --max-queue are taken, and serves the queued ones", async () => {
    const up = await startStandin({ tokens: 40, paceMs: 50, model: "m" }); // 2 s per request
    const g = await startServe(["--upstream", up.url, "--max-concurrency", "2", "--max-queue", "2"]);
    try {
      const body = JSON.stringify({ model: "m", prompt: "x" });
      const first = Array.from({ length: 4 }, () => fetch(`${g.url}/v1/completions`, { method: "POST", body }));
      await expect.poll(() => up.requests.length, { timeout: 1500 }).toBe(2); // 2 running, 2 queued
      await new Promise((r) => setTimeout(r, 100));
      const over = await fetch(`${g.url}/v1/completions`, { method: "POST", body });
      expect(over.status).toBe(429);
      expect(Number(over.headers.get("retry-after"))).toBeGreaterThanOrEqual(1);
      expect((await over.json()).error).toMatchObject({ type: "rate_limit_error", code: "rate_limit_exceeded" });
      const statuses = await Promise.all(first.map(async (p) => (await p).status));
      expect(statuses).toEqual([200, 200, 200, 200]);
    } finally {
      await g.stop();
      await up.close();
    }
  });
});

describe("request log rotation", () => {
  it("rotates by size, keeping N files, every line whole JSON", async () => {
    const dir = await tempDir();
    const path = join(dir, "r.log");
    const log = await RequestLog.open({ path, maxBytes: 2000, keep: 2, flushMs: 1 });
    for (let i = 0; i < 100; i++) log.write({ ts: "t", id: `req-${i}`, method: "POST", path: "/v1/completions", status: 200, latency_ms: i });
    await log.close();
    const files = (await readdir(dir)).sort();
    expect(files).toEqual(["r.log", "r.log.1", "r.log.2"]);
    const ids: number[] = [];
    for (const f of ["r.log.2", "r.log.1", "r.log"]) {
      const text = await readFile(join(dir, f), "utf8");
      expect(Buffer.byteLength(text)).toBeLessThanOrEqual(2000);
      for (const l of text.trim().split("\n")) ids.push(Number(JSON.parse(l).id.slice(4)));
    }
    // the newest lines survive, in order, and the oldest were dropped with the oldest file
    expect(ids.at(-1)).toBe(99);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(ids[0]).toBeGreaterThan(0);
  });
});

describe("router", () => {
  const inst = (name: string, outstanding: number, healthy = true) => ({ name, outstanding, healthy });

  it("least outstanding among healthy instances; none when all are down", () => {
    const r = new Router([inst("a", 3), inst("b", 1), inst("c", 0, false)], { affinity: false });
    expect(r.pick()!.name).toBe("b");
    expect(r.pick(new Set([r.instances[1]]))!.name).toBe("a");
    expect(new Router([inst("a", 0, false)], { affinity: false }).pick()).toBeUndefined();
  });

  it("power of two choices with many instances never picks the most loaded", () => {
    const xs = Array.from({ length: 8 }, (_, i) => inst(`i${i}`, i === 7 ? 100 : i));
    const r = new Router(xs, { affinity: false });
    for (let k = 0; k < 200; k++) expect(r.pick()!.name).not.toBe("i7");
  });

  it("affinity keeps a session on its instance unless it is clearly busier", () => {
    const xs = [inst("a", 0), inst("b", 0)];
    const r = new Router(xs, { affinity: true, balanceAbs: 2 });
    const first = r.pick(undefined, "s1")!;
    first.outstanding += 2;
    expect(r.pick(undefined, "s1")).toBe(first);
    first.outstanding += 1;
    expect(r.pick(undefined, "s1")).not.toBe(first);
  });
});

/** Processes whose parent is `pid` (Linux /proc). */
function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, "utf8");
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) out.push(Number(d));
    } catch {
      // the process ended while we looked
    }
  }
  return out;
}

describe("workerExecArgv", () => {
  it("adds single-threaded GC and a 32 MB semi-space, unless the user set a semi-space", () => {
    expect(workerExecArgv(["--enable-source-maps"], {})).toEqual(["--enable-source-maps", "--single-threaded-gc", "--max-semi-space-size=32", "--min-semi-space-size=32"]);
    expect(workerExecArgv(["--max-semi-space-size=8"], {})).toEqual(["--max-semi-space-size=8", "--single-threaded-gc"]);
    expect(workerExecArgv([], { NODE_OPTIONS: "--max-semi-space-size=64" })).toEqual(["--single-threaded-gc"]);
  });

  it("leaves GC threading to a flag the user gave", () => {
    expect(workerExecArgv(["--no-single-threaded-gc"], {})).toEqual(["--no-single-threaded-gc", "--max-semi-space-size=32", "--min-semi-space-size=32"]);
    expect(workerExecArgv([], { NODE_OPTIONS: "--no-parallel-scavenge" })).toEqual(["--max-semi-space-size=32", "--min-semi-space-size=32"]);
  });
});

describe("--workers (gateway processes sharing the port)", () => {
  it("serves from 2 worker processes, /metrics sums over all of them, SIGTERM stops every process with exit 0", async () => {
    const up = await startStandin({ tokens: 3, paceMs: 1, model: "m" });
    const g = await startServe(["--upstream", up.url, "--workers", "2"], { timeoutMs: 45_000 });
    try {
      const N = 40;
      const answers = await Promise.all(
        Array.from({ length: N }, () => fetch(`${g.url}/v1/completions`, { method: "POST", headers: { connection: "close" }, body: JSON.stringify({ model: "m", prompt: "x" }) }).then((r) => r.json())),
      );
      for (const a of answers) expect(a.choices[0].text).toBe(" t0 t1 t2");
      // any worker answers /metrics with the cluster-wide sum
      for (let k = 0; k < 3; k++) {
        const m = await (await fetch(`${g.url}/metrics`, { headers: { connection: "close" } })).text();
        expect(m).toMatch(new RegExp(`dsr:request_success_total\\{finished_reason="length",model_name="m"\\} ${N}\\b`));
      }
      expect(g.log()).toMatch(/\[w0\] serving m at/);
      expect(g.log()).toMatch(/\[w1\] serving m at/);
      // the workers run with the V8 flags the primary gives them (workerExecArgv)
      const workers = childPids(g.proc.pid!).map((pid) => readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0"));
      expect(workers.length).toBe(2);
      for (const argv of workers) expect(argv).toEqual(expect.arrayContaining(["--single-threaded-gc", "--max-semi-space-size=32", "--min-semi-space-size=32"]));
    } finally {
      expect(await g.stop()).toBe(0);
      await up.close();
    }
    expect(g.log()).toMatch(/\[w0\] stopped cleanly/);
    expect(g.log()).toMatch(/\[w1\] stopped cleanly/);
  }, 60_000);
});
