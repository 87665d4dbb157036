/**
 * response_format json_schema on the embedded engine: the schema compiler's refusals (with the JSON
 * path of the keyword), and the schema-walking JSON automaton (json-constraint.ts) against a reference
 * validator on seeded generated schemas and documents — documents split at random token boundaries
 * are accepted whole and done exactly at their end; random mutations are accepted only as far as a
 * valid document can still be reached (each accepted prefix is completed by a search guided by the
 * automaton alone and the completion must validate, so no accepted prefix is a dead end); full masks
 * (also from the cache) equal the token-by-token check on tiny-r1's vocabulary; and the scheduler on
 * tiny-r1 (reasoning free, the answer validates, "stop" when complete, "length" when cut).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { JsonConstraint, JsonMatcher, JsonVocabulary } from "../../src/engine/runtime/embedded/json-constraint.js";
import { compileJsonSchema, SchemaError } from "../../src/engine/runtime/embedded/json-schema.js";
import { openEmbeddedEngine } from "../../src/engine/runtime/embedded/index.js";
import { tokenByteTable, type TokenByteTable } from "../../src/engine/text/token-bytes.js";
import { loadTextModel, type TextModel } from "../../src/engine/text/index.js";
import { ADDITION_QUESTION, ANSWER_SCHEMA, buildTiny, GREEDY, mutateOnce, TINY_R1 } from "./support.js";
import { COMPLETIONS, documentGenerator, hasDuplicateKeys, schemaGenerator, validate } from "./json-schema-reference.js";

const enc = (s: string) => Buffer.from(s, "utf8");
const matcher = (schema: unknown) => new JsonMatcher(compileJsonSchema(schema));

/** Feeds bytes one at a time; the index of the first rejected byte, or -1. */
function firstRejection(m: JsonMatcher, b: Uint8Array): number {
  for (let i = 0; i < b.length; i++) if (!m.advance(b, i, i + 1)) return i;
  return -1;
}

/** Parses a complete document; the value, or undefined when it is not JSON. */
function parse(text: string): { v: unknown } | undefined {
  try {
    return { v: JSON.parse(text) };
  } catch {
    return undefined;
  }
}

const TRIES = [...COMPLETIONS, '"', "}", "]", ":", ",", " ", "0", "null", "true", "false"];
/**
 * Completes the matcher's document using only the matcher: at each step the first of a fixed list of
 * spellings it accepts (names and enum strings with their closing quote, closers, separators, a
 * space, `0`, literals), else any single byte it accepts. Undefined when it runs past `limit` bytes;
 * throws on a dead end (nothing accepted before done).
 */
function complete(m: JsonMatcher, limit = 3000): string | undefined {
  let out = "";
  const all = [...TRIES.map(enc), ...Array.from({ length: 256 }, (_, b) => Uint8Array.of(b))];
  while (!m.done) {
    if (out.length > limit) return undefined;
    const next = all.find((b) => m.advance(b, 0, b.length));
    if (!next) throw new Error(`dead end after ${JSON.stringify(out)}`);
    out += Buffer.from(next).toString("latin1");
  }
  return out;
}

describe("json_schema: what the compiler refuses", () => {
  const base = "response_format.json_schema.schema";
  const refused = (schema: unknown) => {
    try {
      compileJsonSchema(schema, base);
    } catch (e) {
      expect(e).toBeInstanceOf(SchemaError);
      return e as SchemaError;
    }
    throw new Error("compiled");
  };

  it("an unsupported keyword: a 400-worthy error naming its JSON path and the subset", () => {
    const e = refused({ type: "object", properties: { age: { type: "integer", minimum: 0 }, name: { type: "string", pattern: "^a" } } });
    expect(e.path).toBe(`${base}.properties.age.minimum`);
    expect(e.message).toMatch(/^response_format\.json_schema\.schema\.properties\.age\.minimum is not supported by the embedded and torch engines \(supported: type, properties, required, additionalProperties, items, minItems, maxItems, enum, const, anyOf, \$ref/);
    expect(e.message).toMatch(/use --engine vllm or --upstream/);
    expect(refused({ type: "array", items: { oneOf: [] } }).path).toBe(`${base}.items.oneOf`);
    expect(refused({ anyOf: [{ type: "string" }, { type: "string", format: "date" }] }).path).toBe(`${base}.anyOf[1].format`);
    expect(refused({ type: "object", properties: { "a b": { allOf: [] } } }).path).toBe(`${base}.properties["a b"].allOf`);
    expect(refused({ $defs: { P: { type: "string", maxLength: 3 } }, $ref: "#/$defs/P" }).path).toBe(`${base}.$defs.P.maxLength`);
  });

  it("malformed or unsupported uses of supported keywords", () => {
    expect(refused({ type: "date" }).path).toBe(`${base}.type`);
    expect(refused({ type: "array", items: [{ type: "string" }] }).message).toMatch(/items as a list \(tuple validation\) is not supported/);
    expect(refused({ enum: [{ a: 1 }] }).path).toBe(`${base}.enum[0]`);
    expect(refused({ const: [1] }).path).toBe(`${base}.const`);
    expect(refused({ type: "string", anyOf: [{ type: "string" }] }).message).toMatch(/\.type beside anyOf is not supported/);
    expect(refused({ $ref: "#/properties/a" }).path).toBe(`${base}.$ref`);
    expect(refused({ $ref: "#/$defs/missing" }).message).toMatch(/points to nothing/);
    expect(refused({ type: "array", minItems: -1 }).path).toBe(`${base}.minItems`);
    expect(refused({ required: "a" }).path).toBe(`${base}.required`);
    expect(refused(["x"]).path).toBe(base);
    // bounds on what a request can make the gateway compile
    let deep: unknown = { type: "null" };
    for (let i = 0; i < 80; i++) deep = { anyOf: [deep] };
    expect(refused(deep).message).toMatch(/is nested more than 64 schemas deep$/);
    expect(refused({ type: "object", properties: Object.fromEntries(Array.from({ length: 5000 }, (_, i) => [`p${i}`, { type: "null" }])) }).message).toMatch(/has more than 4096 subschemas/);
  });

  it("objects with more than 32 properties (bitsets of several words)", () => {
    const names = Array.from({ length: 70 }, (_, i) => `p${i}`);
    const schema = { type: "object", properties: Object.fromEntries(names.map((n) => [n, { type: "integer" }])), required: names.slice(30), additionalProperties: false };
    const doc = `{${[...names].reverse().map((n, i) => `"${n}":${i}`).join(",")}}`;
    const m = matcher(schema);
    expect(firstRejection(m, enc(doc))).toBe(-1);
    expect(m.done).toBe(true);
    const short = `{${names.slice(0, -1).map((n) => `"${n}":1`).join(",")}}`; // the required p69 missing: no "}"
    expect(firstRejection(matcher(schema), enc(short))).toBe(short.length - 1);
  });

  it("schemas that admit no value are refused; impossible parts are pruned", () => {
    expect(refused(false).message).toMatch(/admits no JSON value/);
    expect(refused({ type: "array", minItems: 3, maxItems: 1 }).message).toMatch(/admits no JSON value/);
    expect(refused({ type: "object", required: ["a"], additionalProperties: false }).message).toMatch(/admits no JSON value/);
    // infinite recursion: every node needs a child
    expect(refused({ $defs: { n: { type: "object", properties: { c: { $ref: "#/$defs/n" } }, required: ["c"] } }, $ref: "#/$defs/n" }).message).toMatch(/admits no JSON value/);
    expect(refused({ type: "string", enum: [1, 2] }).message).toMatch(/admits no JSON value/);
    // an impossible optional property can never appear; an impossible anyOf alternative is dropped
    const m = matcher({ type: "object", properties: { a: false, b: { type: "integer" } } });
    expect(firstRejection(m, enc('{"a"'))).toBe(3);
    expect(firstRejection(matcher({ anyOf: [{ type: "array", minItems: 2, maxItems: 1 }, { type: "null" }] }), enc("["))).toBe(0);
  });

  it("annotations are ignored; recursion, definitions and boolean schemas are supported", () => {
    expect(() => compileJsonSchema({ $schema: "https://json-schema.org/draft/2020-12/schema", title: "t", description: "d", default: {}, examples: [], $comment: "c", type: "object" })).not.toThrow();
    const tree = { definitions: { n: { type: "object", properties: { v: { type: "integer" }, kids: { type: "array", items: { $ref: "#/definitions/n" } } }, required: ["v"], additionalProperties: false } }, $ref: "#/definitions/n" };
    const m = matcher(tree);
    expect(firstRejection(m, enc('{"v":1,"kids":[{"v":2,"kids":[{"v":3}]},{"v":4}]}'))).toBe(-1);
    expect(m.done).toBe(true);
    expect(firstRejection(matcher({ type: "array", items: { $ref: "#" }, maxItems: 2 }), enc("[[],[[]]]"))).toBe(-1);
  });
});

describe("json_schema automaton", () => {
  const person = {
    type: "object",
    properties: { name: { type: "string" }, age: { type: "integer" }, tags: { type: "array", items: { enum: ["a", "b", 3] }, maxItems: 2 }, nick: { type: ["string", "null"] } },
    required: ["name", "age"],
    additionalProperties: false,
  };

  it("accepts hand-picked valid documents and rejects invalid ones at the right byte", () => {
    const ok: [unknown, string][] = [
      [person, '{"name":"x","age":3}'],
      [person, '{ "age" : -0 , "tags" : [ "a" , 3 ] , "name" : "\\u00e9", "nick": null }'],
      [{ type: "string" }, '"top"'],
      [{ type: "integer" }, "42\n"], // a top-level number ends with one whitespace byte
      [{ enum: [1, 12, "x"] }, "12 "],
      [{ enum: [1e21, 2.5] }, "1e+21 "], // JSON.stringify's spelling
      [{ type: ["null", "boolean"] }, "false"],
      [{ anyOf: [{ type: "object", properties: { k: { const: "a" }, x: { type: "string" } }, required: ["k", "x"], additionalProperties: false }, { type: "object", properties: { k: { const: "b" }, y: { type: "number" } }, required: ["k", "y"], additionalProperties: false }] }, '{"k":"b","y":2.5}'],
      [{ type: "object", required: ["z"] }, '{"z":[1,{"q":null}]}'], // a required key with no declared schema takes any value
      [{ type: "object", additionalProperties: { type: "boolean" } }, '{"a":true,"b":false}'],
      [{ type: "array", minItems: 2, maxItems: 2, items: { type: "integer" } }, "[1, 2]"],
      [true, '  [1,"a",{"b":null}]'],
      [{ type: "object", properties: { 'q"t': { type: "null" }, é: { type: "null" } }, additionalProperties: false }, '{"q\\"t":null,"é":null}'],
    ];
    for (const [schema, s] of ok) {
      const m = matcher(schema);
      expect(firstRejection(m, enc(s)), s).toBe(-1);
      expect(m.done, s).toBe(true);
      expect(validate(schema as never, JSON.parse(s)), s).toBe(true);
    }
    const bad: [unknown, string, number][] = [
      [person, '{"age":3}', 8], // } before the required name
      [person, '{"name":"x","age":3.5}', 19], // integer: no fraction
      [person, '{"name":"x","age":1e2}', 19],
      [person, '{"name":"x","name":"y"}', 14], // a key twice (no unseen name starts "na")
      [person, '{"nam":1}', 5], // not a declared name
      [person, '{"name":"x","age":3,"x":1}', 21], // no undeclared keys
      [person, '{"name":"x","age":3,"tags":["a",3,"b"]}', 33], // maxItems
      [person, '{"name":"x","age":3,"tags":["c"]}', 29], // enum
      [person, '{"name":"x","age":3,"tags":[4]}', 28],
      [person, '{"name":3}', 8],
      [person, '{"name":"x","age":3} ', 20], // nothing after the value
      [person, "[", 0],
      [{ type: "string" }, "1", 0],
      [{ type: "integer" }, "12}", 2],
      [{ enum: ["red", "green"] }, '"re"', 3],
      [{ enum: ["é"] }, '"\\u00e9"', 1], // enum values are spelled as JSON.stringify spells them
      [{ const: 1 }, "1.0", 1],
      [{ type: "array", minItems: 2 }, "[1]", 2],
      [{ type: "array", maxItems: 0 }, "[1", 1],
      [{ type: "object", properties: { a: { type: "null" } } }, '{"\\u0061":1}', 3], // undeclared keys: no \u spelling
      [{ type: "object", properties: { ab: { type: "null" }, a: { type: "null" } }, additionalProperties: false }, '{"ab":null,"a":null,', 19], // no name left
      [{ type: "object", properties: { ab: { type: "null" }, a: { type: "null" }, b: { type: "null" } }, additionalProperties: false }, '{"ab":null,"a":null,"a', 21], // only seen names under "a"
      [{ anyOf: [{ type: "object", properties: { x: { type: "string" }, z: { type: "null" } }, additionalProperties: false }, { type: "object", properties: { y: { type: "number" } }, additionalProperties: false }] }, '{"x":"1","y', 10], // the first key ruled out the second alternative
    ];
    for (const [schema, s, at] of bad) expect(firstRejection(matcher(schema), enc(s)), `${JSON.stringify(schema)} ${s}`).toBe(at);
  });

  it("fuzz: generated documents split at random token boundaries are accepted whole, done exactly at the end, and validate", () => {
    let docs = 0;
    for (let seed = 1; seed <= 250; seed++) {
      const schema = schemaGenerator(seed)();
      let compiled;
      try {
        compiled = compileJsonSchema(schema);
      } catch (e) {
        throw new Error(`seed ${seed}: ${(e as Error).message}\n${JSON.stringify(schema)}`);
      }
      const g = documentGenerator(seed);
      for (let k = 0; k < 4; k++) {
        const text = g.doc(schema);
        const b = enc(text);
        const m = new JsonMatcher(compiled);
        let at = 0;
        while (at < b.length) {
          const to = Math.min(b.length, at + 1 + Math.floor(g.r() * 8));
          expect(m.done).toBe(false);
          expect(m.advance(b, at, to), `seed ${seed} ${JSON.stringify(schema)}\n${text} @${at}`).toBe(true);
          at = to;
        }
        expect(m.done, text).toBe(true);
        const v = JSON.parse(text);
        expect(validate(schema, v), `${JSON.stringify(schema)}\n${text}`).toBe(true);
        expect(hasDuplicateKeys(text)).toBe(false);
        docs++;
      }
    }
    expect(docs).toBe(1000);
  });

  it("fuzz: mutated documents are accepted only while a valid document can still be reached", () => {
    const alphabet = [...enc('{}[]":,.-+eE0123456789 \n\tabnrtulfsxzé\\/'), 0x80, 0x00];
    let rejected = 0;
    let completed = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const schema = schemaGenerator(seed)();
      const compiled = compileJsonSchema(schema);
      const g = documentGenerator(5000 + seed);
      const orig = [...enc(g.doc(schema))];
      const { bytes: b, at: k } = mutateOnce(orig, () => g.r(), alphabet);
      const m = new JsonMatcher(compiled);
      const at = firstRejection(m, b);
      if (at >= 0) {
        rejected++;
        expect(at).toBeGreaterThanOrEqual(Math.min(k, orig.length - 1) - 1); // (a deletion can expose the byte before it)
      }
      const accepted = Buffer.from(b.subarray(0, at < 0 ? b.length : at)).toString("latin1");
      // The accepted prefix plus a completion the automaton guides is a valid document.
      const rest = complete(m);
      if (rest === undefined) continue;
      completed++;
      const text = Buffer.from(accepted + rest, "latin1").toString("utf8");
      const p = parse(text);
      expect(p, `${JSON.stringify(schema)}\n${JSON.stringify(text)}`).toBeDefined();
      expect(validate(schema, p!.v), `${JSON.stringify(schema)}\n${text}`).toBe(true);
      expect(hasDuplicateKeys(text), text).toBe(false);
    }
    expect(rejected).toBeGreaterThan(100);
    expect(completed).toBeGreaterThan(290);
  });

  it("no dead ends: from the start of random schemas, the guided completion always reaches a valid document", () => {
    for (let seed = 1; seed <= 200; seed++) {
      const schema = schemaGenerator(10_000 + seed)();
      const m = matcher(schema);
      const text = complete(m);
      expect(text, JSON.stringify(schema)).toBeDefined();
      const s = Buffer.from(text!, "latin1").toString("utf8");
      expect(validate(schema, JSON.parse(s)), `${JSON.stringify(schema)}\n${s}`).toBe(true);
    }
  });
});

// ---------- vocabulary masks ----------

let table: TokenByteTable;
let text: TextModel;
beforeAll(async () => {
  table = tokenByteTable(JSON.parse(readFileSync(join(TINY_R1, "tokenizer.json"), "utf8")))!;
  text = await loadTextModel(TINY_R1);
});

describe("json_schema masks on tiny-r1's vocabulary", () => {
  it("a mask equals the token-by-token check at states along generated documents, also when served from the cache", () => {
    const vocab = new JsonVocabulary(table, 2048);
    let checked = 0;
    for (let seed = 1; seed <= 12; seed++) {
      const schema = schemaGenerator(seed)();
      const g = documentGenerator(seed);
      for (let k = 0; k < 2; k++) {
        const doc = g.doc(schema);
        const ids = text.encode(doc);
        const c = new JsonConstraint(vocab, { kind: "json_schema", schema });
        for (const [i, id] of ids.entries()) {
          if (i % 3 === 0) {
            const mask = c.mask();
            for (let t = 0; t < 2048; t++) if (mask[t] !== (c.allows(t) ? 1 : 0)) throw new Error(`seed ${seed} ${doc} @${i}: token ${t}`);
            expect(mask[id]).toBe(1);
            checked++;
          }
          c.accept(id);
        }
        expect(c.done, doc).toBe(true);
      }
    }
    expect(checked).toBeGreaterThan(50);
    expect(vocab.maskBuilds).toBeLessThan(checked); // some came from the cache
  });

  it("requests with the same schema share its compiled form and masks", () => {
    const vocab = new JsonVocabulary(table, 2048);
    const schema = { type: "object", properties: { a: { type: "integer" } }, required: ["a"], additionalProperties: false };
    new JsonConstraint(vocab, { kind: "json_schema", schema }).mask();
    const builds = vocab.maskBuilds;
    new JsonConstraint(vocab, { kind: "json_schema", schema: JSON.parse(JSON.stringify(schema)) }).mask();
    expect(vocab.maskBuilds).toBe(builds);
    // a different schema in the same state is not served another schema's mask
    const other = new JsonConstraint(vocab, { kind: "json_schema", schema: { type: "array" } });
    const m = other.mask();
    expect(vocab.maskBuilds).toBe(builds + 1);
    expect(m[text.encode("[")[0]!]).toBe(1);
  });
});

// ---------- the scheduler on tiny-r1 ----------

describe("json_schema on the embedded engine (tiny-r1)", () => {
  let engine: Awaited<ReturnType<typeof openEmbeddedEngine>>["engine"];
  const Q = ADDITION_QUESTION;
  const schema = ANSWER_SCHEMA;
  beforeAll(async () => {
    ({ engine } = await openEmbeddedEngine(await buildTiny("fp32"), { threads: 2, maxBatch: 8, maxContext: 1024 }));
  }, 60_000);
  afterAll(() => engine?.close());

  const run = async (sampling = GREEDY, maxTokens = 600, s: unknown = schema) => {
    const ids = text.encode(text.applyChatTemplate([{ role: "user", content: Q }]));
    const out: number[] = [];
    let finish: string | undefined;
    for await (const c of engine.submit({ promptIds: ids, sampling, maxTokens, stopIds: text.eosTokenIds, constraint: { kind: "json_schema", schema: s, startAfterId: text.thinkEndId } })) {
      out.push(...c.ids);
      if (c.finish) finish = c.finish;
    }
    const end = out.indexOf(text.thinkEndId!);
    return { ids: out, finish, answer: end >= 0 ? text.decode(out.slice(end + 1)) : undefined };
  };

  it("greedy and seeded: the answer after </think> validates against the schema, finish stop; a seed repeats", async () => {
    const r = await run();
    expect(r.finish).toBe("stop");
    expect(validate(schema, JSON.parse(r.answer!)), r.answer).toBe(true);
    const outs = [];
    for (let seed = 1; seed <= 4; seed++) outs.push(await run({ ...GREEDY, temperature: 0.8, topP: 0.95, topK: 40, seed }));
    for (const o of outs) if (o.finish === "stop") expect(validate(schema, JSON.parse(o.answer!)), o.answer).toBe(true);
    expect(outs.filter((o) => o.finish === "stop").length).toBeGreaterThan(0);
    expect((await run({ ...GREEDY, temperature: 0.8, topP: 0.95, topK: 40, seed: 2 })).ids).toEqual(outs[1]!.ids);
  });

  it("a top-level scalar schema: the answer is one enum value and the sequence stops on it", async () => {
    const r = await run(GREEDY, 600, { enum: ["small", "large", 623] });
    expect(r.finish).toBe("stop");
    expect(["small", "large", 623]).toContain(JSON.parse(r.answer!));
  });

  it("a budget that ends inside the value: finish length, the answer so far is a prefix the automaton accepts", async () => {
    const full = await run();
    const end = full.ids.indexOf(text.thinkEndId!);
    expect(full.ids.length).toBeGreaterThan(end + 4);
    const cut = await run(GREEDY, end + 4);
    expect(cut.finish).toBe("length");
    expect(cut.ids).toEqual(full.ids.slice(0, end + 4));
    const m = matcher(schema);
    expect(firstRejection(m, enc(cut.answer!))).toBe(-1);
    expect(m.done).toBe(false);
  });
});
