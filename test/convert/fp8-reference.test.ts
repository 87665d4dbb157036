/**
 * Bit-exactness of FP8 → BF16 on the torch-written tiny DeepSeek-V3 checkpoint (3 shards, partial
 * edge blocks, a scale in another shard than its weight): every element of every dequantised tensor
 * is compared with the scalar reference; every other tensor must be byte-identical. The in-process
 * path (one thread) and the CLI's worker-thread path must produce identical files.
 */
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { convertCheckpoint, type ConvertSummary } from "../../src/engine/transform/convert.js";
import { DEFAULT_KEEP_DTYPE } from "../../src/engine/transform/plan.js";
import { TINY_DSV3_FP8, runDsr } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { loadCheckpoint } from "./helpers.js";
import { bitsOf, refDequantBf16, refE4m3, refF16 } from "./reference.js";

describe("FP8 → BF16 on tiny-deepseek-v3-fp8", () => {
  let out: string;
  let summary: ConvertSummary;
  let src: Awaited<ReturnType<typeof loadCheckpoint>>;
  let dst: Awaited<ReturnType<typeof loadCheckpoint>>;
  beforeAll(async () => {
    out = join(await tempDir(), "bf16");
    summary = await convertCheckpoint({ src: TINY_DSV3_FP8, out, options: { to: "BF16", dropMtp: false, keepDtype: DEFAULT_KEEP_DTYPE }, threads: 1 });
    src = await loadCheckpoint(TINY_DSV3_FP8);
    dst = await loadCheckpoint(out);
  });

  it("dequantises every FP8 element exactly as the definition says", () => {
    let checked = 0;
    let crossShardScales = 0;
    for (const [name, s] of src) {
      if (s.info.dtype !== "F8_E4M3") continue;
      const scale = src.get(name + "_scale_inv")!;
      if (scale.file !== s.file) crossShardScales++;
      const sv = new Float32Array(scale.data.buffer.slice(scale.data.byteOffset, scale.data.byteOffset + scale.data.byteLength));
      const [rows, cols] = s.info.shape;
      const nbc = Math.ceil(cols / 128);
      const d = dst.get(name)!;
      expect(d.info.dtype).toBe("BF16");
      expect(d.info.shape).toEqual(s.info.shape);
      const o = new Uint16Array(d.data.buffer.slice(d.data.byteOffset, d.data.byteOffset + d.data.byteLength));
      for (let r = 0; r < rows; r++) {
        for (let c = 0; c < cols; c++) {
          const want = refDequantBf16(s.data[r * cols + c], sv[Math.floor(r / 128) * nbc + Math.floor(c / 128)]);
          if (o[r * cols + c] !== want) expect(`${name}[${r},${c}] = ${o[r * cols + c]}`).toBe(`${name}[${r},${c}] = ${want}`);
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(1_000_000);
    expect(summary.tensors.dequantized).toBe([...src.values()].filter((t) => t.info.dtype === "F8_E4M3").length);
    // The fixture has partial edge blocks (e.g. 160 rows) and scales stored away from their weight.
    expect([...src.values()].some((t) => t.info.dtype === "F8_E4M3" && t.info.shape.some((d) => d % 128 !== 0))).toBe(true);
    expect(crossShardScales).toBeGreaterThan(0);
  });

  it("drops the scales, copies every other tensor byte for byte, records the source format", () => {
    for (const [name, s] of src) {
      if (name.endsWith("_scale_inv")) expect(dst.has(name)).toBe(false);
      else if (s.info.dtype !== "F8_E4M3") expect(Buffer.compare(dst.get(name)!.data, s.data)).toBe(0);
    }
    expect(dst.get("model.layers.1.mlp.gate.e_score_correction_bias")!.info.dtype).toBe("F32"); // kept F32 by default
    for (const t of dst.values()) expect(t.metadata).toMatchObject({ format: "pt", "dsr.source_format": "deepseek-fp8-e4m3-block128" });
  });

  it("writes config without quantization_config, and an index with the right total_size", async () => {
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    const orig = JSON.parse(await readFile(join(TINY_DSV3_FP8, "config.json"), "utf8"));
    expect(cfg.quantization_config).toBeUndefined();
    expect(cfg.torch_dtype).toBe("bfloat16");
    expect({ ...cfg, torch_dtype: orig.torch_dtype }).toEqual(Object.fromEntries(Object.entries(orig).filter(([k]) => k !== "quantization_config")));
    const idx = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
    const sum = [...dst.values()].reduce((a, t) => a + t.data.byteLength, 0);
    expect(idx.metadata.total_size).toBe(sum);
    expect(summary.totalSize).toBe(sum);
    expect(Object.keys(idx.weight_map).sort()).toEqual([...dst.keys()].sort());
    for (const [name, t] of dst) expect(idx.weight_map[name]).toBe(t.file);
    expect((await readdir(out)).filter((f) => f.endsWith(".partial"))).toEqual([]);
  });

  it("the CLI's worker-thread path writes byte-identical files", async () => {
    const out2 = join(await tempDir(), "bf16-cli");
    const r = await runDsr(["convert", TINY_DSV3_FP8, "--to", "bf16", "--out", out2, "--threads", "2", "--json"]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    const j = JSON.parse(r.stdout as string);
    expect(j.threads).toBe(2);
    for (const f of (await readdir(out)).filter((f) => !f.startsWith("."))) {
      expect(Buffer.compare(await readFile(join(out2, f)), await readFile(join(out, f))), f).toBe(0);
    }
  });

  it("FP8 → F16 and → F32 are exact too (every element, in process)", async () => {
    for (const to of ["F16", "F32"] as const) {
      const o = join(await tempDir(), to);
      await convertCheckpoint({ src: TINY_DSV3_FP8, out: o, options: { to, dropMtp: false, keepDtype: DEFAULT_KEEP_DTYPE }, threads: 1 });
      const got = await loadCheckpoint(o);
      let bad = 0;
      let n = 0;
      for (const [name, s] of src) {
        if (s.info.dtype !== "F8_E4M3") continue;
        const scale = src.get(name + "_scale_inv")!;
        const sv = new Float32Array(scale.data.buffer.slice(scale.data.byteOffset, scale.data.byteOffset + scale.data.byteLength));
        const cols = s.info.shape[1];
        const nbc = Math.ceil(cols / 128);
        const d = got.get(name)!;
        expect(d.info.dtype).toBe(to);
        const raw = d.data.buffer.slice(d.data.byteOffset, d.data.byteOffset + d.data.byteLength);
        const out = to === "F16" ? new Uint16Array(raw) : new Uint32Array(raw);
        for (let i = 0; i < s.data.length; i++, n++) {
          const code = s.data[i];
          const v = refE4m3(code);
          const p = Math.fround(v * sv[Math.floor(Math.floor(i / cols) / 128) * nbc + Math.floor((i % cols) / 128)]);
          const want = Number.isNaN(v) ? (to === "F16" ? ((code & 0x80) << 8) | 0x7e00 : code & 0x80 ? 0xffc00000 : 0x7fc00000) : to === "F16" ? refF16(p) : bitsOf(p);
          if (out[i] !== want) bad++;
        }
      }
      expect(n).toBeGreaterThan(1_000_000);
      expect(bad, to).toBe(0);
    }
  });
});
