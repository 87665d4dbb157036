/**
 * The torch worker (native/dsr_worker) behind the TokenEngine interface, as a real python process over
 * its Unix socket, on the CPU: tiny-r1 in fp32 reproduces the PyTorch/transformers reference
 * (reference.json) token for token with every case in one batch, and the embedded engine's greedy
 * tokens; seeded sampling does not depend on the batch; penalties, cancellation, request errors,
 * a killed worker and a missing python/torch behave as documented.
 */
import { readFileSync } from "node:fs";
import { chmod, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openEmbeddedEngine } from "../../src/engine/runtime/embedded/index.js";
import { openTorchEngine, type TorchEngineInfo } from "../../src/engine/runtime/torch/index.js";
import type { SamplingParams, SubmitRequest, TokenEngine } from "../../src/engine/runtime/types.js";
import type { TextModel } from "../../src/engine/text/index.js";
import { ADDITION_QUESTION, ANSWER_SCHEMA, arithmeticProblems, buildTiny, collect, GREEDY, onlyToken, TINY_R1 } from "../engine/support.js";
import { validate } from "../engine/json-schema-reference.js";
import { tempDir } from "../support/tmp.js";
import { TORCH_PYTHON } from "./python.js";

interface RefCase { input_ids: number[]; last_logits: number[]; top5_ids: number[][]; greedy_64: number[] }
const ref = JSON.parse(readFileSync(join(TINY_R1, "reference.json"), "utf8")) as { tolerance: { max_abs_logit_diff: number }; cases: RefCase[] };

describe.skipIf(!TORCH_PYTHON)("torch worker engine (CPU, fp32)", () => {
  let engine: TokenEngine & { stats(): { running: number; kvCapacityTokens?: number; maxContext: number } };
  let text: TextModel;
  let info: TorchEngineInfo;
  const logs: string[] = [];

  beforeAll(async () => {
    ({ engine, text, info } = await openTorchEngine(TINY_R1, { python: TORCH_PYTHON, device: "cpu", maxBatch: 4, maxContext: 256, threads: 2, onLog: (l) => logs.push(l) }));
  }, 60_000);
  afterAll(async () => engine?.close());

  it("reports what it loaded", () => {
    expect(info).toMatchObject({ protocol: 2, vocab: 2048, maxBatch: 4, maxContext: 256, dtype: "float32", device: "cpu (cpu)" });
    const st = readFileSync(join(TINY_R1, "model.safetensors"));
    expect(info.weightBytes).toBe((st.length - 8 - Number(st.readBigUInt64LE(0))) * 2); // the bf16 file's tensors, as fp32
    expect(engine.stats()).toMatchObject({ running: 0, kvCapacityTokens: 4 * 256, maxContext: 256 });
  });

  it("reproduces the reference: greedy 64 tokens of every case in one batch, first-token logprobs", async () => {
    const runs = ref.cases.map(async (c) => {
      const sampling: SamplingParams = { ...GREEDY, logprobs: 5 };
      const chunks = [];
      for await (const ch of engine.submit({ promptIds: c.input_ids, sampling, maxTokens: 64, stopIds: [] })) chunks.push(ch);
      return chunks;
    });
    for (const [i, chunks] of (await Promise.all(runs)).entries()) {
      const c = ref.cases[i]!;
      expect(chunks.flatMap((ch) => ch.ids)).toEqual(c.greedy_64);
      expect(chunks.at(-1)!.finish).toBe("length");
      const first = chunks[0]!.logprobs![0]!;
      expect(first.top.map((t) => t.id)).toEqual(c.top5_ids[c.input_ids.length - 1]);
      // logprob differences are logit differences: compare with the reference logits
      for (const t of first.top) expect(Math.abs(t.logprob - first.top[0]!.logprob - (c.last_logits[t.id]! - c.last_logits[first.top[0]!.id]!))).toBeLessThan(ref.tolerance.max_abs_logit_diff);
    }
  }, 60_000);

  it("gives the embedded engine's greedy tokens, stopping at EOS", async () => {
    const prompts = arithmeticProblems(4, 5).map((p) => text.encode(text.applyChatTemplate([{ role: "user", content: p.question }])));
    const embedded = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 1, maxBatch: 4, maxContext: 256, worker: false });
    const want = await Promise.all(prompts.map((p) => collect(embedded.engine, p, 120, text.eosTokenIds)));
    await embedded.engine.close();
    const got = await Promise.all(prompts.map((p) => collect(engine, p, 120, text.eosTokenIds)));
    expect(got).toEqual(want);
    expect(got.some((g) => g.finish === "stop" && g.stopId === text.eosTokenIds[0])).toBe(true);
  }, 60_000);

  it("seeded sampling gives the same tokens alone and in a batch; another seed differs", async () => {
    const p = text.encode(text.applyChatTemplate([{ role: "user", content: "What is 12 + 34?" }]));
    const s = (seed: number): SamplingParams => ({ ...GREEDY, temperature: 1.2, topP: 0.95, topK: 40, minP: 0.02, seed });
    const alone = await collect(engine, p, 40, [], s(123));
    const [inBatch] = await Promise.all([collect(engine, p, 40, [], s(123)), collect(engine, p, 40, [], s(9)), collect(engine, p.slice(0, 10), 40, [], GREEDY)]);
    expect(inBatch.ids).toEqual(alone.ids);
    const other = await collect(engine, p, 40, [], s(124));
    expect(other.ids).not.toEqual(alone.ids);
    expect(alone.ids).not.toEqual((await collect(engine, p, 40, [], GREEDY)).ids);
  }, 60_000);

  it("each cut alone can leave only the top token: top-k 1, top-p ~0, min-p 1 sample greedily at any temperature", async () => {
    const p = text.encode(text.applyChatTemplate([{ role: "user", content: "What is 4321 - 1234?" }]));
    const greedy = (await collect(engine, p, 30, [])).ids;
    const hot = { ...GREEDY, temperature: 1.5, seed: 5 };
    for (const cut of [{ topK: 1 }, { topP: 1e-6 }, { minP: 1 }]) expect((await collect(engine, p, 30, [], { ...hot, ...cut })).ids, JSON.stringify(cut)).toEqual(greedy);
    expect((await collect(engine, p, 30, [], hot)).ids).not.toEqual(greedy);
  }, 60_000);

  it("logit_bias: +100 makes greedy pick the token, -100 keeps it off its first choice, as on the embedded engine", async () => {
    const prompt = ref.cases[0]!.input_ids;
    const free = await collect(engine, prompt, 1, []);
    const brace = text.encode("{")[0]!;
    const forced = await collect(engine, prompt, 2, [], { ...GREEDY, logitBias: [[brace, 100]] });
    expect(forced.ids).toEqual([brace, brace]);
    const avoided = await collect(engine, prompt, 1, [], { ...GREEDY, logitBias: [[free.ids[0]!, -100]] });
    expect(avoided.ids[0]).not.toBe(free.ids[0]);
    const embedded = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 1, maxBatch: 1, maxContext: 256, worker: false });
    try {
      expect((await collect(embedded.engine, prompt, 1, [], { ...GREEDY, logitBias: [[free.ids[0]!, -100]] })).ids).toEqual(avoided.ids);
    } finally {
      await embedded.engine.close();
    }
  });

  it("minTokens holds the stop ids back until that many tokens, as on the embedded engine", async () => {
    const prompt = text.encode(text.applyChatTemplate([{ role: "user", content: ADDITION_QUESTION }]));
    const free = await collect(engine, prompt, 200, text.eosTokenIds);
    expect(free.finish).toBe("stop");
    const n = free.ids.length;
    const held = await collect(engine, prompt, n + 3, text.eosTokenIds, { ...GREEDY, minTokens: n + 3 });
    expect([held.finish, held.ids.length]).toEqual(["length", n + 3]);
    expect(held.ids.slice(0, n)).toEqual(free.ids);
    const embedded = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 1, maxBatch: 1, maxContext: 256, worker: false });
    try {
      expect((await collect(embedded.engine, prompt, n + 3, text.eosTokenIds, { ...GREEDY, minTokens: n + 3 })).ids).toEqual(held.ids);
    } finally {
      await embedded.engine.close();
    }
  });

  it("a large presence penalty never repeats a token; frequency penalty changes greedy output", async () => {
    const p = text.encode(text.applyChatTemplate([{ role: "user", content: "What is 1111 + 2222?" }]));
    const r = await collect(engine, p, 60, [], { ...GREEDY, presencePenalty: 100 });
    expect(new Set(r.ids).size).toBe(r.ids.length);
    const plain = await collect(engine, p, 60, [], GREEDY);
    expect((await collect(engine, p, 60, [], { ...GREEDY, frequencyPenalty: 2 })).ids).not.toEqual(plain.ids);
  }, 60_000);

  it("cancels a stream at once, refuses bad requests synchronously, ends max_tokens 0 with length", async () => {
    const ac = new AbortController();
    let n = 0;
    let finish: string | undefined;
    for await (const c of engine.submit({ promptIds: ref.cases[0]!.input_ids, sampling: GREEDY, maxTokens: 200, stopIds: [], signal: ac.signal })) {
      n += c.ids.length;
      if (n === 2) ac.abort();
      finish = c.finish ?? finish;
    }
    expect(finish).toBe("abort");
    expect(n).toBeLessThan(10);
    await expect.poll(() => engine.stats().running).toBe(0);

    expect(() => engine.submit({ promptIds: new Array(300).fill(1), sampling: GREEDY, maxTokens: 5, stopIds: [] })).toThrow(expect.objectContaining({ code: "DSR_CONTEXT_OVERFLOW" }));
    expect(() => engine.submit({ promptIds: [1, 99999], sampling: GREEDY, maxTokens: 5, stopIds: [] })).toThrow(expect.objectContaining({ code: "DSR_BAD_TOKEN" }));
    expect(() => engine.submit({ promptIds: [1], sampling: GREEDY, maxTokens: 5, stopIds: [], constraint: { kind: "json_schema", schema: { type: "object", patternProperties: {} } } })).toThrow(expect.objectContaining({ code: "DSR_SCHEMA_UNSUPPORTED" }));
    expect(await collect(engine, [1, 2, 3], 0, [])).toEqual({ ids: [], finish: "length", stopId: undefined });
  }, 30_000);
});

describe.skipIf(!TORCH_PYTHON)("torch worker: response_format (the gateway checks the worker's draws)", () => {
  let engine: TokenEngine;
  let text: TextModel;
  const Q = ADDITION_QUESTION;
  const schema = ANSWER_SCHEMA;
  beforeAll(async () => {
    // two masks on the worker: states refuse more than two kinds of draw, so masks are evicted and sent again
    ({ engine, text } = await openTorchEngine(TINY_R1, { python: TORCH_PYTHON, device: "cpu", maxBatch: 4, maxContext: 1024, threads: 2, maskCache: 2 }));
  }, 60_000);
  afterAll(async () => engine?.close());

  const run = async (e: TokenEngine, constraint: SubmitRequest["constraint"], sampling = GREEDY, maxTokens = 600) => {
    const out: number[] = [];
    let finish: string | undefined;
    for await (const c of e.submit({ promptIds: text.encode(text.applyChatTemplate([{ role: "user", content: Q }])), sampling, maxTokens, stopIds: text.eosTokenIds, constraint })) {
      out.push(...c.ids);
      finish = c.finish ?? finish;
    }
    const end = out.indexOf(text.thinkEndId!);
    return { ids: out, finish, answer: end >= 0 ? text.decode(out.slice(end + 1)) : undefined };
  };
  const after = (kind: "json_object" | "json_schema") => (kind === "json_object" ? { kind, startAfterId: text.thinkEndId } : { kind, schema, startAfterId: text.thinkEndId });

  it("greedy: the embedded engine's tokens for json_schema and json_object; the answers validate and end with stop", async () => {
    const embedded = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 1, maxBatch: 2, maxContext: 1024, worker: false });
    const want = await Promise.all([run(embedded.engine, after("json_schema")), run(embedded.engine, after("json_object"))]);
    await embedded.engine.close();
    const got = await Promise.all([run(engine, after("json_schema")), run(engine, after("json_object"))]);
    expect(got).toEqual(want);
    expect(got.map((g) => g.finish)).toEqual(["stop", "stop"]);
    expect(validate(schema, JSON.parse(got[0]!.answer!)), got[0]!.answer).toBe(true);
    expect(JSON.parse(got[1]!.answer!)).toBeTypeOf("object");
    // unconstrained, greedy tiny-r1 answers in prose after </think>: every JSON token above was a redraw under a mask at first
    expect((await run(engine, undefined)).answer).not.toEqual(got[1]!.answer);
  }, 120_000);

  it("a constrained stream cancelled mid-answer ends with abort; the row beside it is unaffected and the worker goes on", async () => {
    const alone = await run(engine, after("json_object"));
    const ac = new AbortController();
    const prompt = text.encode(text.applyChatTemplate([{ role: "user", content: Q }]));
    const cancelled = (async () => {
      const ids: number[] = [];
      let finish: string | undefined;
      for await (const c of engine.submit({ promptIds: prompt, sampling: GREEDY, maxTokens: 600, stopIds: [], constraint: after("json_object"), signal: ac.signal })) {
        ids.push(...c.ids);
        if (ids.indexOf(text.thinkEndId!) >= 0 && ids.length === ids.indexOf(text.thinkEndId!) + 3) ac.abort(); // two tokens into the JSON
        finish = c.finish ?? finish;
      }
      return finish;
    })();
    const [finish, beside] = await Promise.all([cancelled, run(engine, after("json_object"))]);
    expect(finish).toBe("abort");
    expect(beside).toEqual(alone);
    expect(JSON.parse(text.decode((await run(engine, { kind: "json_object" })).ids))).toBeTypeOf("object");
  }, 60_000);

  it("a prompt that finishes beside a constrained row decoding: both checks of the step, the same tokens as alone", async () => {
    const fromStart = { kind: "json_schema" as const, schema }; // constrained from the first token: the prompt's draw is checked too
    const alone = await run(engine, fromStart, GREEDY, 120);
    expect(validate(schema, JSON.parse(text.decode(alone.ids))), text.decode(alone.ids)).toBe(true);
    const prompt = text.encode(text.applyChatTemplate([{ role: "user", content: Q }]));
    let started!: () => void;
    const third = new Promise<void>((r) => (started = r));
    const first = (async () => {
      const ids: number[] = [];
      for await (const c of engine.submit({ promptIds: prompt, sampling: GREEDY, maxTokens: 120, stopIds: text.eosTokenIds, constraint: fromStart })) {
        ids.push(...c.ids);
        if (ids.length === 3) started();
      }
      return ids;
    })();
    await third;
    const second = run(engine, fromStart, GREEDY, 120);
    expect(await first).toEqual(alone.ids);
    expect((await second).ids).toEqual(alone.ids);
  }, 60_000);

  it("a state that no token of the vocabulary continues fails its request with DSR_CONSTRAINT_DEAD_END; the row beside it finishes as alone", async () => {
    // a vocabulary whose only text token is `{`: json_object gets its `{` (a redraw under a one-token
    // mask), and then nothing can follow (no `"`, `}` or whitespace)
    const brace = text.encode("{");
    expect(brace).toHaveLength(1);
    const tokenBytes = onlyToken(text.tokenBytes()!.offsets.length, brace[0]!, Uint8Array.of(0x7b));
    const narrow = await openTorchEngine(TINY_R1, { python: TORCH_PYTHON, device: "cpu", maxBatch: 4, maxContext: 1024, threads: 2, tokenBytes });
    try {
      const alone = await run(engine, undefined, GREEDY, 40);
      const ids: number[] = [];
      const failed = (async () => {
        for await (const c of narrow.engine.submit({ promptIds: text.encode(text.applyChatTemplate([{ role: "user", content: Q }])), sampling: GREEDY, maxTokens: 40, stopIds: [], constraint: { kind: "json_object" } })) ids.push(...c.ids);
      })();
      const [outcome, beside] = await Promise.all([failed.then(() => undefined, (e: unknown) => e), run(narrow.engine, undefined, GREEDY, 40)]);
      expect(outcome).toMatchObject({ code: "DSR_CONSTRAINT_DEAD_END" });
      expect(ids).toEqual(brace);
      expect(beside).toEqual(alone);
      expect(await run(narrow.engine, undefined, GREEDY, 40)).toEqual(alone); // and the worker goes on
    } finally {
      await narrow.engine.close();
    }
  }, 60_000);

  it("seeded: answers validate, a seed repeats alone and beside other rows; a budget inside the value ends with length", async () => {
    const hot = (seed: number): SamplingParams => ({ ...GREEDY, temperature: 0.8, topP: 0.95, topK: 40, seed });
    const outs = await Promise.all([1, 2, 3].map((seed) => run(engine, after("json_schema"), hot(seed))));
    for (const o of outs) if (o.finish === "stop") expect(validate(schema, JSON.parse(o.answer!)), o.answer).toBe(true);
    expect(outs.some((o) => o.finish === "stop")).toBe(true);
    expect((await run(engine, after("json_schema"), hot(2))).ids).toEqual(outs[1]!.ids);
    const full = await run(engine, after("json_schema"));
    const end = full.ids.indexOf(text.thinkEndId!);
    const cut = await run(engine, after("json_schema"), GREEDY, end + 4);
    expect(cut).toMatchObject({ finish: "length", ids: full.ids.slice(0, end + 4) });
  }, 120_000);
});

describe.skipIf(!TORCH_PYTHON)("torch worker batched prefill", () => {
  it("prompts near the end of the context share a padded forward without writing past the cache; tokens as when alone", async () => {
    const { engine } = await openTorchEngine(TINY_R1, { python: TORCH_PYTHON, device: "cpu", maxBatch: 4, maxContext: 40, prefillChunk: 8 });
    try {
      // with 8-token chunks the 36-token prompt ends with 4 tokens beside the 30-token one's 28: its padding would reach position 60
      const prompts = [36, 30, 20, 5].map((n, k) => Array.from({ length: n }, (_, i) => (i * 37 + k * 101 + 7) % 2048));
      const together = await Promise.all(prompts.map((p) => collect(engine, p, 10, [])));
      for (const [k, p] of prompts.entries()) expect(together[k], `prompt ${k}`).toEqual(await collect(engine, p, 10, []));
      expect(together[0]!.ids).toHaveLength(4); // capped by the 40-token context
    } finally {
      await engine.close();
    }
  }, 60_000);
});

describe.skipIf(!TORCH_PYTHON)("torch worker failures", () => {
  it("a killed worker fails its open streams with the reason, is unavailable meanwhile, and comes back", async () => {
    const logs: string[] = [];
    const { engine, info } = await openTorchEngine(TINY_R1, { python: TORCH_PYTHON, device: "cpu", maxBatch: 2, maxContext: 256, restartBackoffMs: 300, onLog: (l) => logs.push(l) });
    try {
      const it = engine.submit({ promptIds: ref.cases[0]!.input_ids, sampling: GREEDY, maxTokens: 200, stopIds: [] })[Symbol.asyncIterator]();
      await it.next();
      process.kill(info.pid, "SIGKILL");
      await expect((async () => { for (;;) if ((await it.next()).done) return; })()).rejects.toMatchObject({ code: "DSR_ENGINE_FAILED", message: expect.stringMatching(/torch worker (exited \(signal SIGKILL\)|closed its connection)/) });
      expect(engine.ready()).toBe(false);
      expect(() => engine.submit({ promptIds: [1], sampling: GREEDY, maxTokens: 1, stopIds: [] })).toThrow(expect.objectContaining({ code: "DSR_ENGINE_UNAVAILABLE" }));
      await expect.poll(() => engine.ready(), { timeout: 30_000 }).toBe(true);
      expect(engine.restarts).toBe(1);
      expect(engine.info.pid).not.toBe(info.pid);
      expect(logs.join("\n")).toMatch(/restarting it in 0\.3 s[\s\S]*torch worker restarted/);
      expect((await collect(engine, ref.cases[1]!.input_ids, 64, [])).ids).toEqual(ref.cases[1]!.greedy_64);
    } finally {
      await engine.close();
    }
  }, 60_000);

  it("a missing python, a python without torch and an unsupported checkpoint are clear errors", async () => {
    await expect(openTorchEngine(TINY_R1, { python: "/nonexistent/python3" })).rejects.toMatchObject({ code: "DSR_NO_PYTHON", exitCode: 2 });
    const dir = await tempDir();
    const fake = join(dir, "python");
    await writeFile(fake, `#!/bin/sh\necho "ModuleNotFoundError: No module named 'torch'" >&2\nexit 1\n`);
    await chmod(fake, 0o755);
    await expect(openTorchEngine(TINY_R1, { python: fake })).rejects.toMatchObject({ code: "DSR_NO_TORCH", message: expect.stringContaining("has no torch module") });
    await expect(openTorchEngine(join(TINY_R1, "..", "tiny-deepseek-v3-fp8"), { python: TORCH_PYTHON })).rejects.toMatchObject({ code: "DSR_ARCH_UNSUPPORTED" });
  }, 30_000);
});
