/**
 * RemoteConstraints (the gateway's half of response_format on the torch worker), on tiny-r1's real
 * tokenizer: verdicts for allowed and refused draws, masks sent once then named by id, the shared
 * LRU that mirrors the worker's mask cache, completion, and rows it no longer knows.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { RemoteConstraints } from "../../src/engine/runtime/remote-constraints.js";
import { loadTextModel, type TextModel } from "../../src/engine/text/index.js";
import { TINY_R1 } from "../engine/support.js";

let text: TextModel;
beforeAll(async () => {
  text = await loadTextModel(TINY_R1);
});
const tok = (s: string) => {
  const ids = text.encode(s);
  expect(ids, s).toHaveLength(1);
  return ids[0]!;
};
/** The bits of a verdict's mask, unpacked. */
const unpack = (bits: string, n: number) => Array.from({ length: n }, (_, i) => (Buffer.from(bits, "base64")[i >> 3]! >> (i & 7)) & 1);

describe("RemoteConstraints", () => {
  it("allows what continues the value, answers a refused draw with the state's mask, and reports completion", () => {
    const rc = new RemoteConstraints(text.tokenBytes()!, 2048);
    rc.add(1, { kind: "json_object" });
    expect(rc.verdict(1, tok("{"))).toBe(true);
    const v = rc.verdict(1, tok("a"));
    expect(Array.isArray(v)).toBe(true);
    const bits = unpack((v as [number, string])[1], 2048);
    expect(bits[tok("{")]).toBe(1);
    expect(bits[tok("a")]).toBe(0);
    expect(bits[text.eosTokenIds[0]!]).toBe(0);
    expect(rc.accept(1, [tok("{")])).toBe(false);
    expect(rc.accept(1, [tok("}")])).toBe(true);
    expect(() => rc.accept(1, [tok("}")])).toThrow(/does not continue/);
    rc.remove(1);
    expect(rc.verdict(1, tok("a"))).toBe(false); // a row the gateway already ended: drop it
  });

  it("waits for startAfterId before it constrains anything", () => {
    const rc = new RemoteConstraints(text.tokenBytes()!, 2048);
    rc.add(7, { kind: "json_object", startAfterId: text.thinkEndId });
    expect(rc.verdict(7, tok("a"))).toBe(true);
    rc.accept(7, [tok("a"), text.thinkEndId!]);
    expect(Array.isArray(rc.verdict(7, tok("a")))).toBe(true);
  });

  it("sends a mask's bits once, then its id, keeping the worker's LRU: an evicted mask is sent again", () => {
    const rc = new RemoteConstraints(text.tokenBytes()!, 2048, 2);
    // three states with different masks: before the value, after '{', after '[' (json_schema: an array)
    rc.add(1, { kind: "json_object" });
    rc.add(2, { kind: "json_object" });
    rc.accept(2, [tok("{")]);
    rc.add(3, { kind: "json_schema", schema: { type: "array" } });
    rc.accept(3, [tok("[")]);
    const a = rc.verdict(1, tok("a")) as [number, string];
    const b = rc.verdict(2, tok("a")) as [number, string];
    expect(Array.isArray(a) && Array.isArray(b) && a[0] !== b[0]).toBe(true);
    expect(rc.verdict(1, tok("a"))).toBe(a[0]); // held: the id alone; A is now the most recent
    const c = rc.verdict(3, tok("a")) as [number, string]; // evicts B, the least recently used
    expect(Array.isArray(c)).toBe(true);
    expect(rc.verdict(1, tok("a"))).toBe(a[0]);
    expect(rc.verdict(2, tok("a"))).toEqual(b); // evicted: the same id with its bits again (evicts C)
    expect(Array.isArray(rc.verdict(3, tok("a")))).toBe(true);
  });
});
