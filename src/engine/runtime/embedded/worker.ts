/**
 * worker_threads entry of the embedded engine (bundled as dist/embedded-worker.mjs). onnxruntime-node
 * 1.30 runs session.run synchronously on the calling thread, so a 1.5B prefill chunk would block the
 * event loop for about a second: here the session and the scheduler live in their own thread and the
 * main thread (the gateway, the chat UI) only exchanges token messages.
 */
import { parentPort } from "node:worker_threads";
import { toWire as wire } from "../engine-protocol.js";
import { DecoderSession } from "./decoder-session.js";
import { Scheduler } from "./scheduler.js";
import type { FromWorker, ToWorker } from "./worker-protocol.js";

const port = parentPort!;
const post = (m: FromWorker) => port.postMessage(m);

let scheduler: Scheduler | undefined;
const running = new Map<number, AbortController>();

port.on("message", (m: ToWorker) => {
  switch (m.type) {
    case "open":
      DecoderSession.open(m.onnxDir, m.manifest, m.session).then(
        (session) => {
          scheduler = new Scheduler(session, m.scheduler, m.tokenBytes);
          scheduler.onStep = () => post({ type: "stats", stats: scheduler!.stats(), counters: { ...scheduler!.counters } });
          post({ type: "opened", vocab: session.vocab });
        },
        (e) => post({ type: "open-error", error: wire(e) }),
      );
      return;
    case "submit": {
      const controller = new AbortController();
      running.set(m.id, controller);
      void (async () => {
        try {
          for await (const chunk of scheduler!.submit({ ...m.req, signal: controller.signal })) post({ type: "chunk", id: m.id, chunk });
          post({ type: "end", id: m.id });
        } catch (e) {
          post({ type: "error", id: m.id, error: wire(e) });
        } finally {
          running.delete(m.id);
        }
      })();
      return;
    }
    case "cancel":
      running.get(m.id)?.abort();
      return;
    case "close":
      void (scheduler?.close() ?? Promise.resolve()).then(() => post({ type: "closed" }));
      return;
  }
});
