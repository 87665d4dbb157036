/**
 * The KV cache layout of DecoderSession: growing or shrinking the stride (re-layout of live rows) and
 * moving a sequence to another row leave every cached position intact — the next logits equal those
 * of a session that never re-laid anything out.
 */
import { describe, expect, it } from "vitest";
import { readManifest } from "../../src/engine/onnx/build.js";
import { DecoderSession } from "../../src/engine/runtime/embedded/decoder-session.js";
import { buildTiny } from "./support.js";

const prompts = [
  Array.from({ length: 30 }, (_, i) => 100 + i),
  Array.from({ length: 17 }, (_, i) => 400 + 3 * i),
  Array.from({ length: 25 }, (_, i) => 900 + 7 * i),
];

describe("KV layout", () => {
  it("stride growth, shrink and row moves preserve the cache", async () => {
    const dir = await buildTiny("fp32");
    const m = (await readManifest(dir))!;
    const opts = { threads: 1, maxBatch: 3, maxContext: 512 };
    const a = await DecoderSession.open(dir, m, opts); // re-laid out
    const b = await DecoderSession.open(dir, m, opts); // reference: fixed large stride, no moves
    b.fit(320, [0, 0, 0]);
    expect(b.currentStride).toBe(320);
    const lens = prompts.map((p) => p.length);
    for (const [r, p] of prompts.entries()) {
      await a.run(r, [p], [0]);
      await b.run(r, [p], [0]);
    }
    expect(a.currentStride).toBe(64);
    const step = async (s: DecoderSession, past: number[]) => s.run(0, [[7], [8], [9]], past);
    const V = a.vocab;
    const same = (x: Float32Array, y: Float32Array) => {
      let d = 0;
      for (let i = 0; i < x.length; i++) d = Math.max(d, Math.abs(x[i]! - y[i]!));
      return d;
    };

    a.fit(300, lens); // grow 64 → 320 with three live rows
    expect(a.currentStride).toBe(320);
    expect(same(await step(a, lens), await step(b, lens))).toBeLessThan(1e-5);
    const lens2 = lens.map((l) => l + 1);

    a.fit(40, lens2); // shrink 320 → 64
    expect(a.currentStride).toBe(64);
    const la = await a.run(0, [[11], [12], [13]], lens2);
    const lb = await b.run(0, [[11], [12], [13]], lens2);
    expect(same(la, lb)).toBeLessThan(1e-5);
    const lens3 = lens2.map((l) => l + 1);

    // Row 2 moves to row 0 (as when sequence 0 leaves): its continuation is unchanged.
    a.moveSlot(2, 0, lens3[2]!);
    const moved = await a.run(0, [[21]], [lens3[2]!]);
    const ref = await b.run(2, [[21]], [lens3[2]!]);
    expect(same(moved.subarray(0, V), ref.subarray(0, V))).toBeLessThan(1e-5);
    await a.close();
    await b.close();
  });
});
