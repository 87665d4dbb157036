import { describe, expect, it } from "vitest";
import { readFile, writeFile, stat, readdir } from "node:fs/promises";
import { join } from "node:path";
import { readHeader, readHeaderFromFile, readTensorBytes } from "../../src/engine/tensors/read.js";
import { FileByteSource } from "../../src/engine/tensors/source.js";
import { encodeHeader, findDuplicateTopLevelKey, parseHeader } from "../../src/engine/tensors/safetensors.js";
import { writeSafetensors, SafetensorsWriter } from "../../src/engine/tensors/write.js";
import { DsrError } from "../../src/engine/errors.js";
import { TINY_DSV3_FP8, TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";

const enc = (o: unknown) => new TextEncoder().encode(JSON.stringify(o));

function fileOf(headerObj: unknown, dataBytes: number, pad = 0): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(headerObj) + " ".repeat(pad));
  const out = new Uint8Array(8 + json.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  return out;
}

describe("safetensors header validation (reference rules)", () => {
  const ok = { a: { dtype: "F32", shape: [2], data_offsets: [0, 8] }, b: { dtype: "BF16", shape: [1, 2], data_offsets: [8, 12] } };

  it("accepts a valid header and sorts tensors by offset", () => {
    const h = parseHeader(enc({ b: ok.b, a: ok.a, __metadata__: { format: "pt" } }), undefined, "f");
    expect(h.tensors.map((t) => t.name)).toEqual(["a", "b"]);
    expect(h.metadata).toEqual({ format: "pt" });
    expect(h.dataSize).toBe(12);
  });

  const cases: [string, unknown, string][] = [
    ["gap", { a: ok.a, b: { ...ok.b, data_offsets: [9, 13] } }, "DSR_ST_INVALID_OFFSET"],
    ["overlap", { a: ok.a, b: { ...ok.b, data_offsets: [6, 10] } }, "DSR_ST_INVALID_OFFSET"],
    ["not from zero", { a: { ...ok.a, data_offsets: [4, 12] } }, "DSR_ST_INVALID_OFFSET"],
    ["end before begin", { a: { ...ok.a, data_offsets: [8, 0] } }, "DSR_ST_INVALID_OFFSET"],
    ["size mismatch", { a: { ...ok.a, shape: [3] } }, "DSR_ST_TENSOR_INVALID_INFO"],
    ["unknown dtype", { a: { ...ok.a, dtype: "F128" } }, "DSR_ST_UNKNOWN_DTYPE"],
    ["negative dim", { a: { ...ok.a, shape: [-2] } }, "DSR_ST_TENSOR_INVALID_INFO"],
    ["metadata not strings", { __metadata__: { n: 1 } }, "DSR_ST_INVALID_HEADER"],
    ["not an object", [1, 2], "DSR_ST_INVALID_HEADER"],
    ["4-bit odd count", { a: { dtype: "F4", shape: [3], data_offsets: [0, 1] } }, "DSR_ST_TENSOR_INVALID_INFO"],
  ];
  for (const [name, hdr, code] of cases) {
    it(`rejects ${name} with ${code}`, () => {
      expect(() => parseHeader(enc(hdr), undefined, "x.safetensors")).toThrowError(expect.objectContaining({ code }));
    });
  }

  it("rejects duplicate tensor names that JSON.parse would hide", () => {
    const text = `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`;
    expect(findDuplicateTopLevelKey(text)).toBe("a");
    expect(() => parseHeader(new TextEncoder().encode(text), undefined, "f")).toThrowError(/appears twice/);
    expect(findDuplicateTopLevelKey(`{"x":{"a":1,"a":2},"y\\"":[{"x":1}]}`)).toBeUndefined();
    // escaped spellings of the same name are the same key
    expect(findDuplicateTopLevelKey(`{"a\\u0062":1,"ab":2}`)).toBe("ab");
  });

  it("accepts leading and trailing whitespace padding", () => {
    const json = new TextEncoder().encode("  " + JSON.stringify({ a: ok.a }) + "    ");
    expect(parseHeader(json, 8 + json.byteLength + 8, "f").tensors).toHaveLength(1);
  });

  it("checks the file size exactly: truncated and trailing bytes", () => {
    const json = enc({ a: ok.a });
    expect(() => parseHeader(json, 8 + json.byteLength + 7, "f")).toThrowError(/truncated/);
    expect(() => parseHeader(json, 8 + json.byteLength + 9, "f")).toThrowError(/trailing/);
  });

  it("rejects bad length prefixes without allocating for them", async () => {
    const dir = await tempDir();
    const huge = new Uint8Array(16);
    new DataView(huge.buffer).setBigUint64(0, 200_000_000n, true);
    await writeFile(join(dir, "huge.safetensors"), huge);
    await expect(readHeaderFromFile(join(dir, "huge.safetensors"))).rejects.toMatchObject({ code: "DSR_ST_HEADER_TOO_LARGE", exitCode: 3 });
    const past = fileOf({}, 0);
    new DataView(past.buffer).setBigUint64(0, 1000n, true);
    await writeFile(join(dir, "past.safetensors"), past);
    await expect(readHeaderFromFile(join(dir, "past.safetensors"))).rejects.toMatchObject({ code: "DSR_ST_INVALID_HEADER_LENGTH" });
    await writeFile(join(dir, "tiny.safetensors"), new Uint8Array(3));
    await expect(readHeaderFromFile(join(dir, "tiny.safetensors"))).rejects.toMatchObject({ code: "DSR_ST_HEADER_TOO_SMALL" });
  });
});

describe("safetensors writer", () => {
  it("round-trips and pads the header to 8 bytes like the reference writer", async () => {
    const dir = await tempDir();
    const path = join(dir, "m.safetensors");
    const a = new Float32Array([1, 2, 3]);
    const b = new Uint8Array([7]);
    await writeSafetensors(
      path,
      [
        { name: "small", dtype: "U8", shape: [1], data: b },
        { name: "w", dtype: "F32", shape: [3], data: new Uint8Array(a.buffer) },
        { name: "empty", dtype: "F16", shape: [0, 4], data: new Uint8Array(0) },
      ],
      { metadata: { format: "pt" } },
    );
    const src = new FileByteSource(path);
    const { header } = await readHeader(src);
    expect(header.headerSize % 8).toBe(0);
    // reference order: widest dtype first
    expect(header.tensors.map((t) => t.name)).toEqual(["w", "empty", "small"]);
    const w = header.tensors.find((t) => t.name === "w")!;
    expect(Array.from(new Float32Array(new Uint8Array(await readTensorBytes(src, header, w)).buffer))).toEqual([1, 2, 3]);
    await src.close();
    expect((await readdir(dir)).filter((f) => f.endsWith(".partial"))).toEqual([]);
  });

  it("never leaves a complete-looking file when a write is abandoned", async () => {
    const dir = await tempDir();
    const path = join(dir, "x.safetensors");
    const w = await SafetensorsWriter.create(path, [{ name: "t", dtype: "F32", shape: [4] }]);
    await w.write("t", new Uint8Array(8));
    await expect(w.finish()).rejects.toThrowError(DsrError);
    await expect(stat(path)).rejects.toThrow();
    await expect(stat(path + ".partial")).rejects.toThrow();
  });

  it("encodeHeader output parses back", () => {
    const bytes = encodeHeader([{ name: "x", dtype: "I8", shape: [2], begin: 0, end: 2 }]);
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    expect(parseHeader(bytes.subarray(8, 8 + n), 8 + n + 2, "f").tensors[0].name).toBe("x");
  });
});

describe("real torch-written checkpoints", () => {
  it("reads every shard of tiny-deepseek-v3-fp8 and tiny-r1", async () => {
    const index = JSON.parse(await readFile(join(TINY_DSV3_FP8, "model.safetensors.index.json"), "utf8"));
    const shards = [...new Set(Object.values(index.weight_map as Record<string, string>))];
    let count = 0;
    for (const s of shards) {
      const h = await readHeaderFromFile(join(TINY_DSV3_FP8, s));
      for (const t of h.tensors) expect(index.weight_map[t.name]).toBe(s);
      count += h.tensors.length;
    }
    expect(count).toBe(Object.keys(index.weight_map).length);
    const r1 = await readHeaderFromFile(join(TINY_R1, "model.safetensors"));
    expect(r1.tensors.some((t) => t.name === "model.embed_tokens.weight" && t.dtype === "BF16")).toBe(true);
  });
});
