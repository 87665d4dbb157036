import { describe, expect, it } from "vitest";
import { bf16ToF32, e4m3ToF32, e5m2ToF32, f16ToF32, f32ToBf16, f32ToE4m3, f32ToE5m2, f32ToF16, decodeToF32, encodeFromF32 } from "../../src/engine/tensors/codecs.js";

describe("fp8 codecs", () => {
  it("decodes the e4m3fn landmarks", () => {
    expect(e4m3ToF32(0x7e)).toBe(448);
    expect(e4m3ToF32(0x01)).toBe(2 ** -9); // smallest subnormal
    expect(e4m3ToF32(0x08)).toBe(2 ** -6); // smallest normal
    expect(e4m3ToF32(0x7f)).toBeNaN();
    expect(e4m3ToF32(0xff)).toBeNaN();
    expect(Object.is(e4m3ToF32(0x80), -0)).toBe(true);
  });
  it("decodes the e5m2 landmarks", () => {
    expect(e5m2ToF32(0x7b)).toBe(57344);
    expect(e5m2ToF32(0x7c)).toBe(Infinity);
    expect(e5m2ToF32(0xfc)).toBe(-Infinity);
    expect(e5m2ToF32(0x7d)).toBeNaN();
    expect(e5m2ToF32(0x01)).toBe(2 ** -16);
  });
  it("every non-NaN code round-trips through f32", () => {
    for (let c = 0; c < 256; c++) {
      if (!Number.isNaN(e4m3ToF32(c))) expect(f32ToE4m3(e4m3ToF32(c))).toBe(c);
      if (!Number.isNaN(e5m2ToF32(c))) expect(f32ToE5m2(e5m2ToF32(c))).toBe(c);
    }
  });
});

describe("bf16 / f16 codecs", () => {
  it("rounds to nearest even", () => {
    // 1 + 2^-8 is exactly half way between bf16 1 and 1+2^-7: ties to even (1).
    expect(f32ToBf16(1 + 2 ** -8)).toBe(0x3f80);
    expect(f32ToBf16(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f32ToF16(1 + 2 ** -11)).toBe(0x3c00);
    expect(f32ToF16(1 + 3 * 2 ** -11)).toBe(0x3c02);
  });
  it("keeps NaN, Inf and subnormals", () => {
    expect(bf16ToF32(f32ToBf16(NaN))).toBeNaN();
    expect(f16ToF32(f32ToF16(NaN))).toBeNaN();
    expect(f32ToF16(Infinity)).toBe(0x7c00);
    expect(f32ToF16(70000)).toBe(0x7c00);
    expect(f16ToF32(f32ToF16(2 ** -24))).toBe(2 ** -24);
    expect(f32ToF16(2 ** -26)).toBe(0);
    expect(bf16ToF32(f32ToBf16(2 ** -130))).toBe(2 ** -130);
  });
  it("every f16 and bf16 code round-trips", () => {
    for (let h = 0; h < 65536; h++) {
      const x = f16ToF32(h);
      if (!Number.isNaN(x)) expect(f32ToF16(x)).toBe(h);
      const y = bf16ToF32(h);
      if (!Number.isNaN(y)) expect(f32ToBf16(y)).toBe(h);
    }
  });
  it("bulk encode/decode agree with the scalar codecs", () => {
    const vals = Float32Array.from([0, -0, 1.5, -2.75, 65504, 1e-7, 3.14159, -1e30]);
    for (const dt of ["BF16", "F16"] as const) {
      const bytes = new Uint8Array(vals.length * 2);
      encodeFromF32(dt, vals, bytes);
      const back = new Float32Array(vals.length);
      decodeToF32(dt, bytes, back);
      const scalarEnc = dt === "BF16" ? f32ToBf16 : f32ToF16;
      const scalarDec = dt === "BF16" ? bf16ToF32 : f16ToF32;
      vals.forEach((v, i) => expect(Object.is(back[i], scalarDec(scalarEnc(v)))).toBe(true));
    }
  });
});
