/**
 * The torch worker's framing (docs/worker-protocol.md): any cut of a frame stream into reads gives the
 * same messages; a bad frame (not JSON, not an object with a string type, over the size limit) is
 * DSR_WORKER_PROTOCOL, never a crash or a silently dropped message.
 */
import { describe, expect, it } from "vitest";
import { encodeFrame, FrameReader, MAX_FRAME } from "../../src/engine/runtime/torch/frames.js";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";

const frameOf = (body: Buffer) => Buffer.concat([Buffer.from([body.length >>> 24, (body.length >>> 16) & 255, (body.length >>> 8) & 255, body.length & 255]), body]);

describe("torch worker frames", () => {
  it("round-trips messages through any cut of the stream", () => {
    const r = seededRandom(7);
    for (let trial = 0; trial < 200; trial++) {
      const msgs = Array.from({ length: 1 + Math.floor(r() * 6) }, (_, i) => ({ type: "chunk", id: i, chunk: { ids: Array.from({ length: Math.floor(r() * 5) }, () => Math.floor(r() * 152000)) }, note: "é\u2028\"\\".repeat(Math.floor(r() * 3)) }));
      const stream = Buffer.concat(msgs.map(encodeFrame));
      const reader = new FrameReader();
      const got: unknown[] = [];
      for (let at = 0; at < stream.length; ) {
        const n = 1 + Math.floor(r() * 40);
        got.push(...reader.push(stream.subarray(at, at + n)));
        at += n;
      }
      expect(got).toEqual(msgs);
    }
  });

  it("refuses frames that are not JSON objects with a string type, and frames over the limit", () => {
    const bad = [Buffer.from("{not json"), Buffer.from("[1,2]"), Buffer.from('{"type":3}'), Buffer.from("null"), Buffer.from([0xff, 0xfe])];
    for (const body of bad) expect(() => new FrameReader().push(frameOf(body)), body.toString()).toThrow(expect.objectContaining({ code: "DSR_WORKER_PROTOCOL" }));
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(MAX_FRAME + 1);
    expect(() => new FrameReader().push(huge)).toThrow(/exceeds/);
  });

  it("fuzz: random bytes either parse as frames or throw DSR_WORKER_PROTOCOL", () => {
    const r = seededRandom(11);
    for (let trial = 0; trial < 500; trial++) {
      const base = encodeFrame({ type: "stats", stats: { running: 1 } });
      const b = Buffer.from(base);
      for (let k = 0; k < 1 + Math.floor(r() * 4); k++) b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
      try {
        for (const m of new FrameReader().push(b)) expect(typeof m.type).toBe("string");
      } catch (e) {
        expect((e as { code?: string }).code).toBe("DSR_WORKER_PROTOCOL");
      }
    }
  });
});
