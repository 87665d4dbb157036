/**
 * Every corrupt variant of every tiny fixture is reported as an error finding that names its file
 * and tensor; the clean fixtures have no error findings. Engine level (the CLI test checks exit 3).
 */
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { openCheckpoint, openLocalSource } from "../../src/engine/checkpoint/index.js";
import { CORRUPTIONS, TINY_KINDS, writeTinyCheckpoint } from "../support/fixtures.js";
import { tempDir } from "../support/tmp.js";

const root = await tempDir("dsr-corrupt-");

describe("clean tiny checkpoints", () => {
  for (const kind of TINY_KINDS) {
    it(`${kind}: no error findings`, async () => {
      const ck = await writeTinyCheckpoint(join(root, `clean-${kind}`), kind);
      const got = await openCheckpoint(await openLocalSource(ck.dir));
      expect(got.findings.filter((f) => f.severity === "error")).toEqual([]);
      expect(got.tensors.size).toBe(ck.shards.reduce((a, s) => a + s.entries.length, 0));
      expect(got.shards.every((s) => s.status === "ok")).toBe(true);
    });
  }
});

describe("corrupt variants", () => {
  for (const c of CORRUPTIONS) {
    for (const kind of c.kinds) {
      it(`${kind} / ${c.id} → ${c.code}`, async () => {
        const ck = await writeTinyCheckpoint(join(root, `${kind}-${c.id}`), kind);
        const where = await c.apply(ck);
        const got = await openCheckpoint(await openLocalSource(ck.dir));
        const hit = got.findings.find((f) => f.code === c.code);
        expect(hit, JSON.stringify(got.findings, null, 1)).toBeDefined();
        expect(hit!.severity).toBe("error");
        if (where.file) {
          expect(hit!.file).toBe(where.file);
          expect(hit!.message).toContain(where.file);
        }
        if (where.tensor) {
          expect(hit!.tensor).toBe(where.tensor);
          expect(hit!.message).toContain(where.tensor);
        }
      });
    }
  }
});
