/**
 * RemoteConstraints (the gateway's half of response_format on the torch worker), on tiny-r1's real
 * tokenizer: the mask of each next draw, sent once then named by id, the shared LRU that mirrors
 * the worker's mask cache, startAfterId, completion, and tokens that were not allowed.
 */
import { beforeAll, describe, expect, it } from "vitest";
import { RemoteConstraints, type MaskRef } from "../../src/engine/runtime/remote-constraints.js";
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
/** The allowed token ids a new mask (`[id, bits]`) names. */
const allowed = (ref: MaskRef | "done" | undefined) => {
  expect(Array.isArray(ref)).toBe(true);
  const bits = Buffer.from((ref as [number, string])[1], "base64");
  return new Set(Array.from({ length: bits.length * 8 }, (_, i) => i).filter((i) => (bits[i >> 3]! >> (i & 7)) & 1));
};

describe("RemoteConstraints", () => {
  it("gives the mask of each next draw, and reports completion", () => {
    const rc = new RemoteConstraints(text.tokenBytes()!, 2048);
    const first = allowed(rc.add(1, { kind: "json_object" }));
    expect(first.has(tok("{"))).toBe(true);
    expect(first.has(tok("a"))).toBe(false);
    expect(first.has(text.eosTokenIds[0]!)).toBe(false);
    const inObject = allowed(rc.accept(1, [tok("{")]));
    expect(inObject.has(tok("}"))).toBe(true);
    expect(inObject.has(tok("{"))).toBe(false);
    expect(rc.accept(1, [tok("}")])).toBe("done");
    expect(() => rc.accept(1, [tok("}")])).toThrow(/does not continue/);
    rc.remove(1);
    expect(rc.accept(1, [tok("a")])).toBeUndefined(); // a request it no longer tracks
  });

  it("gives no mask before startAfterId, then the first state's", () => {
    const rc = new RemoteConstraints(text.tokenBytes()!, 2048);
    expect(rc.add(7, { kind: "json_object", startAfterId: text.thinkEndId })).toBeUndefined();
    expect(rc.accept(7, [tok("a")])).toBeUndefined();
    expect(allowed(rc.accept(7, [text.thinkEndId!])).has(tok("{"))).toBe(true);
  });

  it("sends a mask's bits once, then its id, keeping the worker's LRU: an evicted mask is sent again", () => {
    const rc = new RemoteConstraints(text.tokenBytes()!, 2048, 2);
    const a = rc.add(1, { kind: "json_object" }) as [number, string]; // A: before the value; held [A]
    expect(rc.add(2, { kind: "json_object" })).toBe(a[0]); // the same state: the id alone
    const b = rc.accept(2, [tok("{")]) as [number, string]; // B: after '{'; [A, B]
    expect(b[0]).not.toBe(a[0]);
    expect(rc.add(3, { kind: "json_object" })).toBe(a[0]); // [B, A]
    const c = rc.accept(2, [tok('"')]) as [number, string]; // C: inside a key; evicts B, the least recently used: [A, C]
    expect(Array.isArray(c) && c[0] !== b[0]).toBe(true);
    expect(rc.accept(3, [tok("{")])).toEqual(b); // evicted: the same id with its bits again; evicts A: [C, B]
    expect(rc.add(4, { kind: "json_object" })).toEqual(a);
  });
});
