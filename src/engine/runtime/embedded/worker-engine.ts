/**
 * The main-thread side of the embedded engine's worker thread (worker.ts): a MessageEngine over the
 * thread's port. Requests are checked with the same validateRequest as the in-thread Scheduler.
 */
import { Worker } from "node:worker_threads";
import type { OnnxManifest } from "../../onnx/build.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import { MessageEngine, type EnginePort } from "../message-engine.js";
import type { DecoderSessionOptions } from "./decoder-session.js";
import { validateRequest, type EmbeddedStats, type SchedulerOptions } from "./scheduler.js";
import type { FromWorker, OpenMessage } from "./worker-protocol.js";

function threadPort(worker: Worker): EnginePort<EmbeddedStats> {
  let onMessage: (m: FromWorker) => void = () => {};
  let onGone: (why: string) => void = () => {};
  let terminating = false;
  worker.on("message", (m: FromWorker) => onMessage(m));
  worker.on("error", (e) => onGone(`crashed: ${e.message}`));
  worker.on("exit", (code) => {
    if (!terminating) onGone(`exited unexpectedly (code ${code})`);
  });
  return {
    send: (m) => worker.postMessage(m),
    onMessage: (cb) => (onMessage = cb),
    onGone: (cb) => (onGone = cb),
    terminate: async () => {
      terminating = true;
      await worker.terminate();
    },
  };
}

export async function openWorkerEngine(
  url: URL,
  onnxDir: string,
  manifest: OnnxManifest,
  session: DecoderSessionOptions,
  scheduler: SchedulerOptions,
  tokenBytes?: TokenByteTable,
): Promise<MessageEngine<EmbeddedStats>> {
  const { numLayers, kvHeads, headDim } = manifest.io;
  const kvBytesPerToken = numLayers * 2 * kvHeads * headDim * 4;
  const cap = scheduler.maxBatch * scheduler.maxContext;
  const open: Omit<OpenMessage, "type"> = { onnxDir, manifest, session, scheduler, tokenBytes };
  return MessageEngine.open(threadPort(new Worker(url)), open, {
    name: "embedded engine worker",
    validate: (req, vocab) => validateRequest(req, scheduler.maxContext, vocab, !!tokenBytes),
    initialStats: () => ({ running: 0, waiting: 0, kvUsedTokens: 0, kvCapacityTokens: cap, maxContext: scheduler.maxContext, kvBytesPerToken, kvCapacityBytes: cap * kvBytesPerToken }),
  });
}
