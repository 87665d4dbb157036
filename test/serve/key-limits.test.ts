/**
 * Per-key limits: the buckets of --key-rpm and --key-tpm on a fake clock (burst, refill, Retry-After)
 * and the in-flight cap of --key-max-parallel; then both through `dsr serve` with real clients, where one
 * key's excess is refused with 429 while another key goes on.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { duration, KeyLimits } from "../../src/engine/serve/key-limits.js";
import { runDsr } from "../support/cli.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { startServe } from "./helpers.js";

describe("KeyLimits", () => {
  it("--key-rpm: a minute's allowance at once, then one request per 60/rpm s; Retry-After says when; keys apart", () => {
    let t = 0;
    const l = new KeyLimits({ rpm: 3, maxParallel: 0 }, () => t);
    for (let i = 0; i < 3; i++) l.admit("a")();
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429, headers: expect.objectContaining({ "retry-after": "20" }) }));
    l.admit("b")(); // another key has its own bucket
    t = 19_000;
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429, headers: expect.objectContaining({ "retry-after": "1" }) }));
    t = 20_001;
    l.admit("a")();
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429 }));
  });

  it("--key-tpm: a request ends by taking its tokens; below zero the key waits until the minute refills it, Retry-After saying how long", () => {
    let t = 0;
    const l = new KeyLimits({ rpm: 0, tpm: 600, maxParallel: 0 }, () => t); // 10 tokens per second
    l.admit("a")(500);
    const second = l.admit("a"); // 100 left: admitted
    l.admit("b")(600); // another key's bucket
    second(250); // 100 - 250 = -150
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429, headers: expect.objectContaining({ "retry-after": "16" }), message: expect.stringContaining("600 tokens per minute") }));
    t = 15_000; // -150 + 150 = 0: still not above
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429 }));
    t = 15_200;
    l.admit("a")();
  });

  it("OpenAI's x-ratelimit-* headers: each limit, what is left and when it is whole again, on admission and on refusal", () => {
    let t = 0;
    const l = new KeyLimits({ rpm: 3, tpm: 600, maxParallel: 0 }, () => t);
    expect(l.admit("a").headers).toEqual({
      "x-ratelimit-limit-requests": "3",
      "x-ratelimit-remaining-requests": "2",
      "x-ratelimit-reset-requests": "20s",
      "x-ratelimit-limit-tokens": "600",
      "x-ratelimit-remaining-tokens": "600",
      "x-ratelimit-reset-tokens": "0ms",
    });
    l.admit("a")(450); // its tokens are taken when it ends
    t = 1000; // 1/20 of a request and 10 tokens back
    expect(l.admit("a").headers).toMatchObject({ "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "59s", "x-ratelimit-remaining-tokens": "160", "x-ratelimit-reset-tokens": "44s" });
    try {
      l.admit("a");
      expect.unreachable();
    } catch (e) {
      expect((e as { headers: Record<string, string> }).headers).toMatchObject({ "retry-after": "19", "x-ratelimit-remaining-requests": "0" });
    }
    expect(new KeyLimits({ rpm: 0, maxParallel: 2 }).admit("a").headers).toBeUndefined(); // OpenAI has no header for requests in flight
    expect([duration(20), duration(999.2), duration(1500), duration(360_000), duration(61_500)]).toEqual(["20ms", "1000ms", "1.5s", "6m0s", "1m1.5s"]);
  });

  it("--key-max-parallel: requests in flight per key; a finished one frees its place (once, however often it is told)", () => {
    const l = new KeyLimits({ rpm: 0, maxParallel: 2 });
    const first = l.admit("a");
    l.admit("a");
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429, message: expect.stringContaining("--key-max-parallel 2") }));
    l.admit("b");
    first();
    first();
    l.admit("a");
    expect(() => l.admit("a")).toThrow(expect.objectContaining({ status: 429 }));
  });
});

describe("dsr serve --key-rpm / --key-tpm / --key-max-parallel, in one process and across --workers", () => {
  let up: Standin;
  let keys: string;
  beforeAll(async () => {
    up = await startStandin({ tokens: 40, paceMs: 25, model: "r1" }); // a stream lasts ~1 s
    keys = join(await tempDir(), "keys.txt");
    await writeFile(keys, "sk-a team-a\nsk-b team-b\n");
  });
  afterAll(async () => up?.close());
  /** `ownConnection`: on a connection of its own (the cluster hands connections to the workers in turn). */
  const post = (url: string, key: string, stream = false, ownConnection = false) =>
    fetch(`${url}/v1/completions`, { method: "POST", headers: { authorization: `Bearer ${key}`, ...(ownConnection ? { connection: "close" } : {}) }, body: JSON.stringify({ model: "r1", prompt: "x", max_tokens: stream ? 40 : 1, stream }) });
  /** `dsr serve` over the stand-in with the two keys and `limit`, stopped after `body`. */
  const serving = async (limit: string[], body: (url: string) => Promise<void>) => {
    const g = await startServe(["--upstream", up.url, "--api-key-file", keys, ...limit]);
    try {
      await body(g.url);
    } finally {
      await g.stop();
    }
  };

  it("a key at its parallel limit gets 429 with Retry-After while its stream runs; another key is served; the limit frees when the stream ends", async () => {
    await serving(["--key-max-parallel", "1"], async (url) => {
      const running = await post(url, "sk-a", true);
      expect(running.status).toBe(200);
      const refused = await post(url, "sk-a");
      expect(refused.status).toBe(429);
      expect(refused.headers.get("retry-after")).toBe("1");
      expect((await refused.json()).error).toMatchObject({ code: "rate_limit_exceeded", message: expect.stringContaining("API key team-a") });
      expect((await post(url, "sk-b")).status).toBe(200);
      await running.text(); // the stream ends
      expect((await post(url, "sk-a")).status).toBe(200);
    });
  }, 30_000);

  it("--key-tpm: once a key's requests used the minute's tokens (prompt + completion), the next is refused; the other key is not", async () => {
    await serving(["--key-tpm", "20"], async (url) => {
      // the stand-in counts 7 prompt tokens, and this asks for 1 completion token: 8 a request
      expect((await post(url, "sk-a")).status).toBe(200);
      expect((await post(url, "sk-a")).status).toBe(200);
      expect((await post(url, "sk-a")).status).toBe(200); // 4 left before it: admitted, then -4
      const over = await post(url, "sk-a");
      expect(over.status).toBe(429);
      expect((await over.json()).error.message).toContain("20 tokens per minute");
      expect((await post(url, "sk-b")).status).toBe(200);
    });
  }, 30_000);

  it("--key-rpm 2: the third request in a minute is refused with the wait; the other key is not; limits need keys", async () => {
    await serving(["--key-rpm", "2"], async (url) => {
      const first = await post(url, "sk-a");
      expect(first.status).toBe(200);
      expect([first.headers.get("x-ratelimit-limit-requests"), first.headers.get("x-ratelimit-remaining-requests"), first.headers.get("x-ratelimit-reset-requests")]).toEqual(["2", "1", "30s"]);
      expect((await post(url, "sk-a")).headers.get("x-ratelimit-remaining-requests")).toBe("0");
      const third = await post(url, "sk-a");
      expect(third.status).toBe(429);
      expect(third.headers.get("x-ratelimit-remaining-requests")).toBe("0");
      expect(Number(third.headers.get("retry-after"))).toBeGreaterThanOrEqual(29);
      expect((await post(url, "sk-b")).status).toBe(200);
    });
    const none = await runDsr(["serve", "--upstream", up.url, "--key-rpm", "5"]);
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toContain("--key-rpm limits API keys, and none is configured");
  }, 30_000);

  it("one count per key across the workers: --key-max-parallel 1 admits one of four streams, --key-rpm 3 three of six requests", async () => {
    const g = await startServe(["--upstream", up.url, "--api-key-file", keys, "--workers", "2", "--key-max-parallel", "1", "--key-rpm", "3"]);
    try {
      const streams = await Promise.all([0, 1, 2, 3].map(() => post(g.url, "sk-a", true, true)));
      expect(streams.map((r) => r.status).sort()).toEqual([200, 429, 429, 429]);
      await Promise.all(streams.map((r) => r.text())); // the admitted stream ends: its place is free (below, after a moment)
      const more: number[] = [];
      const left: (string | null)[] = [];
      for (let i = 0; i < 5; i++) {
        // a worker gives its slot back as the answer ends, over its own IPC pipe; the next request comes
        // in on another worker and pipe, and a primary descheduled under a loaded CI could read that
        // one first: a moment between requests keeps the test about counts, not pipe order
        await new Promise((r) => setTimeout(r, 25));
        const r = await post(g.url, "sk-a", false, true);
        more.push(r.status);
        left.push(r.headers.get("x-ratelimit-remaining-requests"));
      }
      expect(more).toEqual([200, 200, 429, 429, 429]); // the first stream took one of the minute's 3
      expect(left).toEqual(["1", "0", "0", "0", "0"]); // the primary's count, whichever worker answered
      expect((await post(g.url, "sk-b", false, true)).status).toBe(200); // another key's count
    } finally {
      expect(await g.stop()).toBe(0);
    }
  }, 60_000);
});
