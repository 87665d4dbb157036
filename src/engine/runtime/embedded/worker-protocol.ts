/** Messages between the main thread and the embedded engine's worker thread (worker.ts): its own `open`, then engine-protocol.ts. */
import type { OnnxManifest } from "../../onnx/build.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import type { FromEngine, ToEngine } from "../engine-protocol.js";
import type { DecoderSessionOptions } from "./decoder-session.js";
import type { EmbeddedStats, SchedulerOptions } from "./scheduler.js";

export interface OpenMessage {
  type: "open";
  onnxDir: string;
  manifest: OnnxManifest;
  session: DecoderSessionOptions;
  scheduler: SchedulerOptions;
  /** For constrained decoding; absent when the tokenizer is not byte-level BPE. */
  tokenBytes?: TokenByteTable;
}

export type ToWorker = OpenMessage | ToEngine;
export type FromWorker = FromEngine<EmbeddedStats>;
