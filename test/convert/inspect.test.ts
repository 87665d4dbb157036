/** Converted checkpoints pass `dsr inspect` (the project's integrity checks) with no new finding. */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { TINY_DSV3_FP8, TINY_R1, runDsr } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";

async function inspect(dir: string) {
  const r = await runDsr(["inspect", dir, "--json"]);
  expect(r.exitCode, r.stderr as string).toBe(0);
  return JSON.parse(r.stdout as string);
}

describe("dsr inspect on convert outputs", () => {
  it("BF16 → F16 re-sharded into 5 files: no findings at all", async () => {
    const out = join(await tempDir(), "f16");
    const c = await runDsr(["convert", TINY_R1, "--to", "fp16", "--out", out, "--max-shard-size", "3MB"]);
    expect(c.exitCode, c.stderr as string).toBe(0);
    const r = await inspect(out);
    expect(r.ok).toBe(true);
    expect(r.findings).toEqual([]);
    expect(r.shards.count).toBe(5);
    expect(r.dtypes.map((d: { dtype: string }) => d.dtype)).toEqual(["F16"]);
    expect(r.model.dtype).toBe("float16");
  });

  it("FP8 → BF16 with --drop-mtp: no finding the source does not have, no quantization left", async () => {
    const out = join(await tempDir(), "bf16");
    const c = await runDsr(["convert", TINY_DSV3_FP8, "--to", "bf16", "--out", out, "--drop-mtp"]);
    expect(c.exitCode, c.stderr as string).toBe(0);
    const before = await inspect(TINY_DSV3_FP8);
    const after = await inspect(out);
    expect(after.ok).toBe(true);
    const known = new Set(before.findings.map((f: { code: string }) => f.code)); // the fixture has no tokenizer
    expect(after.findings.filter((f: { code: string }) => !known.has(f.code))).toEqual([]);
    expect(after.findings.filter((f: { severity: string }) => f.severity === "error")).toEqual([]);
    expect(after.quantization).toMatchObject({ method: "none", quantizedTensors: 0 });
    expect(after.model.moe.mtpLayers).toBe(0);
    expect(after.dtypes.map((d: { dtype: string }) => d.dtype).sort()).toEqual(["BF16", "F32"]);
  });
});
