/**
 * `dsr convert` as a user runs it (the built CLI in a child process): casts in every direction,
 * re-sharding with and without a dtype change, --drop-mtp, small files, and bad inputs that must
 * fail with exit 3 and a one-line error naming the tensor and file, before anything is finalised.
 */
import { cp, readFile, readdir, truncate, writeFile, mkdir, symlink, lstat } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readHeaderFromFile } from "../../src/engine/tensors/read.js";
import { writeSafetensors } from "../../src/engine/tensors/write.js";
import { TINY_DSV3_FP8, TINY_R1, runDsr } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { loadCheckpoint, loadShard } from "./helpers.js";
import { bitsOf, fromBits, refF16 } from "./reference.js";

async function convert(args: string[]) {
  const r = await runDsr(["convert", ...args, "--json"]);
  return { ...r, json: r.stdout ? JSON.parse(r.stdout as string) : undefined };
}

describe("casts", () => {
  it("BF16 → F32 is exact, F32 → BF16 gives the original bytes back, small files are copied", async () => {
    const dir = await tempDir();
    const r32 = await convert([TINY_R1, "--to", "fp32", "--out", join(dir, "f32")]);
    expect(r32.exitCode, r32.stderr as string).toBe(0);
    expect(r32.json.tensors.cast).toBe(75);
    const src = await loadCheckpoint(TINY_R1);
    const f32 = await loadCheckpoint(join(dir, "f32"));
    for (const [name, s] of src) {
      const d = f32.get(name)!;
      expect(d.info.dtype).toBe("F32");
      const a = new Uint16Array(s.data.buffer.slice(s.data.byteOffset, s.data.byteOffset + s.data.byteLength));
      const b = new Uint32Array(d.data.buffer.slice(d.data.byteOffset, d.data.byteOffset + d.data.byteLength));
      for (let i = 0; i < a.length; i++) if (b[i] !== a[i] << 16 >>> 0) expect([name, i, b[i]]).toEqual([name, i, a[i] << 16 >>> 0]);
    }
    expect(JSON.parse(await readFile(join(dir, "f32", "config.json"), "utf8")).torch_dtype).toBe("float32");
    for (const f of ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]) {
      expect(Buffer.compare(await readFile(join(dir, "f32", f)), await readFile(join(TINY_R1, f)))).toBe(0);
    }
    const back = await convert([join(dir, "f32"), "--to", "bf16", "--out", join(dir, "back")]);
    expect(back.exitCode, back.stderr as string).toBe(0);
    const bf = await loadCheckpoint(join(dir, "back"));
    for (const [name, s] of src) expect(Buffer.compare(bf.get(name)!.data, s.data), name).toBe(0);
  });

  it("BF16 → F16 rounds every element to nearest even (checked against the reference)", async () => {
    const dir = await tempDir();
    const r = await convert([TINY_R1, "--to", "fp16", "--out", join(dir, "f16"), "--threads", "2"]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    const src = await loadCheckpoint(TINY_R1);
    const f16 = await loadCheckpoint(join(dir, "f16"));
    let n = 0;
    for (const [name, s] of src) {
      const a = new Uint16Array(s.data.buffer.slice(s.data.byteOffset, s.data.byteOffset + s.data.byteLength));
      const d = f16.get(name)!;
      expect(d.info.dtype).toBe("F16");
      const b = new Uint16Array(d.data.buffer.slice(d.data.byteOffset, d.data.byteOffset + d.data.byteLength));
      for (let i = 0; i < a.length; i++, n++) {
        const want = refF16(fromBits(a[i] << 16), a[i] << 16);
        if (b[i] !== want) expect([name, i, b[i]]).toEqual([name, i, want]);
      }
    }
    expect(n).toBeGreaterThan(5_000_000);
    expect(bitsOf(1)).toBe(0x3f800000);
  });
});

describe("re-sharding", () => {
  it("splits with no dtype change: byte-identical tensors, shards within the limit, a correct index", async () => {
    const dir = await tempDir();
    const out = join(dir, "split");
    const r = await convert([TINY_R1, "--to", "bf16", "--out", out, "--max-shard-size", "2MB"]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    expect(r.json.tensors).toMatchObject({ cast: 0, dequantized: 0, copied: 75 });
    const files = (await readdir(out)).filter((f) => f.endsWith(".safetensors")).sort();
    expect(files.length).toBeGreaterThan(4);
    files.forEach((f, i) => expect(f).toBe(`model-${String(i + 1).padStart(5, "0")}-of-${String(files.length).padStart(5, "0")}.safetensors`));
    for (const f of files) {
      const h = await readHeaderFromFile(join(out, f)); // full validation of the written file
      expect(h.dataSize <= 2e6 || h.tensors.length === 1).toBe(true);
    }
    const idx = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
    const src = await loadCheckpoint(TINY_R1);
    const dst = await loadCheckpoint(out);
    expect(idx.metadata.total_size).toBe([...src.values()].reduce((a, t) => a + t.data.byteLength, 0));
    for (const [name, s] of src) expect(Buffer.compare(dst.get(name)!.data, s.data)).toBe(0);
  });

  it("merges three FP8 shards into one model.safetensors (no index, like save_pretrained)", async () => {
    const out = join(await tempDir(), "merged");
    const r = await convert([TINY_DSV3_FP8, "--to", "bf16", "--out", out, "--max-shard-size", "10GB"]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    expect((await readdir(out)).filter((f) => f.includes("safetensors")).sort()).toEqual(["model.safetensors"]);
    const h = await readHeaderFromFile(join(out, "model.safetensors"));
    expect(h.tensors.length).toBe(r.json.tensors.dequantized + r.json.tensors.copied);
  });
});

describe("--dry-run and Hugging Face cache snapshots", () => {
  it("--dry-run validates and lists exactly the shards a real run writes, and writes nothing", async () => {
    const dir = await tempDir();
    const args = [TINY_DSV3_FP8, "--to", "bf16", "--max-shard-size", "4MB", "--drop-mtp"];
    const dry = await convert([...args, "--out", join(dir, "dry"), "--dry-run"]);
    expect(dry.exitCode, dry.stderr as string).toBe(0);
    expect(dry.json.dryRun).toBe(true);
    await expect(readdir(join(dir, "dry"))).rejects.toThrow();
    const real = await convert([...args, "--out", join(dir, "real")]);
    expect(real.exitCode, real.stderr as string).toBe(0);
    expect(dry.json.shards).toEqual(real.json.shards.map((s: { file: string; bytes: number; tensors: number }) => ({ file: s.file, bytes: s.bytes, tensors: s.tensors })));
    expect(dry.json.totalSize).toBe(real.json.totalSize);
  });

  it("follows symlinks of a cache snapshot and copies the tokenizer as a real file", async () => {
    const snap = join(await tempDir(), "snapshot");
    await mkdir(snap);
    for (const f of await readdir(TINY_R1)) await symlink(join(TINY_R1, f), join(snap, f));
    const out = join(await tempDir(), "out");
    const r = await convert([snap, "--to", "fp16", "--out", out]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    expect(r.json.copiedFiles).toEqual(expect.arrayContaining(["tokenizer.json", "tokenizer_config.json", "generation_config.json"]));
    expect((await lstat(join(out, "tokenizer.json"))).isSymbolicLink()).toBe(false);
    expect(Buffer.compare(await readFile(join(out, "tokenizer.json")), await readFile(join(TINY_R1, "tokenizer.json")))).toBe(0);
  });
});

describe("--drop-mtp", () => {
  it("leaves out model.layers.N for N ≥ num_hidden_layers and says so in config.json", async () => {
    const out = join(await tempDir(), "nomtp");
    const r = await convert([TINY_DSV3_FP8, "--to", "bf16", "--out", out, "--drop-mtp"]);
    expect(r.exitCode, r.stderr as string).toBe(0);
    const src = await loadCheckpoint(TINY_DSV3_FP8);
    const mtp = [...src.keys()].filter((k) => k.startsWith("model.layers.3."));
    expect(mtp.length).toBeGreaterThan(10);
    expect(r.json.tensors.droppedMtp).toBe(mtp.length);
    const dst = await loadCheckpoint(out);
    expect([...dst.keys()].filter((k) => k.startsWith("model.layers.3."))).toEqual([]);
    expect(dst.has("model.layers.2.self_attn.o_proj.weight")).toBe(true);
    const cfg = JSON.parse(await readFile(join(out, "config.json"), "utf8"));
    expect(cfg.num_nextn_predict_layers).toBe(0);
    const idx = JSON.parse(await readFile(join(out, "model.safetensors.index.json"), "utf8"));
    expect(Object.keys(idx.weight_map).length).toBe(dst.size);
  });
});

describe("bad inputs fail before anything is finalised", () => {
  /** A writable copy of the tiny FP8 checkpoint with one shard rewritten by `edit`. */
  async function brokenCopy(edit: (dir: string) => Promise<void>): Promise<string> {
    const dir = join(await tempDir(), "src");
    await cp(TINY_DSV3_FP8, dir, { recursive: true });
    await edit(dir);
    return dir;
  }
  async function rewriteShard(dir: string, file: string, fn: (ts: { name: string; dtype: never; shape: number[]; data: Uint8Array }[]) => typeof ts) {
    const s = await loadShard(join(dir, file));
    const ts = s.header.tensors.map((t) => ({ name: t.name, dtype: t.dtype as never, shape: t.shape, data: s.tensor(t.name)!.data }));
    const next = fn(ts);
    await writeSafetensors(join(dir, file), next, { metadata: s.header.metadata });
    const idxPath = join(dir, "model.safetensors.index.json");
    const idx = JSON.parse(await readFile(idxPath, "utf8"));
    for (const t of ts) if (!next.some((n) => n.name === t.name)) delete idx.weight_map[t.name];
    await writeFile(idxPath, JSON.stringify(idx));
  }
  async function expectRefused(src: string, pattern: RegExp) {
    const out = join(await tempDir(), "out");
    const r = await runDsr(["convert", src, "--to", "bf16", "--out", out]);
    expect(r.exitCode, r.stderr as string).toBe(3);
    const lines = (r.stderr as string).trim().split("\n");
    expect(lines[0]).toMatch(/^error: /);
    expect(lines[0]).toMatch(pattern);
    expect(lines.length).toBeLessThanOrEqual(2); // the error line and its hint
    const left = await readdir(out).catch(() => []);
    expect(left.filter((f) => f.endsWith(".safetensors") || f.endsWith(".json"))).toEqual([]);
  }

  it("a missing scale names the weight and its file", async () => {
    const w = "model.layers.0.self_attn.q_a_proj.weight";
    const src = await brokenCopy((d) => rewriteShard(d, "model-00001-of-00003.safetensors", (ts) => ts.filter((t) => t.name !== w + "_scale_inv")));
    await expectRefused(src, new RegExp(`model-00001-of-00003\\.safetensors: tensor "${w.replace(/\./g, "\\.")}" is FP8 but its scale .* is in no shard`));
  });
  it("a scale of the wrong shape names the scale, its shape and the one expected", async () => {
    const s = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv";
    const src = await brokenCopy((d) =>
      rewriteShard(d, "model-00001-of-00003.safetensors", (ts) => ts.map((t) => (t.name === s ? { ...t, shape: [1, 2], data: t.data.subarray(0, 8) } : t))),
    );
    await expectRefused(src, /scale "model\.layers\.0\.self_attn\.kv_a_proj_with_mqa\.weight_scale_inv" is F32 \[1,2\] but weight \[160,256\] needs F32 \[2,2\]/);
  });
  it("an unknown dtype names the tensor and file", async () => {
    const src = await brokenCopy(async (d) => {
      const p = join(d, "model-00001-of-00003.safetensors");
      const b = await readFile(p);
      const at = b.indexOf('"dtype":"BF16"');
      expect(at).toBeGreaterThan(0);
      b.write('"dtype":"XF16"', at);
      await writeFile(p, b);
    });
    await expectRefused(src, /model-00001-of-00003\.safetensors: tensor ".*" has unknown dtype "XF16"/);
  });
  it("a dtype convert cannot cast (F64) names the tensor and the way out", async () => {
    const dir = join(await tempDir(), "f64");
    await mkdir(dir);
    await writeSafetensors(join(dir, "model.safetensors"), [
      { name: "a.weight", dtype: "BF16", shape: [2], data: new Uint8Array(4) },
      { name: "b.weight", dtype: "F64", shape: [2], data: new Uint8Array(16) },
    ]);
    await expectRefused(dir, /tensor "b\.weight" has dtype F64, which convert cannot cast to BF16/);
    const out = join(await tempDir(), "kept");
    const ok = await runDsr(["convert", dir, "--to", "bf16", "--out", out, "--keep-dtype", "b.*"]);
    expect(ok.exitCode, ok.stderr as string).toBe(0);
    expect((await readHeaderFromFile(join(out, "model.safetensors"))).tensors.find((t) => t.name === "b.weight")!.dtype).toBe("F64");
  });
  it("a truncated shard names the file", async () => {
    const src = await brokenCopy(async (d) => {
      const p = join(d, "model-00002-of-00003.safetensors");
      const { size } = await import("node:fs/promises").then((m) => m.stat(p));
      await truncate(p, size - 100);
    });
    await expectRefused(src, /model-00002-of-00003\.safetensors: data buffer is \d+ bytes but the header describes \d+ \(file truncated\)/);
  });
  it("refuses a non-empty output folder and an unknown --to (exit 2)", async () => {
    const out = await tempDir();
    await writeFile(join(out, "notes.txt"), "mine");
    const r = await runDsr(["convert", TINY_R1, "--to", "bf16", "--out", out]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/folder is not empty \(notes\.txt\)/);
    const r2 = await runDsr(["convert", TINY_R1, "--to", "int3", "--out", join(out, "x")]);
    expect(r2.exitCode).toBe(2);
    expect(r2.stderr).toMatch(/--to int3: unknown target/);
  });
});
