/**
 * The ONNX graph dsr builds reproduces PyTorch/transformers on tiny-r1 (reference.json): last-position
 * logits within the stated tolerance, top-1 at every position exact, greedy continuation identical —
 * through the engine's own session (shared KV buffer), in one prefill and in chunks.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { readManifest } from "../../src/engine/onnx/build.js";
import { DecoderSession } from "../../src/engine/runtime/embedded/decoder-session.js";
import { buildTiny, TINY_R1 } from "./support.js";

interface RefCase { prompt: string; input_ids: number[]; last_logits: number[]; top5_ids: number[][]; greedy_64: number[] }
const ref = JSON.parse(readFileSync(join(TINY_R1, "reference.json"), "utf8")) as { tolerance: { max_abs_logit_diff: number }; cases: RefCase[] };
const argmax = (x: Float32Array, off = 0, n = x.length) => {
  let b = 0;
  for (let i = 1; i < n; i++) if (x[off + i]! > x[off + b]!) b = i;
  return b;
};

describe("tiny-r1 fp32 ONNX vs PyTorch reference", () => {
  let session: DecoderSession;
  beforeAll(async () => {
    const dir = await buildTiny("fp32");
    session = await DecoderSession.open(dir, (await readManifest(dir))!, { threads: 2, maxBatch: 2, maxContext: 256 });
  });

  for (const [i, c] of ref.cases.entries()) {
    it(`case ${i}: logits, per-position top-1, chunked prefill and greedy 64 tokens`, async () => {
      const S = c.input_ids.length;
      const V = session.vocab;
      session.fit(S + 64, [0]);
      const all = await session.run(0, [c.input_ids], [0], S);
      const last = all.subarray((S - 1) * V, S * V);
      let maxDiff = 0;
      for (let j = 0; j < V; j++) maxDiff = Math.max(maxDiff, Math.abs(last[j]! - c.last_logits[j]!));
      expect(maxDiff).toBeLessThanOrEqual(ref.tolerance.max_abs_logit_diff);
      for (let p = 0; p < S; p++) expect(argmax(all, p * V, V), `position ${p}`).toBe(c.top5_ids[p]![0]);

      // Greedy decode, one token at a time, through the shared cache.
      const out: number[] = [argmax(last)];
      for (let t = 1; t < 64; t++) out.push(argmax(await session.run(0, [[out[t - 1]!]], [S + t - 1])));
      expect(out).toEqual(c.greedy_64);

      // The same prompt prefilled in three chunks into row 1 gives the same last logits.
      const cuts = [0, 5, Math.floor(S / 2), S];
      let chunked: Float32Array = new Float32Array();
      for (let k = 0; k + 1 < cuts.length; k++) chunked = await session.run(1, [c.input_ids.slice(cuts[k], cuts[k + 1])], [cuts[k]!]);
      let chunkDiff = 0;
      for (let j = 0; j < V; j++) chunkDiff = Math.max(chunkDiff, Math.abs(chunked[j]! - c.last_logits[j]!));
      expect(chunkDiff).toBeLessThanOrEqual(ref.tolerance.max_abs_logit_diff);
    });
  }
});
