/**
 * Round-to-nearest block quantization into the MatMulNBits layout (facts/quant-and-cpu.md §4.3):
 * B is uint8 [N, kBlocks, blockSize·bits/8] packed along K (4-bit: first value in the low nibble),
 * scales are fp32 [N, kBlocks], zero points uint8 packed like B ([N, ceil(kBlocks·bits/8)]).
 * Asymmetric min/max per block: the zero point costs nothing measurable on the CPU kernel (§5.1)
 * and RTN loses less than with a symmetric range.
 */
export type QuantBits = 4 | 8;

export interface QuantizedRows {
  /** [rows, kBlocks, blob] */
  q: Uint8Array;
  /** [rows, kBlocks] */
  scales: Float32Array;
  /** [rows, zpCols] */
  zeroPoints: Uint8Array;
}

export function quantLayout(K: number, bits: QuantBits, blockSize: number) {
  const kBlocks = Math.ceil(K / blockSize);
  const blob = (blockSize * bits) / 8;
  const zpCols = Math.ceil((kBlocks * bits) / 8);
  return { kBlocks, blob, zpCols };
}

/** Quantizes `rows` rows of length K (row-major fp32). K need not be a multiple of the block (zero padding). */
export function quantizeRows(w: Float32Array, rows: number, K: number, bits: QuantBits, blockSize: number): QuantizedRows {
  const { kBlocks, blob, zpCols } = quantLayout(K, bits, blockSize);
  const maxQ = (1 << bits) - 1;
  const q = new Uint8Array(rows * kBlocks * blob);
  const scales = new Float32Array(rows * kBlocks);
  const zeroPoints = new Uint8Array(rows * zpCols);
  const vals = new Uint8Array(blockSize);
  for (let r = 0; r < rows; r++) {
    const rowOff = r * K;
    for (let b = 0; b < kBlocks; b++) {
      const k0 = b * blockSize;
      const k1 = Math.min(K, k0 + blockSize);
      // The range always contains 0 so that zero padding and exact zeros stay exact.
      let lo = 0;
      let hi = 0;
      for (let k = k0; k < k1; k++) {
        const v = w[rowOff + k]!;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let scale = (hi - lo) / maxQ;
      let zp = 0;
      if (scale > 0) zp = Math.min(maxQ, Math.max(0, Math.round(-lo / scale)));
      else scale = 1;
      const inv = 1 / scale;
      vals.fill(zp);
      for (let k = k0; k < k1; k++) {
        const x = Math.round(w[rowOff + k]! * inv) + zp;
        vals[k - k0] = x < 0 ? 0 : x > maxQ ? maxQ : x;
      }
      const qOff = (r * kBlocks + b) * blob;
      if (bits === 8) q.set(vals, qOff);
      else for (let j = 0; j < blob; j++) q[qOff + j] = vals[2 * j]! | (vals[2 * j + 1]! << 4);
      scales[r * kBlocks + b] = scale;
      if (bits === 8) zeroPoints[r * zpCols + b] = zp;
      else zeroPoints[r * zpCols + (b >> 1)]! |= (b & 1 ? zp << 4 : zp);
    }
  }
  return { q, scales, zeroPoints };
}

/** The inverse, for tests and error measurement: returns [rows, K] fp32. */
export function dequantizeRows(qr: QuantizedRows, rows: number, K: number, bits: QuantBits, blockSize: number): Float32Array {
  const { kBlocks, blob, zpCols } = quantLayout(K, bits, blockSize);
  const out = new Float32Array(rows * K);
  for (let r = 0; r < rows; r++) {
    for (let b = 0; b < kBlocks; b++) {
      const scale = qr.scales[r * kBlocks + b]!;
      const zpByte = qr.zeroPoints[r * zpCols + (bits === 8 ? b : b >> 1)]!;
      const zp = bits === 8 ? zpByte : b & 1 ? zpByte >> 4 : zpByte & 15;
      const qOff = (r * kBlocks + b) * blob;
      for (let k = b * blockSize; k < Math.min(K, (b + 1) * blockSize); k++) {
        const j = k - b * blockSize;
        const v = bits === 8 ? qr.q[qOff + j]! : (qr.q[qOff + (j >> 1)]! >> ((j & 1) * 4)) & 15;
        out[r * K + k] = (v - zp) * scale;
      }
    }
  }
  return out;
}
