/**
 * `dsr chat` and `dsr convert --to onnx` as real child processes of the built CLI: a safetensors
 * checkpoint is converted on first use into $XDG_CACHE_HOME and reused; --json gives the split
 * reasoning/answer with usage; errors are one line with the right exit code.
 */
import { readdir } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { runDsr, TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";

const Q = "What is 905 - 268? Please reason step by step, and put your final answer within \\boxed{}.";
let cache: string;
beforeAll(async () => {
  cache = await tempDir("dsr-xdg-");
});

describe("dsr chat", () => {
  it("one-shot --json: converts on first use, caches, answers correctly", async () => {
    const env = { XDG_CACHE_HOME: cache };
    const r = await runDsr(["--json", "chat", TINY_R1, Q, "--temperature", "0"], { env });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const j = JSON.parse(String(r.stdout));
    expect(j.answer).toBe("The answer is \\boxed{637}.");
    expect(j.reasoning).toContain("So 905 - 268 = 637.");
    expect(j.reasoning).not.toContain("<think>");
    expect(j.finish_reason).toBe("stop");
    expect(j.usage.prompt_tokens).toBe(32);
    expect(j.usage.completion_tokens).toBeGreaterThan(10);
    expect(j.tokens_per_second).toBeGreaterThan(0);
    const cached = await readdir(join(cache, "dsr", "onnx"));
    expect(cached).toHaveLength(1);
    expect(await readdir(join(cache, "dsr", "onnx", cached[0]!))).toContain("dsr-onnx.json");
    // Second run reuses the conversion (same folder, still one entry) and gives the same greedy answer.
    const r2 = await runDsr(["--json", "chat", TINY_R1, Q, "--temperature", "0"], { env });
    expect(JSON.parse(String(r2.stdout)).answer).toBe(j.answer);
    expect(await readdir(join(cache, "dsr", "onnx"))).toEqual(cached);
  });

  it("streams reasoning and answer as text; --no-think hides the reasoning", async () => {
    const env = { XDG_CACHE_HOME: cache };
    const r = await runDsr(["chat", TINY_R1, Q, "--temperature", "0"], { env });
    expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
    expect(String(r.stdout), String(r.stderr)).toMatch(/<think>\n5 - 8 is negative[\s\S]*<\/think>\n\nThe answer is \\boxed\{637\}\./);
    expect(String(r.stderr)).toMatch(/tok\/s/);
    const q = await runDsr(["chat", TINY_R1, Q, "--temperature", "0", "--no-think"], { env });
    expect(String(q.stdout).trim(), `${q.stderr}`).toBe("The answer is \\boxed{637}.");
  });

  it("interactive mode reads turns from stdin until EOF", async () => {
    const r = await runDsr(["chat", TINY_R1, "--temperature", "0", "--no-think"], { env: { XDG_CACHE_HOME: cache }, input: `${Q}\n/reset\n${Q.replace("905 - 268", "41 + 23")}\n` });
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(String(r.stdout)).toContain("\\boxed{637}");
    expect(String(r.stdout)).toContain("\\boxed{64}");
  });

  it("bad flags and missing models are one-line errors with exit 2", async () => {
    const a = await runDsr(["chat", TINY_R1, "hi", "--temperature", "-1"]);
    expect(a.exitCode).toBe(2);
    expect(String(a.stderr)).toMatch(/--temperature -1: must be/);
    const b = await runDsr(["chat", "/nonexistent/model", "hi"]);
    expect(b.exitCode).toBe(2);
    expect(String(b.stderr)).toMatch(/not a model directory/);
  });
});

describe("dsr convert --to onnx", () => {
  it("builds an int8 folder the engine runs, detects up-to-date output, refuses a different one without --overwrite", async () => {
    const out = join(await tempDir(), "onnx-int8");
    const r = await runDsr(["--json", "convert", TINY_R1, "--to", "onnx", "--weights", "int8", "--block-size", "64", "--out", out]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const j = JSON.parse(String(r.stdout));
    expect(j).toMatchObject({ built: true, weights: "int8", blockSize: 64, modelType: "qwen2", io: { numLayers: 6, kvHeads: 2, headDim: 64, vocabSize: 2048 } });
    expect(await readdir(out)).toEqual(expect.arrayContaining(["model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json", "dsr-onnx.json"]));
    const again = await runDsr(["--json", "convert", TINY_R1, "--to", "onnx", "--weights", "int8", "--block-size", "64", "--out", out]);
    expect(JSON.parse(String(again.stdout)).built).toBe(false);
    const other = await runDsr(["convert", TINY_R1, "--to", "onnx", "--weights", "int4", "--out", out]);
    expect(other.exitCode).toBe(2);
    expect(String(other.stderr)).toMatch(/not empty/);
    const chat = await runDsr(["--json", "chat", out, Q, "--temperature", "0"]);
    expect(JSON.parse(String(chat.stdout)).answer).toBe("The answer is \\boxed{637}.");
    const bad = await runDsr(["convert", TINY_R1, "--to", "onnx", "--weights", "int3", "--out", join(out, "x")]);
    expect(bad.exitCode).toBe(2);
    const foreign = await runDsr(["convert", TINY_R1, "--to", "onnx", "--drop-mtp", "--out", join(out, "y")]);
    expect(foreign.exitCode).toBe(2);
    expect(String(foreign.stderr)).toMatch(/--drop-mtp: not used by --to onnx/);
  });

  it("--dry-run estimates the output within 5% (4 KiB tensor alignment aside) and writes nothing", async () => {
    const out = join(await tempDir(), "dry");
    const plan = JSON.parse(String((await runDsr(["--json", "convert", TINY_R1, "--to", "onnx", "--weights", "int4", "--dry-run", "--out", out])).stdout));
    expect(plan).toMatchObject({ dryRun: true, to: "onnx", modelType: "qwen2", layers: 6, weights: "int4", blockSize: 32, upToDate: false });
    await expect(readdir(out)).rejects.toThrow();
    const built = JSON.parse(String((await runDsr(["--json", "convert", TINY_R1, "--to", "onnx", "--weights", "int4", "--out", out])).stdout));
    expect(Math.abs(plan.estimatedDataBytes - built.dataBytes) / built.dataBytes).toBeLessThan(0.05);
    const again = JSON.parse(String((await runDsr(["--json", "convert", TINY_R1, "--to", "onnx", "--weights", "int4", "--dry-run", "--out", out])).stdout));
    expect(again.upToDate).toBe(true);
  });
});
