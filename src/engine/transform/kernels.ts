/**
 * The arithmetic of convert, on plain buffers (no I/O): DeepSeek FP8 block dequantisation and
 * float casts. Workers and the in-process path both call these, so there is one implementation.
 *
 * FP8 dequant uses a per-block lookup table: inside one 128×128 block every element is
 * `round(e4m3(code) × scale)` for one scale, so the output is a function of the 8-bit code alone.
 * Building 256 entries per block and then doing one table read per element gives exactly the same
 * bits as the per-element definition (same function, evaluated once per code) at a fraction of
 * the cost, with no native addon. The tables are built here; the lookup loop runs here in JS
 * (F32 targets, odd widths) or in wasm-kernel.ts (BF16/F16 targets, 3–4× faster).
 */
import { E4M3_TABLE, bf16ToF32, decodeToF32, encodeFromF32, f16ToF32, f32Bits, f32ToBf16, f32ToF16, u16View } from "../tensors/codecs.js";
import type { FloatCodecDtype } from "../tensors/dtypes.js";

/** Output dtypes convert can produce. */
export type TargetDtype = "BF16" | "F16" | "F32";
export const TARGET_WIDTH: Record<TargetDtype, number> = { BF16: 2, F16: 2, F32: 4 };

/** DeepSeek's weight_block_size (config quantization_config.weight_block_size). */
export const FP8_BLOCK = 128;

/** One f32 product → target bits. NaN keeps its sign and becomes the target's quiet NaN. */
function encodeOne(target: TargetDtype, x: number): number {
  if (target === "BF16") return f32ToBf16(x);
  if (target === "F16") return f32ToF16(x);
  return f32Bits(x);
}

/**
 * Fills `lut[0..256)` with the target encoding of `e4m3(code) × scale` computed in fp32.
 * The product of two f32 values is exact in a double (24+24 bits < 53), so Math.fround gives the
 * correctly rounded fp32 product, the same as an fp32 multiply.
 */
export function buildDequantLut(target: TargetDtype, scale: number, lut: Uint16Array | Uint32Array): void {
  const s = Math.fround(scale);
  for (let c = 0; c < 256; c++) {
    const v = E4M3_TABLE[c];
    if (Number.isNaN(v)) {
      // e4m3fn NaN codes are S.1111.111: keep the sign (a Float32Array would canonicalise it).
      const neg = (c & 0x80) !== 0;
      lut[c] = target === "BF16" ? (neg ? 0xffc0 : 0x7fc0) : target === "F16" ? (neg ? 0xfe00 : 0x7e00) : (neg ? 0xffc00000 : 0x7fc00000) >>> 0;
    } else {
      lut[c] = encodeOne(target, Math.fround(v * s));
    }
  }
}

/**
 * Dequantises rows [row0, row0+rows) of an FP8 weight with `cols` columns.
 * `src` holds those rows' codes (rows × cols bytes); `scaleRow` is the weight_scale_inv row of
 * this 128-row block (⌈cols/128⌉ f32 values); `out` receives rows × cols target elements.
 * Callers pass one block-row (≤128 rows) at a time so a single scale row applies.
 */
export function dequantBlockRow(
  target: TargetDtype,
  src: Uint8Array,
  rows: number,
  cols: number,
  scaleRow: Float32Array,
  out: Uint8Array,
  lutScratch?: Uint16Array | Uint32Array,
): void {
  const nb = Math.ceil(cols / FP8_BLOCK);
  const wide = target === "F32";
  const need = nb * 256;
  const luts = lutScratch && lutScratch.length >= need && (lutScratch instanceof Uint32Array) === wide ? lutScratch : wide ? new Uint32Array(need) : new Uint16Array(need);
  for (let j = 0; j < nb; j++) buildDequantLut(target, scaleRow[j], luts.subarray(j * 256, j * 256 + 256));
  const n = rows * cols;
  if (wide) {
    const o = new Uint32Array(out.buffer, out.byteOffset, n);
    dequantLoop(src, rows, cols, nb, luts, o);
  } else {
    if (out.byteOffset % 2 !== 0) throw new Error("dequantBlockRow: output must be 2-byte aligned");
    const o = new Uint16Array(out.buffer, out.byteOffset, n);
    dequantLoop(src, rows, cols, nb, luts, o);
  }
}

function dequantLoop(src: Uint8Array, rows: number, cols: number, nb: number, luts: Uint16Array | Uint32Array, o: Uint16Array | Uint32Array): void {
  // Fast path: read 4 codes per 32-bit load and write whole 32-bit words (3× faster in V8 than
  // byte-by-byte); needs every row start 4-aligned, which cols % 4 === 0 gives for aligned buffers.
  if (cols % 4 === 0 && src.byteOffset % 4 === 0 && o.byteOffset % 4 === 0) {
    const s32 = new Uint32Array(src.buffer, src.byteOffset, (rows * cols) >> 2);
    if (o instanceof Uint16Array) wordLoop16(s32, rows, cols, nb, luts as Uint16Array, new Uint32Array(o.buffer, o.byteOffset, (rows * cols) >> 1));
    else wordLoop32(s32, rows, cols, nb, luts as Uint32Array, o);
    return;
  }
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let j = 0; j < nb; j++) {
      const lo = j * FP8_BLOCK;
      const hi = Math.min(cols, lo + FP8_BLOCK);
      const l = j * 256;
      for (let c = lo; c < hi; c++) o[base + c] = luts[l + src[base + c]];
    }
  }
}

function wordLoop16(s32: Uint32Array, rows: number, cols: number, nb: number, lut: Uint16Array, o32: Uint32Array): void {
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let j = 0; j < nb; j++) {
      const l = j * 256;
      let p = (base + j * FP8_BLOCK) >> 2;
      const end = (base + Math.min(cols, (j + 1) * FP8_BLOCK)) >> 2;
      for (let q = p * 2; p < end; p++, q += 2) {
        const w = s32[p];
        o32[q] = lut[l + (w & 255)] | (lut[l + ((w >>> 8) & 255)] << 16);
        o32[q + 1] = lut[l + ((w >>> 16) & 255)] | (lut[l + (w >>> 24)] << 16);
      }
    }
  }
}

function wordLoop32(s32: Uint32Array, rows: number, cols: number, nb: number, lut: Uint32Array, o: Uint32Array): void {
  for (let r = 0; r < rows; r++) {
    const base = r * cols;
    for (let j = 0; j < nb; j++) {
      const l = j * 256;
      let p = (base + j * FP8_BLOCK) >> 2;
      const end = (base + Math.min(cols, (j + 1) * FP8_BLOCK)) >> 2;
      for (let q = p * 4; p < end; p++, q += 4) {
        const w = s32[p];
        o[q] = lut[l + (w & 255)];
        o[q + 1] = lut[l + ((w >>> 8) & 255)];
        o[q + 2] = lut[l + ((w >>> 16) & 255)];
        o[q + 3] = lut[l + (w >>> 24)];
      }
    }
  }
}

// ---- plain casts ----

const castLuts = new Map<string, Uint16Array>();
/** 16-bit → 16-bit casts are a 65,536-entry table (built once per thread). */
function lut16(from: "BF16" | "F16", to: "BF16" | "F16"): Uint16Array {
  const key = from + to;
  let t = castLuts.get(key);
  if (!t) {
    t = new Uint16Array(65536);
    const dec = from === "BF16" ? bf16ToF32 : f16ToF32;
    const enc = to === "BF16" ? f32ToBf16 : f32ToF16;
    for (let h = 0; h < 65536; h++) {
      const x = dec(h);
      // NaN: keep its sign as a quiet NaN (the number path would lose it).
      t[h] = Number.isNaN(x) ? ((h & 0x8000) | (to === "BF16" ? 0x7fc0 : 0x7e00)) : enc(x);
    }
    castLuts.set(key, t);
  }
  return t;
}

const WIDTH: Record<FloatCodecDtype, number> = { F32: 4, F16: 2, BF16: 2, F8_E4M3: 1, F8_E5M2: 1 };

/**
 * Casts `n` elements from `from` to `to`. `scratch` (≥ n f32) is used when the cast goes through f32.
 * Identity casts are never scheduled (those tensors are copied byte for byte). NaNs keep their sign
 * (JS numbers carry no NaN sign, so the sign is taken from the source bits).
 */
export function castElements(from: FloatCodecDtype, to: TargetDtype, src: Uint8Array, n: number, out: Uint8Array, scratch?: Float32Array): void {
  if ((from === "BF16" || from === "F16") && (to === "BF16" || to === "F16") && from !== to) {
    const t = lut16(from, to);
    const h = u16View(src, n);
    const o = new Uint16Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) o[i] = t[h[i]];
    return;
  }
  const f = scratch && scratch.length >= n ? scratch.subarray(0, n) : new Float32Array(n);
  decodeToF32(from, src, f); // exact; for F32 a byte copy (keeps NaN payloads)
  const fb = new Uint32Array(f.buffer, f.byteOffset, n);
  if (to === "F32") {
    const o = new Uint32Array(out.buffer, out.byteOffset, n);
    const w = WIDTH[from];
    for (let i = 0; i < n; i++) {
      let b = fb[i];
      // F16 / FP8 NaNs came through a table of JS numbers: restore the sign. BF16 bits are exact already.
      if ((b & 0x7fffffff) > 0x7f800000 && from !== "BF16") b = src[i * w + w - 1] & 0x80 ? 0xffc00000 : 0x7fc00000;
      o[i] = b;
    }
    return;
  }
  if (to === "BF16") {
    // encodeFromF32 works on the bits, so NaN signs survive.
    encodeFromF32("BF16", f, out.subarray(0, n * 2));
    if (from !== "F32") restoreNaNSign16(src, WIDTH[from], n, out, 0x7fc0);
    return;
  }
  const o = new Uint16Array(out.buffer, out.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = fb[i];
    o[i] = (b & 0x7fffffff) > 0x7f800000 ? ((b >>> 16) & 0x8000) | 0x7e00 : f32ToF16(f[i]);
  }
  if (from !== "F32") restoreNaNSign16(src, WIDTH[from], n, out, 0x7e00);
}

function restoreNaNSign16(src: Uint8Array, w: number, n: number, out: Uint8Array, qnan: number): void {
  const o = new Uint16Array(out.buffer, out.byteOffset, n);
  const inf = qnan === 0x7fc0 ? 0x7f80 : 0x7c00;
  for (let i = 0; i < n; i++) {
    const h = o[i];
    if ((h & 0x7fff) > inf) o[i] = (src[i * w + w - 1] & 0x80 ? 0x8000 : 0) | qnan;
  }
}

export function dtypeWidth(d: FloatCodecDtype): number {
  return WIDTH[d];
}
