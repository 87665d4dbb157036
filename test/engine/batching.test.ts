/**
 * Continuous batching and the TokenEngine contract on tiny-r1: a greedy request gives the same tokens
 * alone and mixed into a batch of 16 requests of different lengths joining at different times;
 * seeds reproduce; stop ids, max tokens, logprobs, context overflow, cancellation and KV stats.
 */
import { beforeAll, afterAll, describe, expect, it } from "vitest";
import { DsrError } from "../../src/engine/errors.js";
import { openEmbeddedEngine } from "../../src/engine/runtime/embedded/index.js";
import type { SamplingParams } from "../../src/engine/runtime/types.js";
import type { TextModel } from "../../src/engine/text/index.js";
import { arithmeticProblems, buildTiny, collect, GREEDY } from "./support.js";

let engine: Awaited<ReturnType<typeof openEmbeddedEngine>>["engine"];
let text: TextModel;
const prompt = (q: string) => text.encode(text.applyChatTemplate([{ role: "user", content: q }]));

beforeAll(async () => {
  const dir = await buildTiny("fp32");
  ({ engine, text } = await openEmbeddedEngine(dir, { threads: 2, maxBatch: 16, maxContext: 256, prefillChunk: 8 }));
});
afterAll(() => engine.close());

describe("continuous batching", () => {
  it("the same greedy request gives the same tokens alone and inside a batch of 16", async () => {
    const target = prompt(arithmeticProblems(1, 7)[0]!.question);
    const alone = await collect(engine, target, 120, text.eosTokenIds);
    expect(alone.finish).toBe("stop");

    // 15 others with different prompt lengths and budgets, some joining later, plus the target mid-way.
    const others = arithmeticProblems(15, 8).map((p, i) => prompt(i % 3 === 0 ? `${p.question} ${"Think carefully. ".repeat(i)}` : p.question));
    const runs: Promise<unknown>[] = others.slice(0, 8).map((ids, i) => collect(engine, ids, 40 + i * 10, text.eosTokenIds));
    await new Promise((r) => setTimeout(r, 50));
    const mixed = collect(engine, target, 120, text.eosTokenIds);
    runs.push(...others.slice(8).map((ids, i) => collect(engine, ids, 30 + i * 7, text.eosTokenIds)));
    const [got] = await Promise.all([mixed, ...runs]);
    expect((got as typeof alone).ids).toEqual(alone.ids);
    expect(engine.stats().running).toBe(0);
  });

  it("chunked prefill: a long prompt does not stall a running stream", async () => {
    const events: string[] = [];
    const running = (async () => {
      for await (const c of engine.submit({ promptIds: prompt("Go on."), sampling: GREEDY, maxTokens: 120, stopIds: [] })) if (c.ids.length) events.push("d");
    })();
    while (events.length < 3) await new Promise((r) => setTimeout(r, 1));
    const long = (async () => {
      let first = true;
      for await (const c of engine.submit({ promptIds: new Array(200).fill(0).map((_, i) => 100 + (i % 50)), sampling: GREEDY, maxTokens: 2, stopIds: [] })) {
        if (first && c.ids.length) (events.push("L"), (first = false));
      }
    })();
    await Promise.all([running, long]);
    // 200 prompt tokens in chunks of 8 = 25 prefill steps, each followed by a decode step of the runner.
    const before = events.indexOf("L") - 3;
    expect(before).toBeGreaterThanOrEqual(20);
  });

  it("same seed → same tokens; different seed → (almost surely) different tokens", async () => {
    const ids = prompt("Write a story.");
    const s = (seed: number): SamplingParams => ({ ...GREEDY, temperature: 1.0, topP: 0.95, topK: 50, minP: 0.01, seed });
    const [a, b, c] = await Promise.all([collect(engine, ids, 40, [], s(1)), collect(engine, ids, 40, [], s(1)), collect(engine, ids, 40, [], s(2))]);
    expect(a.ids).toEqual(b.ids);
    expect(a.ids).not.toEqual(c.ids);
  });

  it("top-k 1 sampling equals greedy; stop ids end the stream without emitting the stop token", async () => {
    const ids = prompt(arithmeticProblems(1, 11)[0]!.question);
    const greedy = await collect(engine, ids, 60, []);
    const topk1 = await collect(engine, ids, 60, [], { ...GREEDY, temperature: 0.8, topK: 1, seed: 5 });
    expect(topk1.ids).toEqual(greedy.ids);
    const stopAt = greedy.ids[10]!;
    const firstIndex = greedy.ids.indexOf(stopAt);
    const stopped = await collect(engine, ids, 60, [stopAt]);
    expect(stopped.finish).toBe("stop");
    expect(stopped.stopId).toBe(stopAt);
    expect(stopped.ids).toEqual(greedy.ids.slice(0, firstIndex));
  });

  it("max tokens finishes with 'length' after exactly that many tokens", async () => {
    const r = await collect(engine, prompt("Count."), 7, []);
    expect(r.ids).toHaveLength(7);
    expect(r.finish).toBe("length");
  });

  it("logprobs: the chosen token's logprob and top-k alternatives are consistent", async () => {
    const chunks = [];
    for await (const c of engine.submit({ promptIds: prompt("Hello"), sampling: { ...GREEDY, logprobs: 5 }, maxTokens: 5, stopIds: [] })) chunks.push(c);
    const lps = chunks.flatMap((c) => c.logprobs ?? []);
    expect(lps).toHaveLength(5);
    for (const lp of lps) {
      expect(lp.top).toHaveLength(5);
      expect(lp.top[0]!.id).toBe(lp.id); // greedy picks the most likely
      expect(lp.logprob).toBeCloseTo(lp.top[0]!.logprob, 5);
      for (let i = 1; i < 5; i++) expect(lp.top[i]!.logprob).toBeLessThanOrEqual(lp.top[i - 1]!.logprob);
      expect(lp.top.reduce((a, t) => a + Math.exp(t.logprob), 0)).toBeLessThanOrEqual(1 + 1e-6);
    }
  });

  it("a prompt longer than the context is a clear DsrError, not a crash", () => {
    let err: unknown;
    try {
      engine.submit({ promptIds: new Array(300).fill(5), sampling: GREEDY, maxTokens: 10, stopIds: [] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DsrError);
    expect((err as DsrError).code).toBe("DSR_CONTEXT_OVERFLOW");
    expect((err as DsrError).message).toMatch(/300 tokens.*256/);
  });

  it("generation stops at the context limit with 'length'", async () => {
    const r = await collect(engine, new Array(250).fill(5), 100, []);
    expect(r.ids).toHaveLength(6);
    expect(r.finish).toBe("length");
  });

  it("cancellation frees the slot at once and others keep running", async () => {
    const controller = new AbortController();
    const ids = prompt("Tell me everything.");
    const keep = collect(engine, ids, 60, []);
    const seen: number[] = [];
    let finish: string | undefined;
    for await (const c of engine.submit({ promptIds: ids, sampling: GREEDY, maxTokens: 200, stopIds: [], signal: controller.signal })) {
      seen.push(...c.ids);
      if (seen.length === 3) {
        controller.abort();
      }
      finish = c.finish ?? finish;
    }
    expect(finish).toBe("abort");
    expect(seen.length).toBeLessThanOrEqual(4);
    expect(engine.stats().running).toBeLessThanOrEqual(1);
    const kept = await keep;
    expect(kept.ids).toHaveLength(60);
    // A consumer that stops iterating also cancels.
    for await (const c of engine.submit({ promptIds: ids, sampling: GREEDY, maxTokens: 200, stopIds: [] })) if (c.ids.length) break;
    await new Promise((r) => setTimeout(r, 50));
    expect(engine.stats().running).toBe(0);
  });

  it("stats report KV budget and use", async () => {
    const st = engine.stats();
    expect(st.kvCapacityTokens).toBe(16 * 256);
    expect(st.maxContext).toBe(256);
    expect(st.kvBytesPerToken).toBe(6 * 2 * 2 * 64 * 4);
    const ids = prompt("Hi");
    let mid: ReturnType<typeof engine.stats> | undefined;
    for await (const c of engine.submit({ promptIds: ids, sampling: GREEDY, maxTokens: 5, stopIds: [] })) {
      if (!mid && c.ids.length) mid = engine.stats();
    }
    expect(mid!.running).toBe(1);
    expect(mid!.kvUsedTokens).toBe(ids.length); // the prompt is cached; the first token is not fed yet
    expect(engine.stats().kvUsedTokens).toBe(0);
  });
});
