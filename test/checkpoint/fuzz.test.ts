/**
 * Fuzzing the header reader and the checkpoint opener with seeded random mutations of valid files:
 * they may reject (a DsrError), never throw anything else, never hang, and never ask for more bytes
 * than the file has (so a hostile length prefix cannot make them allocate beyond the file).
 */
import { join } from "node:path";
import { readFile, writeFile } from "node:fs/promises";
import { describe, expect, it } from "vitest";
import { DsrError } from "../../src/engine/errors.js";
import { readHeader } from "../../src/engine/tensors/read.js";
import type { ByteSource } from "../../src/engine/tensors/source.js";
import { openCheckpoint, openLocalSource, parseIndex } from "../../src/engine/checkpoint/index.js";
import { mulberry32, writeTinyCheckpoint } from "../support/fixtures.js";
import { tempDir } from "../support/tmp.js";

const root = await tempDir("dsr-fuzz-");

/** An in-memory ByteSource that records the largest single read asked of it. */
class MemSource implements ByteSource {
  maxRead = 0;
  constructor(readonly bytes: Uint8Array, readonly name = "fuzz.safetensors") {}
  async size() {
    return this.bytes.byteLength;
  }
  async read(start: number, length: number) {
    this.maxRead = Math.max(this.maxRead, length);
    if (length > this.bytes.byteLength) throw new Error(`read of ${length} bytes from a ${this.bytes.byteLength}-byte file`);
    return this.bytes.subarray(start, start + length);
  }
}

type Mutator = (b: Uint8Array, r: () => number, headerEnd: number) => Uint8Array;
const pick = (r: () => number, n: number) => Math.floor(r() * n);
const inHeader = (r: () => number, end: number) => pick(r, Math.max(1, end));
// Mutators may run on an already-truncated file: they must stay within it.
const JSON_TOKENS = ['"', "{", "}", "[", "]", ",", ":", "-1", "1e308", "null", '"F8_E4M3"', '"__metadata__"', "18446744073709551615", "\\u0000", "9007199254740993"];
const MUTATORS: Mutator[] = [
  (b, r, e) => { const c = Uint8Array.from(b); c[inHeader(r, Math.min(e, b.byteLength))] ^= 1 << pick(r, 8); return c; }, // bit flip
  (b, r, e) => { const c = Uint8Array.from(b); c[inHeader(r, Math.min(e, b.byteLength))] = pick(r, 256); return c; }, // byte set
  (b, r) => b.subarray(0, pick(r, b.byteLength)), // truncate
  (b, r) => { if (b.byteLength < 8) return b; const c = Uint8Array.from(b); new DataView(c.buffer).setBigUint64(0, BigInt(Math.floor(r() * 2 ** 52)) * BigInt(pick(r, 4096) + 1), true); return c; }, // hostile length
  (b, r) => { if (b.byteLength < 8) return b; const c = Uint8Array.from(b); new DataView(c.buffer).setBigUint64(0, BigInt(pick(r, b.byteLength + 64)), true); return c; }, // plausible length
  (b, r, e) => { // splice a JSON token into the header
    const lim = Math.min(e, b.byteLength);
    if (lim <= 8) return b;
    const at = 8 + pick(r, lim - 8);
    const tok = Buffer.from(JSON_TOKENS[pick(r, JSON_TOKENS.length)]);
    const c = new Uint8Array(b.byteLength);
    c.set(b.subarray(0, at));
    c.set(tok.subarray(0, b.byteLength - at), at);
    c.set(b.subarray(at, b.byteLength - tok.byteLength), at + tok.byteLength);
    return c;
  },
  (b, r, e) => { // replace a digit run (shapes/offsets) with a random number
    const text = Buffer.from(b.subarray(8, Math.min(e, b.byteLength))).toString("latin1");
    const runs = [...text.matchAll(/\d+/g)];
    if (!runs.length) return b;
    const m = runs[pick(r, runs.length)];
    const n = String([0, 1, 2 ** 31, 2 ** 53, pick(r, 1e6)][pick(r, 5)]).slice(0, m[0].length).padStart(m[0].length, "0");
    const c = Uint8Array.from(b);
    c.set(Buffer.from(n, "latin1"), 8 + m.index!);
    return c;
  },
  (b, r) => { const extra = new Uint8Array(pick(r, 64)); const c = new Uint8Array(b.byteLength + extra.byteLength); c.set(b); return c; }, // trailing bytes
];

describe("header reader fuzz", () => {
  it("3000 seeded mutations: valid parse or DsrError, bounded reads, no hang", async () => {
    const ck = await writeTinyCheckpoint(join(root, "seed"), "deepseek-v3-fp8", { shards: 1 });
    const good = new Uint8Array(await readFile(join(ck.dir, "model.safetensors")));
    const headerEnd = 8 + Number(new DataView(good.buffer).getBigUint64(0, true));
    const r = mulberry32(20261122);
    const outcomes = { ok: 0, rejected: 0 };
    const codes = new Set<string>();
    const t0 = Date.now();
    for (let i = 0; i < 3000; i++) {
      let bytes: Uint8Array = good;
      for (let k = 1 + pick(r, 3); k > 0; k--) bytes = MUTATORS[pick(r, MUTATORS.length)](bytes, r, headerEnd);
      const src = new MemSource(bytes);
      for (const speculativeBytes of [0, 4096]) {
        const started = Date.now();
        try {
          const res = await readHeader(src, { speculativeBytes });
          expect(res.header.dataStart + res.header.dataSize).toBe(bytes.byteLength);
          outcomes.ok++;
        } catch (e) {
          if (!(e instanceof DsrError)) throw new Error(`mutation ${i}: ${(e as Error).stack}`);
          expect(e.message.length).toBeGreaterThan(0);
          codes.add(e.code);
          outcomes.rejected++;
        }
        expect(Date.now() - started).toBeLessThan(2000);
        expect(src.maxRead).toBeLessThanOrEqual(bytes.byteLength);
      }
    }
    expect(outcomes.rejected).toBeGreaterThan(1000);
    expect(outcomes.ok).toBeGreaterThan(0); // some mutations (padding, metadata) stay valid
    expect([...codes]).toEqual(expect.arrayContaining(["DSR_ST_INVALID_HEADER", "DSR_ST_HEADER_TOO_LARGE", "DSR_ST_INVALID_HEADER_LENGTH", "DSR_ST_INCOMPLETE_BUFFER"]));
    expect(Date.now() - t0).toBeLessThan(45_000);
  });

  it("openCheckpoint turns any mutated shard into findings, never a crash (200 mutations)", async () => {
    const ck = await writeTinyCheckpoint(join(root, "open"), "qwen2");
    const file = join(ck.dir, ck.shards[0].file);
    const good = new Uint8Array(await readFile(file));
    const headerEnd = 8 + Number(new DataView(good.buffer).getBigUint64(0, true));
    const r = mulberry32(7);
    for (let i = 0; i < 200; i++) {
      await writeFile(file, Buffer.from(MUTATORS[pick(r, MUTATORS.length)](good, r, headerEnd)));
      const got = await openCheckpoint(await openLocalSource(ck.dir));
      for (const f of got.findings) expect(f.message).toBeTypeOf("string");
      expect(got.shards).toHaveLength(2);
    }
  });

  it("index parser: 1000 mutations of a real index parse or reject with DsrError", async () => {
    const ck = await writeTinyCheckpoint(join(root, "index"), "deepseek-v3-fp8");
    const good = new Uint8Array(await readFile(join(ck.dir, "model.safetensors.index.json")));
    const r = mulberry32(99);
    let rejected = 0;
    for (let i = 0; i < 1000; i++) {
      const b = MUTATORS[[0, 1, 2, 5, 6][pick(r, 5)]](good, r, good.byteLength);
      try {
        const idx = parseIndex(b);
        for (const f of idx.weightMap.values()) expect(f.includes("..")).toBe(false);
      } catch (e) {
        if (!(e instanceof DsrError)) throw e;
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(100);
    const evil = JSON.stringify({ weight_map: { "a.weight": "../../etc/passwd" } });
    expect(() => parseIndex(Buffer.from(evil))).toThrow(/invalid shard name/);
  });
});
