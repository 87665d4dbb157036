/**
 * Independent scalar references for the convert tests, written from the format definitions and
 * sharing no code with src/engine/tensors/codecs.ts or src/engine/transform/kernels.ts.
 */
const dv = new DataView(new ArrayBuffer(4));
export function bitsOf(x: number): number {
  dv.setFloat32(0, x, true);
  return dv.getUint32(0, true);
}
export function fromBits(b: number): number {
  dv.setUint32(0, b >>> 0, true);
  return dv.getFloat32(0, true);
}

/** float8_e4m3fn: bias 7, no Inf, S.1111.111 is NaN, subnormals 0.mmm × 2^-6. Returns NaN for NaN. */
export function refE4m3(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const exp = (code >> 3) & 0xf;
  const man = code & 7;
  if (exp === 15 && man === 7) return NaN;
  if (exp === 0) return sign * (man / 8) * Math.pow(2, -6);
  return sign * (1 + man / 8) * Math.pow(2, exp - 7);
}
/** float8_e5m2: IEEE-like, bias 15, Inf and NaN at exponent 31. */
export function refE5m2(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const exp = (code >> 2) & 0x1f;
  const man = code & 3;
  if (exp === 31) return man ? NaN : sign * Infinity;
  if (exp === 0) return sign * (man / 4) * Math.pow(2, -14);
  return sign * (1 + man / 4) * Math.pow(2, exp - 15);
}

/** f32 bits → bf16 bits, round half to even; NaN → quiet NaN with the same sign. */
export function refBf16(x32bits: number): number {
  const b = x32bits >>> 0;
  const sign = b >>> 31;
  if ((b & 0x7fffffff) > 0x7f800000) return (sign << 15) | 0x7fc0;
  let hi = b >>> 16;
  const lo = b & 0xffff;
  if (lo > 0x8000 || (lo === 0x8000 && (hi & 1) === 1)) hi += 1;
  return hi & 0xffff;
}

/** The expected BF16 bits of one dequantised FP8 element, straight from the definition. */
export function refDequantBf16(code: number, scale: number): number {
  const v = refE4m3(code);
  if (Number.isNaN(v)) return code & 0x80 ? 0xffc0 : 0x7fc0;
  return refBf16(bitsOf(Math.fround(Math.fround(v) * Math.fround(scale))));
}

/** All finite f16 values, sorted, for nearest-even search (f16 from its bit fields). */
function f16Value(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 31) return m ? NaN : s * Infinity;
  return e === 0 ? s * m * Math.pow(2, -24) : s * (1 + m / 1024) * Math.pow(2, e - 15);
}
const POS_F16: { v: number; h: number }[] = [];
for (let h = 0; h < 0x7c00; h++) POS_F16.push({ v: f16Value(h), h });

/** f32 value → f16 bits by searching the nearest representable value, ties to the even code. */
export function refF16(x: number, xbits = bitsOf(x)): number {
  const sign = xbits >>> 31 ? 0x8000 : 0;
  if (Number.isNaN(x)) return sign | 0x7e00;
  const a = Math.abs(x);
  const max = 65504;
  // Beyond max + half an ulp (2^4 at the top binade) rounds to Inf; exactly half rounds to even = Inf (max is odd).
  if (a >= max + 16) return sign | 0x7c00;
  let lo = 0;
  let hi = POS_F16.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (POS_F16[mid].v <= a) lo = mid;
    else hi = mid - 1;
  }
  const below = POS_F16[lo];
  const above = POS_F16[lo + 1];
  if (!above || below.v === a) return sign | below.h;
  const db = a - below.v;
  const da = above.v - a;
  if (db < da) return sign | below.h;
  if (da < db) return sign | above.h;
  return sign | ((below.h & 1) === 0 ? below.h : above.h);
}
