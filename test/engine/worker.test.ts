/**
 * The worker-thread engine (what the built CLI and `dsr serve` use): the bundled dist/embedded-worker.mjs
 * (built by `npm run build`) gives the same greedy tokens as the in-thread scheduler, keeps the event
 * loop free while it computes, throws request errors synchronously, cancels, reports stats and closes.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { DsrError } from "../../src/engine/errors.js";
import { readManifest, type OnnxManifest } from "../../src/engine/onnx/build.js";
import { openEmbeddedEngine } from "../../src/engine/runtime/embedded/index.js";
import { openWorkerEngine } from "../../src/engine/runtime/embedded/worker-engine.js";
import { ROOT } from "../support/cli.js";
import { arithmeticProblems, buildTiny, collect, GREEDY } from "./support.js";

const WORKER = join(ROOT, "dist", "embedded-worker.mjs");
let dir: string;
let manifest: OnnxManifest;
beforeAll(async () => {
  if (!existsSync(WORKER)) throw new Error("dist/embedded-worker.mjs is missing: run `npm run build` first");
  dir = await buildTiny("fp32");
  manifest = (await readManifest(dir))!;
});

describe("the embedded engine worker thread", () => {
  it("matches the in-thread engine token for token, with the event loop free during steps", async () => {
    const inThread = await openEmbeddedEngine(dir, { threads: 1, maxBatch: 4, maxContext: 256, worker: false });
    const { text } = inThread;
    const prompts = arithmeticProblems(4, 3).map((p) => text.encode(text.applyChatTemplate([{ role: "user", content: p.question }])));
    const want = await Promise.all(prompts.map((p) => collect(inThread.engine, p, 80, text.eosTokenIds)));
    await inThread.engine.close();

    const w = await openWorkerEngine(pathToFileURL(WORKER), dir, manifest, { threads: 1, maxBatch: 4, maxContext: 256 }, { maxBatch: 4, maxContext: 256, prefillChunk: 8, prefillChunkIdle: 512 });
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const t0 = performance.now();
    const got = await Promise.all(prompts.map((p) => collect(w, p, 80, text.eosTokenIds)));
    const ms = performance.now() - t0;
    clearInterval(timer);
    expect(got.map((g) => g.ids)).toEqual(want.map((x) => x.ids));
    // A blocked event loop would tick about once per engine step; free, it ticks about every ms.
    expect(ticks).toBeGreaterThan(ms / 10);
    expect(w.stats()).toMatchObject({ running: 0, waiting: 0, kvCapacityTokens: 4 * 256, maxContext: 256, kvBytesPerToken: 6144 });
    expect(w.counters.decodeTokens).toBeGreaterThan(0);

    expect(() => w.submit({ promptIds: new Array(400).fill(1), sampling: GREEDY, maxTokens: 5, stopIds: [] })).toThrow(DsrError);
    const controller = new AbortController();
    let n = 0;
    let finish: string | undefined;
    for await (const c of w.submit({ promptIds: prompts[0]!, sampling: GREEDY, maxTokens: 200, stopIds: [], signal: controller.signal })) {
      n += c.ids.length;
      if (n === 2) controller.abort();
      finish = c.finish ?? finish;
    }
    expect(finish).toBe("abort");
    expect(n).toBeLessThan(10);
    await w.close();
    expect(() => w.submit({ promptIds: [1], sampling: GREEDY, maxTokens: 1, stopIds: [] })).toThrow(/closed/);
  });

  it("reports a model that cannot be loaded as a DsrError", async () => {
    await expect(openWorkerEngine(pathToFileURL(WORKER), join(dir, "nope"), manifest, { threads: 1, maxBatch: 1, maxContext: 64 }, { maxBatch: 1, maxContext: 64, prefillChunk: 8, prefillChunkIdle: 64 })).rejects.toMatchObject({ code: "DSR_ONNX_LOAD_FAILED" });
  });
});
