/**
 * Quantisation detection and counting on generated AWQ, GPTQ and compressed-tensors layouts
 * (facts/formats.md §5: tensor names, shapes, dtypes, quantization_config): the method is found from
 * the config and confirmed by the tensors, packed weights count their logical parameters, the layout
 * passes integrity, and a config that disagrees with the tensors is an error.
 */
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { countParams, parseModelConfig, qwen2 } from "../../src/engine/arch/index.js";
import { buildInspectReport, openCheckpoint, openLocalSource } from "../../src/engine/checkpoint/index.js";
import { tensorByteSize, type Dtype } from "../../src/engine/tensors/dtypes.js";
import { expectedFor, tinyConfig, writeRaw, type RawEntry } from "../support/fixtures.js";
import { tempDir } from "../support/tmp.js";

const root = await tempDir("dsr-quant-");
const G = 32;

type Layout = "awq" | "gptq" | "ct-pack" | "ct-int8";
/** The quantised tensors replacing one Linear weight [out, in]. */
function quantised(layout: Layout, mod: string, out: number, inn: number): { name: string; dtype: Dtype; shape: number[] }[] {
  switch (layout) {
    case "awq": // qweight packed along out; no g_idx
      return [
        { name: `${mod}.qweight`, dtype: "I32", shape: [inn, out / 8] },
        { name: `${mod}.qzeros`, dtype: "I32", shape: [inn / G, out / 8] },
        { name: `${mod}.scales`, dtype: "F16", shape: [inn / G, out] },
      ];
    case "gptq": // qweight packed along in; g_idx per input
      return [
        { name: `${mod}.qweight`, dtype: "I32", shape: [inn / 8, out] },
        { name: `${mod}.qzeros`, dtype: "I32", shape: [inn / G, out / 8] },
        { name: `${mod}.scales`, dtype: "F16", shape: [inn / G, out] },
        { name: `${mod}.g_idx`, dtype: "I32", shape: [inn] },
      ];
    case "ct-pack":
      return [
        { name: `${mod}.weight_packed`, dtype: "I32", shape: [out, inn / 8] },
        { name: `${mod}.weight_scale`, dtype: "BF16", shape: [out, inn / G] },
        { name: `${mod}.weight_shape`, dtype: "I32", shape: [2] },
      ];
    case "ct-int8":
      return [
        { name: `${mod}.weight`, dtype: "I8", shape: [out, inn] },
        { name: `${mod}.weight_scale`, dtype: "BF16", shape: [out, 1] },
      ];
  }
}

const QCONFIG: Record<Layout, Record<string, unknown>> = {
  awq: { quant_method: "awq", bits: 4, group_size: G, zero_point: true, version: "gemm" },
  gptq: { quant_method: "gptq", bits: 4, group_size: G, desc_act: false, sym: true, checkpoint_format: "gptq" },
  "ct-pack": { quant_method: "compressed-tensors", format: "pack-quantized", config_groups: { group_0: { targets: ["Linear"], weights: { num_bits: 4, type: "int", strategy: "group", group_size: G } } }, ignore: ["lm_head"] },
  "ct-int8": { quant_method: "compressed-tensors", format: "int-quantized", config_groups: { group_0: { targets: ["Linear"], weights: { num_bits: 8, type: "int", strategy: "channel" }, input_activations: { num_bits: 8, dynamic: true } } }, ignore: ["lm_head"] },
};

async function writeQuantised(layout: Layout, opts: { configSays?: Record<string, unknown> | null } = {}) {
  const base = tinyConfig("qwen2");
  const config = { ...base, ...(opts.configSays === null ? {} : { quantization_config: opts.configSays ?? QCONFIG[layout] }) };
  const specs: { name: string; dtype: Dtype; shape: number[] }[] = [];
  for (const t of expectedFor(base)) {
    if (t.role === "linear" && /\.layers\./.test(t.name)) specs.push(...quantised(layout, t.name.slice(0, -".weight".length), t.shape[0], t.shape[1]));
    else specs.push({ name: t.name, dtype: t.dtype === "BF16" && layout !== "ct-int8" && layout !== "ct-pack" ? "F16" : t.dtype, shape: t.shape });
  }
  let off = 0;
  const entries: RawEntry[] = specs.map((s) => {
    const size = tensorByteSize(s.dtype, s.shape)!;
    const e = { ...s, begin: off, end: off + size };
    off += size;
    return e;
  });
  const dir = join(root, `${layout}-${opts.configSays === undefined ? "ok" : "mismatch"}`);
  await mkdir(dir, { recursive: true });
  await writeRaw(join(dir, "model.safetensors"), entries, new Uint8Array(off));
  await writeFile(join(dir, "config.json"), JSON.stringify(config));
  return dir;
}

const logical = (() => {
  const cfg = parseModelConfig(tinyConfig("qwen2"));
  return countParams(qwen2, cfg, qwen2.expectedTensors(cfg)).total;
})();

describe("quantised layouts", () => {
  for (const [layout, method, bits] of [["awq", "awq", 4], ["gptq", "gptq", 4], ["ct-pack", "compressed-tensors", 4], ["ct-int8", "compressed-tensors", 8]] as const) {
    it(`${layout}: detected as ${method} ${bits}-bit, logical parameters, no integrity errors`, async () => {
      const dir = await writeQuantised(layout);
      const ck = await openCheckpoint(await openLocalSource(dir));
      const r = buildInspectReport(ck, undefined);
      expect(r.quantization).toMatchObject({ method, bits, source: "config+tensors" });
      expect(r.quantization.quantizedTensors).toBe(14); // 7 linears × 2 layers
      expect(r.findings.filter((f) => f.severity === "error")).toEqual([]);
      expect(r.params!.total).toBe(logical);
      if (layout !== "ct-int8") expect(r.quantization.groupSize).toBe(G);
    });
  }

  it("GPTQ without a config is still told apart from AWQ by g_idx", async () => {
    const dir = await writeQuantised("gptq", { configSays: null });
    const r = buildInspectReport(await openCheckpoint(await openLocalSource(dir)), undefined);
    expect(r.quantization).toMatchObject({ method: "gptq", source: "tensors" });
  });

  it("a config that says FP8 over INT8 tensors is an error: config and tensors disagree", async () => {
    const dir = await writeQuantised("ct-int8", { configSays: { quant_method: "fp8", weight_block_size: [128, 128], activation_scheme: "dynamic" } });
    const r = buildInspectReport(await openCheckpoint(await openLocalSource(dir)), undefined);
    expect(r.ok).toBe(false);
    expect(r.findings).toContainEqual(expect.objectContaining({ code: "DSR_QUANT_CONFIG_MISMATCH", file: "config.json", severity: "error" }));
  });

  it("a BF16 checkpoint whose config kept DeepSeek's fp8 quantization_config is flagged (fp8_cast_bf16 leftovers)", async () => {
    const base = tinyConfig("qwen2");
    const dir = join(root, "bf16-fp8cfg");
    await mkdir(dir, { recursive: true });
    const specs = expectedFor(base);
    let off = 0;
    const entries = specs.map((s) => ({ name: s.name, dtype: s.dtype, shape: s.shape, begin: off, end: (off += tensorByteSize(s.dtype, s.shape)!) }));
    await writeRaw(join(dir, "model.safetensors"), entries, new Uint8Array(off));
    await writeFile(join(dir, "config.json"), JSON.stringify({ ...base, quantization_config: { quant_method: "fp8", fmt: "e4m3", weight_block_size: [128, 128], activation_scheme: "dynamic" } }));
    const r = buildInspectReport(await openCheckpoint(await openLocalSource(dir)), undefined);
    expect(r.quantization).toMatchObject({ method: "none", configSays: "fp8-block" });
    const f = r.findings.find((x) => x.code === "DSR_QUANT_CONFIG_MISMATCH");
    expect(f?.message).toMatch(/remove quantization_config/);
  });
});
