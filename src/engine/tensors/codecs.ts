/**
 * Element codecs between f32 and the 16- and 8-bit float formats of checkpoints.
 * Decoding is exact (every bf16/f16/fp8 value is an f32 value); encoding rounds to nearest-even,
 * keeps NaN a NaN, saturates nothing (overflow becomes ±Inf where the target has Inf; e4m3fn has
 * none, so it becomes NaN as torch does), and produces subnormals where the target has them.
 * All functions assume a little-endian host (checked once below) because safetensors data is LE.
 */
import { endianness } from "node:os";
import type { FloatCodecDtype } from "./dtypes.js";

if (endianness() !== "LE") throw new Error("dsr needs a little-endian CPU: safetensors data is little-endian");

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export function f32Bits(x: number): number {
  f32[0] = x;
  return u32[0];
}
export function bitsToF32(b: number): number {
  u32[0] = b >>> 0;
  return f32[0];
}

// ---- bf16 ----
export function bf16ToF32(h: number): number {
  return bitsToF32((h & 0xffff) << 16);
}
export function f32ToBf16(x: number): number {
  const b = f32Bits(x);
  if ((b & 0x7fffffff) > 0x7f800000) return ((b >>> 16) & 0xffff) | 0x0040; // quiet NaN, sign kept
  return ((b + 0x7fff + ((b >>> 16) & 1)) >>> 16) & 0xffff;
}

// ---- f16 ----
export function f16ToF32(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}
export function f32ToF16(x: number): number {
  const b = f32Bits(x);
  const sign = (b >>> 16) & 0x8000;
  const exp = (b >>> 23) & 0xff;
  let mant = b & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  // Unbiased exponent relative to f16's bias.
  const e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    mant |= 0x800000;
    const shift = 14 - e; // 14..24
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let r = mant >>> shift;
    if (rest > half || (rest === half && r & 1)) r++;
    return sign | r; // r may carry into the smallest normal, which is the right encoding
  }
  let r = (e << 10) | (mant >>> 13);
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && r & 1)) r++; // may carry into Inf: correct
  return sign | r;
}

// ---- fp8 ----
function decodeFp8(code: number, expBits: number, mantBits: number, bias: number, fn: boolean): number {
  const s = code & 0x80 ? -1 : 1;
  const e = (code >> mantBits) & ((1 << expBits) - 1);
  const m = code & ((1 << mantBits) - 1);
  const maxE = (1 << expBits) - 1;
  if (fn) {
    if (e === maxE && m === (1 << mantBits) - 1) return NaN; // e4m3fn: only S.1111.111 is NaN, no Inf
  } else if (e === maxE) {
    return m ? NaN : s * Infinity;
  }
  if (e === 0) return s * (m / (1 << mantBits)) * 2 ** (1 - bias);
  return s * (1 + m / (1 << mantBits)) * 2 ** (e - bias);
}
export function e4m3ToF32(code: number): number {
  return decodeFp8(code & 0xff, 4, 3, 7, true);
}
export function e5m2ToF32(code: number): number {
  return decodeFp8(code & 0xff, 5, 2, 15, false);
}

/** Lookup tables: decoding 8- and 16-bit codes is a table read. */
export const E4M3_TABLE = Float32Array.from({ length: 256 }, (_, i) => e4m3ToF32(i));
export const E5M2_TABLE = Float32Array.from({ length: 256 }, (_, i) => e5m2ToF32(i));
let f16Table: Float32Array | undefined;
function f16Lut(): Float32Array {
  return (f16Table ??= Float32Array.from({ length: 65536 }, (_, i) => f16ToF32(i)));
}

/** f32 → nearest e4m3fn code (RNE); overflow beyond 448 (after rounding) gives NaN like torch's cast. */
export function f32ToE4m3(x: number): number {
  return encodeFp8(x, E4M3_TABLE, 0x7f);
}
export function f32ToE5m2(x: number): number {
  return encodeFp8(x, E5M2_TABLE, 0x7c);
}
// Encoding by search over the 128 positive codes keeps this obviously correct; fp8 encoding is only
// used by tests and fixture generation, never on a hot path.
function encodeFp8(x: number, table: Float32Array, infOrNanCode: number): number {
  if (Number.isNaN(x)) return 0x7f;
  const sign = x < 0 || Object.is(x, -0) ? 0x80 : 0;
  const a = Math.abs(x);
  let best = 0;
  for (let c = 1; c < 0x80; c++) {
    const v = table[c];
    if (!Number.isFinite(v)) break;
    const d = Math.abs(v - a);
    const bd = Math.abs(table[best] - a);
    if (d < bd || (d === bd && (c & 1) === 0 && (best & 1) === 1)) best = c;
    if (v > a) break;
  }
  const maxFinite = table[infOrNanCode - 1];
  const nextUlp = maxFinite - table[infOrNanCode - 2];
  if (a >= maxFinite + nextUlp / 2 && !(a === maxFinite + nextUlp / 2 && ((infOrNanCode - 1) & 1) === 0)) {
    return sign | infOrNanCode;
  }
  return sign | best;
}

/** Decode a whole buffer of `dtype` elements into f32 (out.length elements). */
export function decodeToF32(dtype: FloatCodecDtype, src: Uint8Array, out: Float32Array): void {
  const n = out.length;
  switch (dtype) {
    case "F32":
      new Uint8Array(out.buffer, out.byteOffset, n * 4).set(src.subarray(0, n * 4));
      return;
    case "BF16": {
      const h = u16View(src, n);
      const o = new Uint32Array(out.buffer, out.byteOffset, n);
      for (let i = 0; i < n; i++) o[i] = h[i] << 16;
      return;
    }
    case "F16": {
      const h = u16View(src, n);
      const t = f16Lut();
      for (let i = 0; i < n; i++) out[i] = t[h[i]];
      return;
    }
    case "F8_E4M3":
      for (let i = 0; i < n; i++) out[i] = E4M3_TABLE[src[i]];
      return;
    case "F8_E5M2":
      for (let i = 0; i < n; i++) out[i] = E5M2_TABLE[src[i]];
      return;
  }
}

/** Encode f32 values into `dtype` bytes (out.byteLength = n × width). */
export function encodeFromF32(dtype: FloatCodecDtype, src: Float32Array, out: Uint8Array): void {
  const n = src.length;
  switch (dtype) {
    case "F32":
      out.set(new Uint8Array(src.buffer, src.byteOffset, n * 4));
      return;
    case "BF16": {
      const o = u16Out(out, n);
      const b = new Uint32Array(src.buffer, src.byteOffset, n);
      for (let i = 0; i < n; i++) {
        const x = b[i];
        o[i] = (x & 0x7fffffff) > 0x7f800000 ? (x >>> 16) | 0x40 : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
      }
      return;
    }
    case "F16": {
      const o = u16Out(out, n);
      for (let i = 0; i < n; i++) o[i] = f32ToF16(src[i]);
      return;
    }
    case "F8_E4M3":
      for (let i = 0; i < n; i++) out[i] = f32ToE4m3(src[i]);
      return;
    case "F8_E5M2":
      for (let i = 0; i < n; i++) out[i] = f32ToE5m2(src[i]);
      return;
  }
}

function u16Out(b: Uint8Array, n: number): Uint16Array {
  if (b.byteOffset % 2 !== 0) throw new Error("encodeFromF32: output buffer must be 2-byte aligned");
  return new Uint16Array(b.buffer, b.byteOffset, n);
}

/** A Uint16Array over bytes; copies when the bytes are not 2-aligned (Node Buffers from pools may not be). */
export function u16View(b: Uint8Array, n: number): Uint16Array {
  if (b.byteOffset % 2 === 0) return new Uint16Array(b.buffer, b.byteOffset, n);
  const c = new Uint8Array(n * 2);
  c.set(b.subarray(0, n * 2));
  return new Uint16Array(c.buffer, 0, n);
}
