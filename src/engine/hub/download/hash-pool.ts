/**
 * SHA-256 / git-sha1 off the main thread. One Node thread cannot parse HTTP for 16 connections,
 * write to disk and hash at link speed (SHA-256 alone is ~1 ns/byte even with SHA-NI), so each
 * file's hash state lives in one worker thread; 1 MiB blocks are transferred (not copied) in file
 * order. The worker is a small inline CommonJS script (`eval: true`), so the bundled CLI needs no
 * extra entry file. Backpressure: `update` resolves only once no more than MAX_QUEUED bytes wait.
 */
import { Worker } from "node:worker_threads";

const WORKER_SRC = `
const { parentPort } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const hashes = new Map();
parentPort.on("message", (m) => {
  if (m.t === "open") hashes.set(m.id, m.algo === "sha256" ? createHash("sha256") : createHash("sha1").update(m.prefix));
  else if (m.t === "data") { hashes.get(m.id).update(new Uint8Array(m.buf, m.off, m.len)); parentPort.postMessage({ t: "ack", id: m.id, n: m.len }); }
  else if (m.t === "end") { const h = hashes.get(m.id); hashes.delete(m.id); parentPort.postMessage({ t: "digest", id: m.id, hex: h.digest("hex") }); }
});`;

const MAX_QUEUED = 32 << 20;

/** The part of a Hash the ordered hasher uses; `update` may ask the caller to wait. */
export interface HashSink {
  update(data: Uint8Array, transferable: boolean): void | Promise<void>;
  digest(): Promise<string>;
}

interface Slot {
  worker: Worker;
  queued: number;
  waiters: (() => void)[];
  digests: Map<number, { resolve(hex: string): void; reject(e: unknown): void }>;
  failed?: unknown;
}

export class HashPool {
  private readonly slots: Slot[] = [];
  private next = 0;
  private ids = 0;
  private closing = false;

  constructor(threads: number) {
    for (let i = 0; i < threads; i++) {
      const worker = new Worker(WORKER_SRC, { eval: true });
      worker.unref();
      const slot: Slot = { worker, queued: 0, waiters: [], digests: new Map() };
      worker.on("message", (m: { t: string; id: number; n?: number; hex?: string }) => {
        if (m.t === "ack") {
          slot.queued -= m.n!;
          if (slot.queued <= MAX_QUEUED) for (const w of slot.waiters.splice(0)) w();
        } else if (m.t === "digest") {
          slot.digests.get(m.id)?.resolve(m.hex!);
          slot.digests.delete(m.id);
        }
      });
      // A dead hash thread must fail the files it was hashing, not leave them waiting forever.
      const die = (e: unknown) => {
        slot.failed ??= e;
        for (const d of slot.digests.values()) d.reject(e);
        slot.digests.clear();
        for (const w of slot.waiters.splice(0)) w();
      };
      worker.on("error", die);
      worker.on("exit", (code) => code !== 0 && !this.closing && die(new Error(`hash worker exited with code ${code}`)));
      this.slots.push(slot);
    }
  }

  /** A new hash on the next worker (round robin); `prefix` seeds git-sha1's "blob <size>\0". */
  open(algo: "sha256" | "gitsha1", prefix = ""): HashSink {
    const slot = this.slots[this.next++ % this.slots.length];
    const id = ++this.ids;
    slot.worker.postMessage({ t: "open", id, algo, prefix });
    return {
      update(data, transferable) {
        // A block we own outright is moved; anything else (a view into a shared buffer) is copied.
        const own = transferable && data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && data.buffer instanceof ArrayBuffer;
        const buf = own ? (data.buffer as ArrayBuffer) : data.slice().buffer;
        slot.queued += data.byteLength;
        slot.worker.postMessage({ t: "data", id, buf, off: 0, len: data.byteLength }, [buf]);
        if (slot.queued > MAX_QUEUED) return new Promise<void>((r) => slot.waiters.push(r));
      },
      digest() {
        return new Promise<string>((resolve, reject) => {
          if (slot.failed) return reject(slot.failed);
          slot.digests.set(id, { resolve, reject });
          slot.worker.postMessage({ t: "end", id });
        });
      },
    };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
