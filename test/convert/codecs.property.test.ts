/**
 * Property tests of the codecs and convert kernels against the independent references in
 * reference.ts: every fp8 code, every 16-bit code, and random plus edge f32 values.
 */
import { describe, expect, it } from "vitest";
import { bf16ToF32, e4m3ToF32, e5m2ToF32, f16ToF32, f32ToBf16, f32ToF16 } from "../../src/engine/tensors/codecs.js";
import { buildDequantLut, castElements, dequantBlockRow } from "../../src/engine/transform/kernels.js";
import { WasmDequant } from "../../src/engine/transform/wasm-kernel.js";
import { bitsOf, fromBits, refBf16, refDequantBf16, refE4m3, refE5m2, refF16 } from "./reference.js";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";

/** Deterministic PRNG (mulberry32) so failures reproduce. */
const rng = seededRandom;

/** Big loops compare through this and assert once: 65k per-element expect() calls cost seconds. */
class Mismatches {
  n = 0;
  first: string[] = [];
  eq(got: unknown, want: unknown, what: number | string): void {
    if (got === want) return;
    if (this.first.length < 5) this.first.push(`${what}: got ${got}, want ${want}`);
    this.n++;
  }
  none(): void {
    expect(this.first).toEqual([]);
    expect(this.n).toBe(0);
  }
}

/** Edge f32 bit patterns: zeros, subnormals, normals at every boundary, halfway points, Inf, NaNs. */
const EDGE_BITS = [
  0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007fffff, 0x00800000, 0x3f800000, 0xbf800000, 0x7f7fffff, 0xff7fffff,
  0x7f800000, 0xff800000, 0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff,
  0x3f808000, 0x3f818000, 0x3f807fff, 0x3f808001, // bf16 ties (even down / odd up) and near-ties
  0x7f7f8000, 0x7f7fffff, 0x477fe000, 0x477ff000, 0x477fefff, 0x477fffff, // f16 max, its halfway to Inf
  0x38800000, 0x387fe000, 0x33800000, 0x33000000, 0x33000001, 0x33c00000, 0x337fffff, // f16 min normal/subnormal, halfway to 0
];

describe("fp8 codes", () => {
  it("all 256 e4m3fn codes decode as the definition says (incl. subnormals, ±0, NaN)", () => {
    for (let c = 0; c < 256; c++) {
      const want = refE4m3(c);
      const got = e4m3ToF32(c);
      if (Number.isNaN(want)) expect(got).toBeNaN();
      else expect(Object.is(got, want)).toBe(true);
    }
    expect([...Array(256).keys()].filter((c) => Number.isNaN(refE4m3(c)))).toEqual([0x7f, 0xff]);
  });
  it("all 256 e5m2 codes decode as the definition says (incl. Inf and NaN)", () => {
    for (let c = 0; c < 256; c++) {
      const want = refE5m2(c);
      const got = e5m2ToF32(c);
      if (Number.isNaN(want)) expect(got).toBeNaN();
      else expect(Object.is(got, want)).toBe(true);
    }
  });
  it("the dequant table equals the per-element definition for every code and many scales", () => {
    const r = rng(1);
    const scales = [1, 0.5, 2 ** -20, 3.1e-5, 448, 1e30, 1e-30, -0.75, 0, Infinity, NaN];
    for (let i = 0; i < 200; i++) scales.push(fromBits((r() * 2 ** 32) >>> 0));
    const lut = new Uint16Array(256);
    for (const s of scales) {
      const sf = Math.fround(s);
      buildDequantLut("BF16", sf, lut);
      for (let c = 0; c < 256; c++) {
        const want = refDequantBf16(c, sf);
        // NaN products (0 × Inf, NaN scale) compare as "some NaN": their payload is not specified.
        if ((want & 0x7fff) > 0x7f80 || (lut[c] & 0x7fff) > 0x7f80) expect([(want & 0x7fff) > 0x7f80, (lut[c] & 0x7fff) > 0x7f80]).toEqual([true, true]);
        else expect(lut[c]).toBe(want);
      }
    }
  });
  it("dequantBlockRow applies the right scale to partial edge blocks, word-wide and byte-wide paths, every target", () => {
    const r = rng(2);
    for (const cols of [300, 301]) {
      // 300: blocks of 128, 128, 44 on the 4-codes-per-load path; 301: the byte-by-byte path.
      const rows = 3;
      const src = new Uint8Array(rows * cols);
      for (let i = 0; i < src.length; i++) src[i] = (r() * 256) | 0;
      const scaleRow = Float32Array.from([0.25, 3, 1e-3]);
      const block = (i: number) => scaleRow[Math.floor((i % cols) / 128)];
      const product = (i: number) => Math.fround(refE4m3(src[i]) * block(i));
      const nan = (i: number) => Number.isNaN(refE4m3(src[i]));
      const sign = (i: number) => (src[i] & 0x80 ? 1 : 0);
      const bf = new Uint8Array(rows * cols * 2);
      dequantBlockRow("BF16", src, rows, cols, scaleRow, bf);
      const obf = new Uint16Array(bf.buffer);
      const m = new Mismatches();
      for (let i = 0; i < src.length; i++) m.eq(obf[i], refDequantBf16(src[i], block(i)), `bf16 ${i}`);
      const h = new Uint8Array(rows * cols * 2);
      dequantBlockRow("F16", src, rows, cols, scaleRow, h);
      const oh = new Uint16Array(h.buffer);
      for (let i = 0; i < src.length; i++) m.eq(oh[i], nan(i) ? (sign(i) << 15) | 0x7e00 : refF16(product(i)), `f16 ${i}`);
      const f = new Uint8Array(rows * cols * 4);
      dequantBlockRow("F32", src, rows, cols, scaleRow, f);
      const of = new Uint32Array(f.buffer);
      for (let i = 0; i < src.length; i++) m.eq(of[i], nan(i) ? (sign(i) ? 0xffc00000 : 0x7fc00000) : bitsOf(product(i)), `f32 ${i}`);
      m.none();
    }
  });
});

describe("wasm dequant kernel", () => {
  it("matches the reference on partial edge blocks and the JS kernel on an R1-sized block-row, BF16 and F16", () => {
    const r = rng(5);
    const w = new WasmDequant();
    expect(WasmDequant.supports("BF16", 300)).toBe(true);
    expect(WasmDequant.supports("BF16", 301)).toBe(false);
    expect(WasmDequant.supports("F32", 300)).toBe(false);
    for (const [rows, cols] of [[3, 300], [128, 7168], [77, 2052], [1, 4]]) {
      const nb = Math.ceil(cols / 128);
      const scaleRow = Float32Array.from({ length: nb }, () => fromBits(((r() * 0x1000000) | 0) + 0x38000000)); // scales in [2^-15, 2^-13)
      for (const to of ["BF16", "F16"] as const) {
        const { src, out } = w.prepare(rows, cols);
        for (let i = 0; i < src.length; i++) src[i] = (r() * 256) | 0;
        w.run(to, rows, cols, scaleRow);
        const js = new Uint8Array(rows * cols * 2);
        dequantBlockRow(to, src, rows, cols, scaleRow, js);
        expect(Buffer.compare(Buffer.from(out), Buffer.from(js)), `${to} ${rows}x${cols}`).toBe(0);
        if (to === "BF16" && rows === 3) {
          const o = new Uint16Array(out.buffer, out.byteOffset, rows * cols);
          const m = new Mismatches();
          for (let i = 0; i < src.length; i++) m.eq(o[i], refDequantBf16(src[i], scaleRow[Math.floor((i % cols) / 128)]), i);
          m.none();
        }
      }
    }
  });
});

describe("16-bit codecs", () => {
  it("every bf16 and f16 code decodes exactly and re-encodes to itself (NaNs stay NaN)", () => {
    const m = new Mismatches();
    for (let h = 0; h < 65536; h++) {
      const b = bf16ToF32(h);
      m.eq(bitsOf(b) >>> 16 === h || Number.isNaN(b), true, `bf16 ${h}`);
      const f = f16ToF32(h);
      if (Number.isNaN(f)) m.eq(f32ToF16(f) & 0x7c00, 0x7c00, `f16 NaN ${h}`);
      else m.eq(f32ToF16(f), h, `f16 ${h}`);
    }
    m.none();
  });
  it("f32 → bf16 and f32 → f16 round to nearest even on edge and random values", () => {
    const r = rng(3);
    const bits = [...EDGE_BITS];
    for (let i = 0; i < 20000; i++) bits.push((r() * 2 ** 32) >>> 0);
    // Values clustered in f16's range, where its rounding and subnormals matter.
    for (let i = 0; i < 20000; i++) bits.push(bitsOf(Math.fround((r() - 0.5) * 2 ** (((r() * 44) | 0) - 28))));
    const m = new Mismatches();
    for (const b of bits) {
      const x = fromBits(b);
      const bf = f32ToBf16(x);
      if (Number.isNaN(x)) m.eq((bf & 0x7fff) > 0x7f80, true, `bf16 of ${b.toString(16)}`);
      else m.eq(bf, refBf16(b), `bf16 of ${b.toString(16)}`);
      const h = f32ToF16(x);
      if (Number.isNaN(x)) m.eq((h & 0x7fff) > 0x7c00, true, `f16 of ${b.toString(16)}`);
      else m.eq(h, refF16(x, b), `f16 of ${b.toString(16)}`);
    }
    m.none();
  });
});

describe("convert cast kernels", () => {
  const r = rng(4);
  const n = 4096;
  const f32 = new Uint32Array(n);
  EDGE_BITS.forEach((b, i) => (f32[i] = b));
  for (let i = EDGE_BITS.length; i < n; i++) f32[i] = (r() * 2 ** 32) >>> 0;
  const f32Bytes = new Uint8Array(f32.buffer);

  it("F32 → BF16 / F16 match the references element by element, NaN signs kept", () => {
    const out = new Uint8Array(n * 2);
    castElements("F32", "BF16", f32Bytes, n, out);
    const o = new Uint16Array(out.buffer);
    const m = new Mismatches();
    for (let i = 0; i < n; i++) {
      // A NaN stays a NaN of the same sign (its payload is not specified; torch canonicalises it).
      if (Number.isNaN(fromBits(f32[i]))) m.eq(`${(o[i] & 0x7fff) > 0x7f80} ${o[i] >>> 15}`, `true ${f32[i] >>> 31}`, `bf16 NaN ${i}`);
      else m.eq(o[i], refBf16(f32[i]), `bf16 ${i}`);
    }
    castElements("F32", "F16", f32Bytes, n, out);
    for (let i = 0; i < n; i++) {
      const x = fromBits(f32[i]);
      m.eq(o[i], Number.isNaN(x) ? ((f32[i] >>> 16) & 0x8000) | 0x7e00 : refF16(x, f32[i]), `f16 ${i}`);
    }
    m.none();
  });
  it("every BF16 and F16 code casts to the other and to F32 as the references say", () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const src = new Uint8Array(all.buffer);
    const out16 = new Uint8Array(65536 * 2);
    const o16 = new Uint16Array(out16.buffer);
    const out32 = new Uint8Array(65536 * 4);
    const o32 = new Uint32Array(out32.buffer);
    castElements("BF16", "F16", src, 65536, out16);
    castElements("BF16", "F32", src, 65536, out32);
    const mm = new Mismatches();
    for (let h = 0; h < 65536; h++) {
      const x = fromBits(h << 16);
      mm.eq(o16[h], Number.isNaN(x) ? (h & 0x8000) | 0x7e00 : refF16(x, h << 16), `bf16→f16 ${h}`);
      mm.eq(o32[h], (h << 16) >>> 0, `bf16→f32 ${h}`); // widening is exact, NaN payloads included
    }
    castElements("F16", "BF16", src, 65536, out16);
    castElements("F16", "F32", src, 65536, out32);
    for (let h = 0; h < 65536; h++) {
      const e = (h >> 10) & 31;
      const m = h & 1023;
      const isNaN = e === 31 && m !== 0;
      const x = isNaN ? NaN : (h & 0x8000 ? -1 : 1) * (e === 0 ? m * 2 ** -24 : e === 31 ? Infinity : (1 + m / 1024) * 2 ** (e - 15));
      // f16 → f32 is exact; f16 → bf16 rounds (f16 has 3 more mantissa bits).
      if (isNaN) {
        mm.eq(o16[h], (h & 0x8000) | 0x7fc0, `f16→bf16 ${h}`);
        mm.eq(o32[h], h & 0x8000 ? 0xffc00000 : 0x7fc00000, `f16→f32 ${h}`);
      } else {
        mm.eq(o16[h], refBf16(bitsOf(x)), `f16→bf16 ${h}`);
        mm.eq(o32[h], bitsOf(x), `f16→f32 ${h}`);
      }
    }
    mm.none();
  });
  it("F8_E5M2 (no scale) casts to BF16 exactly", () => {
    const src = new Uint8Array(256).map((_, i) => i);
    const out = new Uint8Array(512);
    castElements("F8_E5M2", "BF16", src, 256, out);
    const o = new Uint16Array(out.buffer);
    for (let c = 0; c < 256; c++) {
      const v = refE5m2(c);
      expect(o[c]).toBe(Number.isNaN(v) ? (c & 0x80 ? 0xffc0 : 0x7fc0) : refBf16(bitsOf(v)));
    }
  });
});
