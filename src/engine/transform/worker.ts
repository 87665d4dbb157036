/**
 * Worker-thread entry of the convert pipeline (bundled to dist/convert-worker.mjs by
 * scripts/build.mjs). It runs tasks one at a time with one reusable TaskRunner and answers each
 * with its result or a serialised error.
 */
import { parentPort } from "node:worker_threads";
import { TaskRunner, serializeError, type Task } from "./tasks.js";

const runner = new TaskRunner();
parentPort!.on("message", (m: { id: number; task: Task }) => {
  try {
    const result = runner.run(m.task);
    parentPort!.postMessage({ id: m.id, ok: true, result, bufferBytes: runner.bufferBytes });
  } catch (e) {
    parentPort!.postMessage({ id: m.id, ok: false, error: serializeError(e), bufferBytes: runner.bufferBytes });
  }
});
