/**
 * Conversions are tied to their source: a dsr ONNX folder whose checkpoint changed is refused with
 * DSR_ONNX_STALE, and the first-use cache keys on the checkpoint fingerprint, so an edited checkpoint
 * gets a fresh conversion while an unchanged one reuses the cached folder.
 */
import { cp, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { convertToOnnx } from "../../src/engine/onnx/build.js";
import { openEmbeddedEngine } from "../../src/engine/runtime/embedded/index.js";
import { TINY_R1 } from "./support.js";
import { tempDir } from "../support/tmp.js";

describe("conversion staleness", () => {
  it("refuses an ONNX folder whose source changed; the cache re-converts an edited checkpoint", async () => {
    const root = await tempDir();
    const src = join(root, "model");
    await cp(TINY_R1, src, { recursive: true });
    const onnx = join(root, "onnx");
    await convertToOnnx(src, onnx, { weights: "int8" });
    const cache = join(root, "cache");

    const a = await openEmbeddedEngine(onnx, { worker: false, maxBatch: 1, maxContext: 64 });
    await a.engine.close();
    const first = await openEmbeddedEngine(src, { worker: false, cacheDir: cache, maxBatch: 1, maxContext: 64 });
    await first.engine.close();
    expect(first.info.converted).toBe(true);
    const again = await openEmbeddedEngine(src, { worker: false, cacheDir: cache, maxBatch: 1, maxContext: 64 });
    await again.engine.close();
    expect(again.info.converted).toBe(false);
    expect(again.info.onnxDir).toBe(first.info.onnxDir);

    // Edit the checkpoint: config.json is part of the fingerprint.
    const cfg = JSON.parse(await readFile(join(src, "config.json"), "utf8"));
    await writeFile(join(src, "config.json"), JSON.stringify({ ...cfg, rms_norm_eps: 1e-5 }));
    await expect(openEmbeddedEngine(onnx, { worker: false })).rejects.toMatchObject({ code: "DSR_ONNX_STALE" });
    const edited = await openEmbeddedEngine(src, { worker: false, cacheDir: cache, maxBatch: 1, maxContext: 64 });
    await edited.engine.close();
    expect(edited.info.converted).toBe(true);
    expect(edited.info.onnxDir).not.toBe(first.info.onnxDir);
    expect((await readdir(cache)).filter((d) => !d.includes(".partial"))).toHaveLength(2);
  });
});
