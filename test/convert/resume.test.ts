/**
 * Interruption and resume with real child processes: Ctrl-C (SIGINT → exit 130) and SIGKILL in the
 * middle of a multi-shard conversion leave finished shards and `.partial` files only (no index);
 * re-runs keep the finished shards and produce exactly the files of an uninterrupted run.
 */
import { createHash } from "node:crypto";
import { readFile, readdir } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { runDsr } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { FP8_CONFIG, fp8Weight, writeCheckpoint } from "./helpers.js";

const SHARDS = 8;

async function doneShards(out: string): Promise<{ done: number; complete: boolean }> {
  try {
    const m = JSON.parse(await readFile(join(out, ".dsr-convert.json"), "utf8"));
    return { done: Object.keys(m.done).length, complete: m.complete };
  } catch {
    return { done: 0, complete: false };
  }
}

/**
 * Starts a conversion and sends `signal` as soon as it reports (with --verbose) its `atLeast`-th
 * finished shard in this run: event-driven, so a loaded machine cannot make the test miss the window.
 */
async function interruptAfter(src: string, out: string, atLeast: number, signal: NodeJS.Signals) {
  const child = runDsr(["convert", src, "--to", "bf16", "--out", out, "--threads", "1", "--verbose"]);
  let wrote = 0;
  let sent = false;
  child.stderr!.on("data", (d: Buffer) => {
    wrote += (d.toString().match(/^wrote model-/gm) ?? []).length;
    if (!sent && wrote >= atLeast) {
      sent = true;
      child.kill(signal);
    }
  });
  const r = await child;
  return { r, sent, doneAtSignal: (await doneShards(out)).done };
}

async function hashes(dir: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const f of (await readdir(dir)).filter((f) => !f.startsWith(".")).sort()) out[f] = createHash("sha256").update(await readFile(join(dir, f))).digest("hex");
  return out;
}

describe("resume after interruption", () => {
  let src: string;
  let reference: Record<string, string>;
  beforeAll(async () => {
    src = join(await tempDir(), "src");
    const { mkdir } = await import("node:fs/promises");
    await mkdir(src);
    const groups = [];
    for (let i = 0; i < SHARDS; i++) groups.push([...fp8Weight(`model.layers.${i}.mlp.up_proj.weight`, 2048, 4096), ...fp8Weight(`model.layers.${i}.mlp.down_proj.weight`, 4096, 2000)]);
    await writeCheckpoint(src, groups, { ...FP8_CONFIG, num_hidden_layers: SHARDS });
    const ref = join(await tempDir(), "ref");
    const r = await runDsr(["convert", src, "--to", "bf16", "--out", ref]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    reference = await hashes(ref);
  });

  it("SIGINT exits 130, SIGKILL leaves only .partial files, re-runs keep finished shards and match an uninterrupted run", async () => {
    const out = join(await tempDir(), "out");
    const first = await interruptAfter(src, out, 2, "SIGINT");
    expect(first.r.stderr).toMatch(/wrote model-00002-of-00008/);
    expect(first.sent).toBe(true);
    expect(first.r.exitCode, first.r.stderr as string).toBe(130);
    expect(first.r.stderr).toMatch(/convert interrupted/);
    await checkInterrupted(out);

    const second = await interruptAfter(src, out, 2, "SIGKILL");
    expect(second.sent).toBe(true);
    expect(second.r.signal).toBe("SIGKILL");
    const kept = await checkInterrupted(out);
    expect(kept).toBeGreaterThanOrEqual(first.doneAtSignal + 2); // 2 more shards were written before the kill

    const last = await runDsr(["convert", src, "--to", "bf16", "--out", out, "--json"]);
    expect(last.exitCode, last.stderr as string).toBe(0);
    const j = JSON.parse(last.stdout as string);
    const reused = j.shards.filter((s: { reused: boolean }) => s.reused).length;
    expect(reused).toBe(kept);
    expect(j.processedBytes).toBeLessThan(j.inputBytes);
    expect(await hashes(out)).toEqual(reference);
    expect((await readdir(out)).filter((f) => f.endsWith(".partial"))).toEqual([]);
  });

  it("a run with different options does not reuse the shards of another conversion", async () => {
    const out = join(await tempDir(), "out2");
    const a = await interruptAfter(src, out, 1, "SIGKILL");
    expect(a.sent).toBe(true);
    const r = await runDsr(["convert", src, "--to", "fp16", "--out", out, "--json"]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    const j = JSON.parse(r.stdout as string);
    expect(j.shards.every((s: { reused: boolean }) => !s.reused)).toBe(true);
    expect(j.processedBytes).toBe(j.inputBytes);
  });
});

/** After an interruption: no index, every shard file is a finished one from the manifest or a .partial. Returns the finished count. */
async function checkInterrupted(out: string): Promise<number> {
  const files = await readdir(out);
  expect(files).not.toContain("model.safetensors.index.json");
  const m = JSON.parse(await readFile(join(out, ".dsr-convert.json"), "utf8"));
  expect(m.complete).toBe(false);
  const finished = files.filter((f) => f.endsWith(".safetensors"));
  for (const f of finished) expect(Object.keys(m.done)).toContain(f); // a shard in place is always recorded
  expect(finished.length).toBeLessThan(SHARDS);
  for (const f of files) expect(f.endsWith(".safetensors") || f.endsWith(".partial") || f === "config.json" || f === ".dsr-convert.json").toBe(true);
  return finished.length;
}
