/**
 * The hand-written ONNX writer and the RTN quantizer, checked against onnxruntime itself: protobuf
 * wire bytes for known values, a model with inline and external initializers that ORT loads and runs,
 * and MatMulNBits (4/8 bits, blocks 32/64/128, K not a multiple of the block) computing exactly the
 * product with the weights our dequantizer reconstructs.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import * as ort from "onnxruntime-node";
import { bytesOf, ExternalDataWriter } from "../../src/engine/onnx/data-file.js";
import { attr, DataType, encodeModel, type ModelSpec } from "../../src/engine/onnx/model.js";
import { PbWriter } from "../../src/engine/onnx/proto.js";
import { dequantizeRows, quantizeRows, quantLayout, type QuantBits } from "../../src/engine/onnx/quant.js";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";
import { tempDir } from "../support/tmp.js";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");

describe("protobuf writer", () => {
  it("encodes varints, negative int64, floats, strings and nested messages as protobuf does", () => {
    expect(hex(new PbWriter().varint(1, 150).finish())).toBe("089601");
    expect(hex(new PbWriter().varint(3, -1).finish())).toBe("18ffffffffffffffffff01");
    expect(hex(new PbWriter().varint(2, 2n ** 40n).finish())).toBe("10808080808020");
    expect(hex(new PbWriter().float(2, 1.5).finish())).toBe("150000c03f");
    expect(hex(new PbWriter().string(2, "testing").finish())).toBe("120774657374696e67");
    expect(hex(new PbWriter().message(3, (w) => w.varint(1, 150)).finish())).toBe("1a03089601");
    // Growth past the initial buffer keeps every byte.
    const big = new Uint8Array(100_000).map((_, i) => i & 255);
    const out = new PbWriter().bytes(1, big).finish();
    expect(out.subarray(out.length - big.length)).toEqual(big);
  });
});

async function runModel(dir: string, spec: ModelSpec, feeds: Record<string, ort.Tensor>) {
  const path = join(dir, "m.onnx");
  await writeFile(path, encodeModel(spec));
  const s = await ort.InferenceSession.create(path, { intraOpNumThreads: 1 });
  try {
    return await s.run(feeds);
  } finally {
    await s.release();
  }
}

function randomMatrix(rows: number, cols: number, seed: number, amp = 1): Float32Array {
  const r = seededRandom(seed);
  return Float32Array.from({ length: rows * cols }, () => (r() * 2 - 1) * amp);
}

describe("ONNX models written by dsr run on onnxruntime-node", () => {
  it("inline + external initializers, attributes, symbolic dims", async () => {
    const dir = await tempDir();
    const data = new ExternalDataWriter(join(dir, "m.onnx.data"), "m.onnx.data");
    await data.open();
    const big = randomMatrix(64, 48, 1); // 12 KiB → external
    const bias = Float32Array.from({ length: 48 }, (_, i) => i); // 192 B → inline
    const wBig = await data.tensor("w", DataType.FLOAT, [64, 48], bytesOf(big));
    const wBias = await data.tensor("b", DataType.FLOAT, [48], bytesOf(bias));
    await data.close();
    expect(wBig.external?.offset).toBe(0);
    expect(wBias.raw).toBeDefined();
    const out = await runModel(dir, {
      graph: {
        name: "g",
        nodes: [
          { op: "MatMul", name: "mm", inputs: ["x", "w"], outputs: ["y0"] },
          { op: "Add", name: "add", inputs: ["y0", "b"], outputs: ["y1"] },
          { op: "LeakyRelu", name: "lr", inputs: ["y1"], outputs: ["y"], attrs: { alpha: attr.float(0.25) } },
        ],
        initializers: [wBig, wBias],
        inputs: [{ name: "x", elemType: DataType.FLOAT, shape: ["n", 64] }],
        outputs: [{ name: "y", elemType: DataType.FLOAT, shape: ["n", 48] }],
      },
      opsets: [{ domain: "", version: 21 }],
    }, { x: new ort.Tensor("float32", randomMatrix(3, 64, 2), [3, 64]) });
    const x = randomMatrix(3, 64, 2);
    const y = out.y!.data as Float32Array;
    for (let r = 0; r < 3; r++) {
      for (let c = 0; c < 48; c++) {
        let acc = bias[c]!;
        for (let k = 0; k < 64; k++) acc += x[r * 64 + k]! * big[k * 48 + c]!;
        expect(y[r * 48 + c]).toBeCloseTo(acc > 0 ? acc : 0.25 * acc, 4);
      }
    }
  });
});

describe("RTN quantization into MatMulNBits", () => {
  it("round-trip error is at most half a step per block, zeros stay zero", () => {
    for (const bits of [4, 8] as QuantBits[]) {
      const K = 100;
      const w = randomMatrix(7, K, 3);
      w[5] = 0;
      const q = quantizeRows(w, 7, K, bits, 32);
      const back = dequantizeRows(q, 7, K, bits, 32);
      const { kBlocks } = quantLayout(K, bits, 32);
      for (let r = 0; r < 7; r++) for (let k = 0; k < K; k++) {
        const scale = q.scales[r * kBlocks + Math.floor(k / 32)]!;
        expect(Math.abs(back[r * K + k]! - w[r * K + k]!)).toBeLessThanOrEqual(scale / 2 + 1e-6);
      }
      expect(back[5]).toBe(0);
    }
  });

  for (const bits of [4, 8] as QuantBits[]) {
    for (const block of [32, 64, 128]) {
      it(`bits ${bits}, block ${block}: ORT's product equals x · dequant(W)ᵀ`, async () => {
        const dir = await tempDir();
        const N = 24;
        const K = 200; // not a multiple of any block size: the last block is zero-padded
        const w = randomMatrix(N, K, bits * 1000 + block, 0.5);
        const q = quantizeRows(w, N, K, bits, block);
        const { kBlocks, blob } = quantLayout(K, bits, block);
        const x = randomMatrix(2, K, 5);
        const out = await runModel(dir, {
          graph: {
            name: "g",
            nodes: [{
              op: "MatMulNBits", name: "q", domain: "com.microsoft", inputs: ["x", "B", "scales", "zp"], outputs: ["y"],
              // accuracy_level 0: fp32 compute, so the comparison is exact up to float rounding.
              attrs: { K: attr.int(K), N: attr.int(N), bits: attr.int(bits), block_size: attr.int(block), accuracy_level: attr.int(0) },
            }],
            initializers: [
              { name: "B", dataType: DataType.UINT8, dims: [N, kBlocks, blob], raw: q.q },
              { name: "scales", dataType: DataType.FLOAT, dims: [N * kBlocks], raw: bytesOf(q.scales) },
              { name: "zp", dataType: DataType.UINT8, dims: [q.zeroPoints.length], raw: q.zeroPoints },
            ],
            inputs: [{ name: "x", elemType: DataType.FLOAT, shape: [2, K] }],
            outputs: [{ name: "y", elemType: DataType.FLOAT, shape: [2, N] }],
          },
          opsets: [{ domain: "", version: 21 }, { domain: "com.microsoft", version: 1 }],
        }, { x: new ort.Tensor("float32", x, [2, K]) });
        const deq = dequantizeRows(q, N, K, bits, block);
        const y = out.y!.data as Float32Array;
        for (let r = 0; r < 2; r++) for (let n = 0; n < N; n++) {
          let acc = 0;
          for (let k = 0; k < K; k++) acc += x[r * K + k]! * deq[n * K + k]!;
          expect(Math.abs(y[r * N + n]! - acc)).toBeLessThan(1e-3);
        }
      });
    }
  }
});
