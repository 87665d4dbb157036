/**
 * Fuzzing the input side of convert: random byte flips, truncations and JSON damage in the index,
 * config and shard headers must end in a DsrError with a message (or a valid plan), never in a
 * crash such as a TypeError. Seeds are fixed so a failure reproduces.
 */
import { cp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { isDsrError } from "../../src/engine/errors.js";
import { planCheckpointConversion } from "../../src/engine/transform/convert.js";
import { parseByteSize } from "../../src/commands/flags.js";
import { TINY_DSV3_FP8 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";

const rng = seededRandom; // mulberry32: failures reproduce from their seed

const OPTS = { to: "BF16" as const, dropMtp: true, keepDtype: [] };

describe("convert input fuzzing", () => {
  let dir: string;
  const originals = new Map<string, Buffer>();
  const FILES = ["model.safetensors.index.json", "config.json", "model-00001-of-00003.safetensors", "model-00003-of-00003.safetensors"];
  beforeAll(async () => {
    dir = join(await tempDir(), "src");
    await cp(TINY_DSV3_FP8, dir, { recursive: true });
    for (const f of FILES) originals.set(f, await readFile(join(dir, f)));
  });

  it("damaged index, config and headers give a DsrError or a plan, never a crash", async () => {
    const r = rng(7);
    const outcomes = { plan: 0, error: 0 };
    for (let i = 0; i < 300; i++) {
      const f = FILES[Math.floor(r() * FILES.length)];
      const orig = originals.get(f)!;
      const b = Buffer.from(orig);
      // Headers live in the first few KB of a shard: damage there, or truncate anywhere.
      const span = f.endsWith(".safetensors") ? Math.min(orig.length, 6000) : orig.length;
      const mode = r();
      let damaged: Buffer = b;
      if (mode < 0.6) {
        for (let k = 0, n = 1 + Math.floor(r() * 4); k < n; k++) b[Math.floor(r() * span)] = Math.floor(r() * 256);
      } else if (mode < 0.8) {
        damaged = b.subarray(0, Math.floor(r() * orig.length));
      } else {
        // Structural JSON damage: swap two printable characters of the JSON text.
        const i1 = f.endsWith(".safetensors") ? 8 + Math.floor(r() * 200) : Math.floor(r() * span);
        const i2 = f.endsWith(".safetensors") ? 8 + Math.floor(r() * 200) : Math.floor(r() * span);
        [b[i1], b[i2]] = [b[i2], b[i1]];
      }
      await writeFile(join(dir, f), damaged);
      try {
        await planCheckpointConversion(dir, OPTS);
        outcomes.plan++;
      } catch (e) {
        if (!isDsrError(e)) throw new Error(`iteration ${i} (${f}, mode ${mode.toFixed(2)}): not a DsrError: ${(e as Error)?.stack}`);
        expect(e.message.length).toBeGreaterThan(10);
        expect(e.message).not.toContain("\n");
        outcomes.error++;
      } finally {
        await writeFile(join(dir, f), orig);
      }
    }
    expect(outcomes.error).toBeGreaterThan(100);
  });

  it("parseByteSize accepts sizes with units and rejects everything else with a usage error", () => {
    expect(parseByteSize("5GB")).toBe(5e9);
    expect(parseByteSize("4GiB")).toBe(4 * 2 ** 30);
    expect(parseByteSize("1.5 mb")).toBe(1.5e6);
    expect(parseByteSize("1234")).toBe(1234);
    const r = rng(9);
    const alphabet = "0123456789.GgMmKkTtBbiI -e+";
    for (let i = 0; i < 2000; i++) {
      const s = Array.from({ length: 1 + Math.floor(r() * 8) }, () => alphabet[Math.floor(r() * alphabet.length)]).join("");
      try {
        const n = parseByteSize(s);
        expect(Number.isSafeInteger(n) && n > 0).toBe(true);
      } catch (e) {
        expect(isDsrError(e) && e.exitCode === 2).toBe(true);
      }
    }
  });
});
