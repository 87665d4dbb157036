/**
 * The json_object constraint (the schema `{"type": "object"}` on json-constraint.ts's machine): the
 * byte-level JSON prefix automaton against an independent reference (a recursive-descent viability
 * check written here, with the automaton's key rules: no key twice in an object, no `\u` or `\/` in
 * keys) and JSON.parse, on generated JSON split at random
 * token boundaries and on random mutations; the vocabulary masks (cached by state key) against a
 * brute-force check; the sampler's lazy check (greedy = best allowed token, sampling = the allowed
 * distribution); and the scheduler on tiny-r1 (reasoning stays free, the answer parses, "stop" on the
 * closing brace, "length" when the budget cuts).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { JsonConstraint, JsonObjectMatcher, JsonVocabulary, MAX_WHITESPACE_RUN } from "../../src/engine/runtime/embedded/json-constraint.js";
import { Sampler, seededRandom, type TokenFilter } from "../../src/engine/runtime/embedded/sampler.js";
import { openEmbeddedEngine } from "../../src/engine/runtime/embedded/index.js";
import { tokenByteTable, type TokenByteTable } from "../../src/engine/text/token-bytes.js";
import type { TextModel } from "../../src/engine/text/index.js";
import { buildTiny, collect, GREEDY, mutateOnce, onlyToken, TINY_R1 } from "./support.js";

const enc = (s: string) => Buffer.from(s, "utf8");

// ---------- reference: is a byte string a prefix of some JSON object text (with the whitespace cap)? ----------

class Incomplete extends Error {}
class Bad extends Error {}

/**
 * "ok": a complete object and nothing after; "incomplete": a proper viable prefix; "bad": neither.
 * Keys are spelled one way (no `\u`, `\/`) and unique per object, as the automaton requires.
 */
function reference(b: Uint8Array): "ok" | "incomplete" | "bad" {
  let i = 0;
  const peek = () => {
    if (i >= b.length) throw new Incomplete();
    return b[i]!;
  };
  const expectByte = (c: number) => {
    if (peek() !== c) throw new Bad();
    i++;
  };
  const ws = () => {
    let n = 0;
    while (i < b.length && [0x20, 0x0a, 0x0d, 0x09].includes(b[i]!)) i++, n++;
    if (n > MAX_WHITESPACE_RUN) throw new Bad();
  };
  const digits = () => {
    const s = i;
    while (i < b.length && b[i]! >= 0x30 && b[i]! <= 0x39) i++;
    if (i === b.length) throw new Incomplete();
    if (i === s) throw new Bad();
  };
  const string = (key = false): string => {
    const start = i + 1;
    expectByte(0x22);
    const body: number[] = [];
    for (;;) {
      const c = peek();
      i++;
      if (c === 0x22) break;
      if (c < 0x20) throw new Bad();
      body.push(c); // escapes too: a backslash inside a multi-byte character is invalid UTF-8
      try {
        new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(body), { stream: true });
      } catch {
        throw new Bad();
      }
      if (c === 0x5c) {
        const e = peek();
        i++;
        if (key && (e === 0x75 || e === 0x2f)) throw new Bad();
        if (e === 0x75) {
          for (let k = 0; k < 4; k++) {
            if (!/[0-9a-fA-F]/.test(String.fromCharCode(peek()))) throw new Bad();
            i++;
          }
        } else if (!'"\\/bfnrt'.includes(String.fromCharCode(e))) throw new Bad();
      }
    }
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(Uint8Array.from(body));
    } catch {
      throw new Bad();
    }
    return Buffer.from(b.subarray(start, i - 1)).toString("latin1");
  };
  const value = (): void => {
    const c = peek();
    if (c === 0x7b) return object();
    if (c === 0x5b) {
      i++;
      ws();
      if (peek() === 0x5d) return void i++;
      for (;;) {
        value();
        ws();
        const d = peek();
        i++;
        if (d === 0x5d) return;
        if (d !== 0x2c) throw new Bad();
        ws();
      }
    }
    if (c === 0x22) return void string();
    for (const w of ["true", "false", "null"]) {
      if (c === w.charCodeAt(0)) {
        for (const ch of w) expectByte(ch.charCodeAt(0));
        return;
      }
    }
    if (c === 0x2d) i++;
    if (peek() === 0x30) i++;
    else digits();
    if (peek() === 0x2e) (i++, digits());
    if (peek() === 0x65 || peek() === 0x45) {
      i++;
      if (peek() === 0x2b || peek() === 0x2d) i++;
      digits();
    }
  };
  const object = () => {
    expectByte(0x7b);
    ws();
    if (peek() === 0x7d) return void i++;
    const keys = new Set<string>();
    for (;;) {
      const k = string(true);
      if (keys.has(k)) throw new Bad();
      keys.add(k);
      ws();
      expectByte(0x3a);
      ws();
      value();
      ws();
      const d = peek();
      i++;
      if (d === 0x7d) return;
      if (d !== 0x2c) throw new Bad();
      ws();
    }
  };
  try {
    ws();
    object();
    return i === b.length ? "ok" : "bad";
  } catch (e) {
    if (e instanceof Incomplete) return "incomplete";
    if (e instanceof Bad) return "bad";
    throw e;
  }
}

// ---------- a generator of JSON object texts with varied whitespace, escapes, numbers and Unicode ----------

function generator(seed: number) {
  const r = seededRandom(seed);
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(r() * xs.length)]!;
  const sp = () => (r() < 0.6 ? "" : pick([" ", "\n", "\n  ", "\t", "\r\n    ", "  "]));
  const chars = ["a", "Z", " ", "9", "é", "ß", "中", "文", "😀", "𝄞", "\\n", "\\\"", "\\\\", "\\/", "\\u00e9", "\\uD83D\\uDE00", "\\t", "{", "}", "[", "]", ":", ","];
  const str = () => `"${Array.from({ length: Math.floor(r() * 6) }, () => pick(chars)).join("")}"`;
  const keyChars = chars.filter((c) => !c.startsWith("\\u") && c !== "\\/");
  /** A key not in `used` (keys are unique and spelled without \u or \/). */
  const key = (used: Set<string>) => {
    for (;;) {
      const k = `"${Array.from({ length: Math.floor(r() * 6) }, () => pick(keyChars)).join("")}"`;
      if (!used.has(k)) return used.add(k), k;
    }
  };
  const num = () => pick(["0", "-0", "7", "-12", "3.25", "1e5", "-2.5E-3", "10E+2", "0.0", "123456789"]);
  const value = (depth: number): string => {
    const k = r();
    if (depth < 3 && k < 0.2) return obj(depth + 1);
    if (depth < 3 && k < 0.35) return `[${sp()}${Array.from({ length: Math.floor(r() * 4) }, () => value(depth + 1)).join(`${sp()},${sp()}`)}${sp()}]`;
    if (k < 0.65) return str();
    if (k < 0.9) return num();
    return pick(["true", "false", "null"]);
  };
  const obj = (depth: number): string => {
    const used = new Set<string>();
    return `{${sp()}${Array.from({ length: Math.floor(r() * 4) }, () => `${key(used)}${sp()}:${sp()}${value(depth)}`).join(`${sp()},${sp()}`)}${sp()}}`;
  };
  return { r, obj: () => `${sp()}${obj(0)}` };
}

/** Feeds bytes one at a time; the index of the first rejected byte, or -1. */
function firstRejection(m: JsonObjectMatcher, b: Uint8Array): number {
  for (let i = 0; i < b.length; i++) if (!m.advance(b, i, i + 1)) return i;
  return -1;
}

/** The first index at which the reference says the prefix stops being viable, or -1. */
function referenceRejection(b: Uint8Array): number {
  for (let k = 1; k <= b.length; k++) if (reference(b.subarray(0, k)) === "bad") return k - 1;
  return -1;
}

describe("JSON object prefix automaton", () => {
  it("accepts hand-picked objects and rejects hand-picked non-objects at the right byte", () => {
    const ok = ['{}', ' {"a":1}', '{"a":[1,2.5e-3,-0,true,false,null,{"b":"\\u00e9\\n"}]}', '{"k":"中文😀"}', '{ "a" : { "b" : [ ] } }'];
    for (const s of ok) {
      const m = new JsonObjectMatcher();
      expect(firstRejection(m, enc(s)), s).toBe(-1);
      expect(m.done, s).toBe(true);
      expect(typeof JSON.parse(s)).toBe("object");
    }
    const bad: [string, number][] = [
      ["[1]", 0], // the top level must be an object
      ['"x"', 0],
      ['{"a":01}', 6], // no leading zeros
      ['{"a":1.}', 7],
      ['{"a":-}', 6],
      ['{a:1}', 1],
      ['{"a" 1}', 5],
      ['{"a":1,}', 7],
      ['{"a":[1,]}', 8],
      ['{"a":tru}', 8],
      ['{"a":"\\x"}', 7],
      ['{"a":"\\u12G4"}', 10],
      ['{"a":"\n"}', 6], // raw control character in a string
      ['{"a":1}}', 7], // nothing after the object
      ['{"a":1} ', 7],
      ['{"a":1]', 6],
      ['{"a":1,"a":2}', 9], // a key twice
      ['{"\\u0061":1}', 3], // keys are spelled one way
      ['{"a\\/":1}', 4],
      [`{${" ".repeat(MAX_WHITESPACE_RUN + 1)}}`, MAX_WHITESPACE_RUN + 1],
    ];
    for (const [s, at] of bad) {
      expect(firstRejection(new JsonObjectMatcher(), enc(s)), s).toBe(at);
      expect(referenceRejection(enc(s)), s).toBe(at);
    }
    // Invalid UTF-8 inside strings: a lone continuation byte, an overlong lead, a surrogate, > U+10FFFF.
    for (const tail of [[0x80], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80]]) {
      const b = Uint8Array.from([...enc('{"a":"'), ...tail, ...enc('"}')]);
      const at = firstRejection(new JsonObjectMatcher(), b);
      expect(at).toBeGreaterThanOrEqual(6);
      expect(at).toBe(referenceRejection(b));
    }
  });

  it("fuzz: generated objects split at random token boundaries are accepted whole, done exactly at the end, and parse", () => {
    for (let seed = 1; seed <= 400; seed++) {
      const g = generator(seed);
      const text = g.obj();
      const b = enc(text);
      expect(reference(b), text).toBe("ok");
      const m = new JsonObjectMatcher();
      let at = 0;
      while (at < b.length) {
        const len = 1 + Math.floor(g.r() * 8);
        const to = Math.min(b.length, at + len);
        expect(m.done).toBe(false);
        expect(m.accepts(b, at, to), `${text} @${at}`).toBe(true);
        expect(m.advance(b, at, to)).toBe(true);
        at = to;
      }
      expect(m.done, text).toBe(true);
      expect(JSON.parse(text)).toBeTypeOf("object");
    }
  });

  it("fuzz: random mutations are rejected at the first bad byte (as the reference), and whatever is accepted whole parses", () => {
    const alphabet = [...enc('{}[]":,.-+eE0123456789 \n\tabcfnrtu\\/x'), 0x80, 0xc3, 0xe4, 0xf0, 0x00];
    let rejected = 0;
    for (let seed = 1; seed <= 600; seed++) {
      const g = generator(1000 + seed);
      const orig = [...enc(g.obj())];
      const { bytes: b, at: k } = mutateOnce(orig, () => g.r(), alphabet);
      const m = new JsonObjectMatcher();
      const at = firstRejection(m, b);
      expect(at, Buffer.from(b).toString("hex")).toBe(referenceRejection(b));
      if (at >= 0) {
        rejected++;
        expect(at).toBeGreaterThanOrEqual(k); // everything before the mutation was valid
      } else if (m.done) {
        expect(JSON.parse(Buffer.from(b).toString("utf8"))).toBeTypeOf("object");
      }
      // JSON.parse agrees on complete texts, but for what JSON.parse has not: the cap on whitespace runs
      // and the key rules (the reference has them).
      let parses = false;
      try {
        const v = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(b));
        parses = typeof v === "object" && v !== null && !Array.isArray(v);
      } catch {
        /* not JSON */
      }
      const trailingWs = /\s$/.test(Buffer.from(b).toString());
      if (parses && !trailingWs) expect(at === -1 && m.done, Buffer.from(b).toString()).toBe(reference(b) === "ok");
    }
    expect(rejected).toBeGreaterThan(200); // most mutations break JSON: the test exercised rejection
  });
});

// ---------- vocabulary masks and the sampler ----------

let table: TokenByteTable;
beforeAll(() => {
  table = tokenByteTable(JSON.parse(readFileSync(join(TINY_R1, "tokenizer.json"), "utf8")))!;
});

describe("token byte table and masks", () => {
  it("tiny-r1's table spells each token's bytes (added tokens are empty)", () => {
    expect(table).toBeDefined();
    const tok = (id: number) => Buffer.from(table.bytes.subarray(table.offsets[id]!, table.offsets[id + 1]!)).toString("latin1");
    const lengths = Array.from({ length: 2048 }, (_, id) => table.offsets[id + 1]! - table.offsets[id]!);
    expect(lengths.slice(2041).every((n) => n === 0)).toBe(true); // BOS, EOS, pad, roles, <think>, </think>
    expect(lengths.slice(0, 2041).every((n) => n > 0)).toBe(true);
    const all = Array.from({ length: 2041 }, (_, id) => tok(id));
    expect(all).toContain("{");
    expect(all).toContain(" ");
  });

  it("the bytes of an encoding's tokens concatenate to the text's UTF-8 (split characters included); other tokenizer kinds get no table", async () => {
    const { loadTextModel } = await import("../../src/engine/text/index.js");
    const t = await loadTextModel(TINY_R1);
    for (const s of ['{"naïve": "中文 😀", "n": -12.5e3}', "héllo wörld\n\t  ", "𝄞𝄞 ß"]) {
      const ids = t.encode(s);
      const got = Buffer.concat(ids.map((id) => Buffer.from(table.bytes.subarray(table.offsets[id]!, table.offsets[id + 1]!))));
      expect(got.equals(enc(s)), s).toBe(true);
    }
    expect(tokenByteTable({ model: { type: "Unigram", vocab: [["a", 0]] }, decoder: { type: "Metaspace" } })).toBeUndefined();
    expect(tokenByteTable({ model: { type: "BPE", vocab: { "▁a": 0 } }, decoder: { type: "Sequence", decoders: [{ type: "Replace" }, { type: "ByteFallback" }] } })).toBeUndefined();
  });

  it("a mask equals the token-by-token check, also when served from the cache for another stack", () => {
    const vocab = new JsonVocabulary(table, 2048);
    const states = ['{"a":[', '{"a":[{"b":[[', '{"x":{"y":{"z":[{"q":1', '{"a":"é', '{"a":tr', '{"a":1', '{"a":[1]', '{', "", '{"a":"\\u00'];
    for (const s of states) {
      const m = new JsonObjectMatcher();
      expect(m.advance(enc(s), 0, enc(s).length)).toBe(true);
      const mask = vocab.mask(m);
      for (let id = 0; id < 2048; id++) expect(mask[id], `${s} / ${id}`).toBe(vocab.allows(m, id) ? 1 : 0);
    }
    // Deep stacks with the same top share a key; the cached mask must still be right for each.
    const builds = vocab.maskBuilds;
    for (const prefix of ['{"a":[[[[[[[[[[[[', '{"b":{"c":[[[[[[[[[[[[']) {
      const m = new JsonObjectMatcher();
      m.advance(enc(prefix), 0, enc(prefix).length);
      const mask = vocab.mask(m);
      for (let id = 0; id < 2048; id++) expect(mask[id]).toBe(vocab.allows(m, id) ? 1 : 0);
    }
    expect(vocab.maskBuilds - builds).toBeLessThanOrEqual(2);
  });
});

describe("constrained sampling", () => {
  const V = 8;
  /** Allows only the listed ids; counts checks and mask requests. */
  const only = (ids: number[]) => {
    const f = {
      masks: 0,
      checks: 0,
      allows: (id: number) => (f.checks++, ids.includes(id)),
      mask: () => (f.masks++, Uint8Array.from({ length: V }, (_, i) => (ids.includes(i) ? 1 : 0))),
    };
    return f satisfies TokenFilter;
  };
  const logits = Float32Array.from([8, 7, 6, 5, 4, 3, 2, 1]);
  const base = { temperature: 1, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1, seed: 3 };

  it("greedy takes the best allowed token: an allowed pick costs one check, a rejected one the mask", () => {
    const top = only([0, 5]);
    expect(new Sampler({ ...base, temperature: 0 }, [], V).sample(logits, top).id).toBe(0);
    expect([top.checks, top.masks]).toEqual([1, 0]);
    const far = only([2, 7]);
    expect(new Sampler({ ...base, temperature: 0 }, [], V).sample(logits, far).id).toBe(2);
    expect([far.checks, far.masks]).toEqual([1, 1]);
  });

  it("temperature sampling follows the distribution restricted to allowed tokens; logprobs stay unmasked", () => {
    const allowed = [1, 3, 6];
    const s = new Sampler({ ...base, logprobs: 1 }, [], V);
    const counts = new Array<number>(V).fill(0);
    const n = 6000;
    for (let i = 0; i < n; i++) {
      const { id, logprob } = s.sample(logits, only(allowed));
      counts[id]!++;
      if (i === 0) expect(logprob!.top[0]!.id).toBe(0); // the top alternative is the unmasked argmax
    }
    const z = allowed.reduce((a, i) => a + Math.exp(logits[i]!), 0);
    for (let i = 0; i < V; i++) {
      const p = allowed.includes(i) ? Math.exp(logits[i]!) / z : 0;
      expect(Math.abs(counts[i]! / n - p)).toBeLessThanOrEqual(4 * Math.sqrt((p * (1 - p)) / n) + 1e-9);
    }
  });
});

// ---------- the scheduler on tiny-r1 ----------

describe("json_object on the embedded engine (tiny-r1)", () => {
  let engine: Awaited<ReturnType<typeof openEmbeddedEngine>>["engine"];
  let text: TextModel;
  const Q = "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}.";
  beforeAll(async () => {
    ({ engine, text } = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 2, maxBatch: 8, maxContext: 1024 }));
  }, 60_000);
  afterAll(() => engine?.close());

  const run = async (sampling = GREEDY, maxTokens = 600, startAfter = true) => {
    const ids = text.encode(text.applyChatTemplate([{ role: "user", content: Q }]));
    const out: number[] = [];
    let finish: string | undefined;
    const constraint = { kind: "json_object" as const, ...(startAfter ? { startAfterId: text.thinkEndId } : {}) };
    for await (const c of engine.submit({ promptIds: ids, sampling, maxTokens, stopIds: text.eosTokenIds, constraint })) {
      out.push(...c.ids);
      if (c.finish) finish = c.finish;
    }
    return { ids: out, finish };
  };

  it("greedy: the reasoning is unchanged, the answer after </think> is a JSON object, finish stop on its brace", async () => {
    const free = await collect(engine, text.encode(text.applyChatTemplate([{ role: "user", content: Q }])), 600, text.eosTokenIds);
    const r = await run();
    const end = r.ids.indexOf(text.thinkEndId!);
    expect(end).toBeGreaterThan(10);
    expect(r.ids.slice(0, end + 1)).toEqual(free.ids.slice(0, end + 1)); // reasoning is free text
    expect(r.finish).toBe("stop");
    const answer = text.decode(r.ids.slice(end + 1));
    expect(JSON.parse(answer)).toBeTypeOf("object");
    expect(answer.trimEnd().endsWith("}")).toBe(true);
  });

  it("sampled with seeds: every finished answer parses; the same seed gives the same tokens", async () => {
    const outs = [];
    for (let seed = 1; seed <= 6; seed++) outs.push(await run({ ...GREEDY, temperature: 0.8, topP: 0.95, topK: 40, seed }));
    for (const r of outs) {
      const end = r.ids.indexOf(text.thinkEndId!);
      if (r.finish === "stop" && end >= 0) expect(JSON.parse(text.decode(r.ids.slice(end + 1)))).toBeTypeOf("object");
    }
    expect(outs.filter((r) => r.finish === "stop").length).toBeGreaterThan(0);
    expect((await run({ ...GREEDY, temperature: 0.8, topP: 0.95, topK: 40, seed: 2 })).ids).toEqual(outs[1]!.ids);
  });

  it("without startAfterId the whole output is the object", async () => {
    const r = await run(GREEDY, 600, false);
    expect(r.finish).toBe("stop");
    expect(JSON.parse(text.decode(r.ids))).toBeTypeOf("object");
  });

  it("a budget that ends inside the object: finish length, the answer so far is a JSON prefix", async () => {
    const sampling = { ...GREEDY, temperature: 0.8, topP: 0.95, topK: 40, seed: 1 };
    const full = await run(sampling);
    const end = full.ids.indexOf(text.thinkEndId!);
    expect(full.ids.length).toBeGreaterThan(end + 8); // seed 1 writes a longer object
    const cut = await run(sampling, end + 8);
    expect(cut.finish).toBe("length");
    expect(cut.ids).toEqual(full.ids.slice(0, end + 8));
    expect(reference(enc(text.decode(cut.ids.slice(end + 1))))).toBe("incomplete");
  });

  it("a constraint that never starts (no </think> within the budget) leaves the output free and ends with length", async () => {
    const r = await run(GREEDY, 20);
    expect(r.finish).toBe("length");
    expect(r.ids).not.toContain(text.thinkEndId);
  });

  it("a state that no token of the vocabulary continues fails its request with DSR_CONSTRAINT_DEAD_END; the row beside it finishes as alone", async () => {
    // a vocabulary whose only text token is `{`: json_object gets its `{`, and then nothing can follow
    const brace = text.encode("{");
    expect(brace).toHaveLength(1);
    const narrow = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 2, maxBatch: 4, maxContext: 1024, worker: false, tokenBytes: onlyToken(table.offsets.length, brace[0]!, Uint8Array.of(0x7b)) });
    try {
      const prompt = text.encode(text.applyChatTemplate([{ role: "user", content: Q }]));
      const alone = await collect(engine, prompt, 40, []);
      const ids: number[] = [];
      const failed = (async () => {
        for await (const c of narrow.engine.submit({ promptIds: prompt, sampling: GREEDY, maxTokens: 40, stopIds: [], constraint: { kind: "json_object" } })) ids.push(...c.ids);
      })();
      const [outcome, beside] = await Promise.all([failed.then(() => undefined, (e: unknown) => e), collect(narrow.engine, prompt, 40, [])]);
      expect(outcome).toMatchObject({ code: "DSR_CONSTRAINT_DEAD_END" });
      expect(ids).toEqual(brace);
      expect(beside.ids).toEqual(alone.ids);
    } finally {
      await narrow.engine.close();
    }
  });

  it("JsonConstraint activates on the start id only", () => {
    const c = new JsonConstraint(new JsonVocabulary(table, 2048), { kind: "json_object", startAfterId: 2047 });
    expect(c.active).toBe(false);
    c.accept(5);
    expect(c.active).toBe(false);
    c.accept(2047);
    expect(c.active).toBe(true);
    expect(c.done).toBe(false);
  });
});
