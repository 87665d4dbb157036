/** Resume state (per-block progress vs durable counts across reboots) and the ordered hasher under random part orders. */
import { createHash } from "node:crypto";
import { open, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { HashPool } from "../../src/engine/hub/download/hash-pool.js";
import { OrderedHasher } from "../../src/engine/hub/download/hasher.js";
import { ProgressFile, bootId, loadState, saveState, splitParts } from "../../src/engine/hub/download/state.js";
import { tempDir } from "../support/tmp.js";

describe("resume state", () => {
  it("trusts per-block progress on the same boot and only durable counts after a reboot", async () => {
    const dir = await tempDir();
    const partial = join(dir, "f.dsr-partial");
    const state = `${partial}.json`;
    await writeFile(partial, Buffer.alloc(1000));
    const parts = splitParts(1000, 300);
    expect(parts.map((p) => [p.start, p.end])).toEqual([[0, 300], [300, 600], [600, 900], [900, 1000]]);
    await saveState(state, { path: "f", size: 1000, digest: "sha256:ab", parts: parts.map((p, i) => ({ start: p.start, end: p.end, durable: i === 0 ? 100 : 0 })) });
    const pf = await ProgressFile.open(state, parts);
    await pf.record(0, 250);
    await pf.record(2, 300);
    await pf.close();
    const same = await loadState(state, partial, { size: 1000, digest: "sha256:ab" });
    expect(same?.map((p) => p.done)).toEqual([250, 0, 300, 0]);

    const raw = JSON.parse(await readFile(state, "utf8"));
    expect(raw.bootId).toBe(await bootId());
    await writeFile(state, JSON.stringify({ ...raw, bootId: "another-boot" }));
    const rebooted = await loadState(state, partial, { size: 1000, digest: "sha256:ab" });
    expect(rebooted?.map((p) => p.done)).toEqual([100, 0, 0, 0]);

    // Other content, a truncated partial, or junk: start over.
    expect(await loadState(state, partial, { size: 1000, digest: "sha256:cd" })).toBeUndefined();
    await writeFile(partial, Buffer.alloc(999));
    expect(await loadState(state, partial, { size: 1000, digest: "sha256:ab" })).toBeUndefined();
    await writeFile(partial, Buffer.alloc(1000));
    await writeFile(state, "{not json");
    expect(await loadState(state, partial, { size: 1000, digest: "sha256:ab" })).toBeUndefined();
  });
  it("reads split parts stored out of file order (slot = JSON index); parts that do not tile the file are refused", async () => {
    const dir = await tempDir();
    const partial = join(dir, "g.dsr-partial");
    const state = `${partial}.json`;
    await writeFile(partial, Buffer.alloc(1000));
    // [0,1000) split twice while running: the appended parts come after the ones they were cut from.
    const parts = [
      { start: 0, end: 400, done: 0, durable: 0 },
      { start: 700, end: 1000, done: 0, durable: 0 },
      { start: 400, end: 700, done: 0, durable: 0 },
    ];
    await saveState(state, { path: "g", size: 1000, digest: "size", parts: parts.map((p) => ({ start: p.start, end: p.end, durable: 0 })) });
    const pf = await ProgressFile.open(state, parts);
    await pf.record(1, 120);
    await pf.record(2, 300);
    await pf.close();
    const got = await loadState(state, partial, { size: 1000, digest: "size" });
    expect(got?.map((p) => [p.start, p.end, p.done])).toEqual([[0, 400, 0], [700, 1000, 120], [400, 700, 300]]);
    for (const bad of [
      [{ start: 0, end: 400 }, { start: 300, end: 1000 }], // overlap
      [{ start: 0, end: 400 }, { start: 500, end: 1000 }], // gap
      [{ start: 0, end: 400 }, { start: 400, end: 900 }], // short
    ]) {
      await saveState(state, { path: "g", size: 1000, digest: "size", parts: bad.map((p) => ({ ...p, durable: 0 })) });
      expect(await loadState(state, partial, { size: 1000, digest: "size" })).toBeUndefined();
    }
  });
});

describe("ordered hasher", () => {
  it.each([
    ["on the main thread", 0],
    ["in a worker thread", 2],
  ])("gives the right digest whatever order parts and blocks arrive in, reading back only what arrived ahead (%s)", async (_, threads) => {
    const dir = await tempDir();
    const pool = threads ? new HashPool(threads) : undefined;
    for (let trial = 0; trial < 25; trial++) {
      const size = 1 + Math.floor(Math.random() * 200_000);
      const data = Buffer.alloc(size);
      for (let i = 0; i < size; i++) data[i] = (i * 31 + trial) & 0xff;
      const want = createHash("sha256").update(data).digest("hex");
      const path = join(dir, `t${trial}`);
      const fh = await open(path, "w+");
      await fh.truncate(size);
      const parts = splitParts(size, 1 + Math.floor(Math.random() * 50_000));
      const h = new OrderedHasher({ algo: "sha256", hex: want }, size, parts, async () => fh, pool);
      // Interleave blocks of all parts randomly, each part's blocks in order (as connections deliver them).
      const queues = parts.map((p) => {
        const blocks: [number, number][] = [];
        for (let s = p.start; s < p.end; ) {
          const n = Math.min(p.end - s, 1 + Math.floor(Math.random() * 9000));
          blocks.push([s, n]);
          s += n;
        }
        return blocks;
      });
      let inOrder = true;
      while (queues.some((q) => q.length)) {
        const live = queues.map((q, i) => (q.length ? i : -1)).filter((i) => i >= 0);
        const qi = trial % 5 === 0 ? live[0] : live[Math.floor(Math.random() * live.length)];
        if (qi !== live[0]) inOrder = false;
        const [s, n] = queues[qi].shift()!;
        await fh.write(data, s, n, s);
        parts[qi].done += n;
        await h.offer(Uint8Array.from(data.subarray(s, s + n)), s, true); // owned blocks may be transferred
        if (Math.random() < 0.3) await new Promise((r) => setImmediate(r));
      }
      expect(await h.finish(), `trial ${trial}`).toBe(want);
      if (inOrder) expect(h.readBack).toBe(0); // strictly in-order arrival is hashed from memory only
      expect(h.readBack).toBeLessThanOrEqual(size);
      await fh.close();
    }
    await pool?.close();
  });

  it("computes the git blob sha1 for small files", async () => {
    const data = Buffer.from('{"a":1}');
    const parts = splitParts(data.length, 1 << 20);
    const h = new OrderedHasher({ algo: "gitsha1", hex: "" }, data.length, parts, async () => {
      throw new Error("no read-back needed");
    });
    parts[0].done = data.length;
    h.offer(data, 0);
    expect(await h.finish()).toBe(createHash("sha1").update(`blob ${data.length}\0`).update(data).digest("hex"));
  });
});
