/** Messages between the main thread (WorkerEngine) and the engine worker (worker.ts). */
import type { OnnxManifest } from "../../onnx/build.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import type { SubmitRequest, TokenChunk } from "../types.js";
import type { DecoderSessionOptions } from "./decoder-session.js";
import type { EngineCounters, EmbeddedStats, SchedulerOptions } from "./scheduler.js";

export interface OpenMessage {
  type: "open";
  onnxDir: string;
  manifest: OnnxManifest;
  session: DecoderSessionOptions;
  scheduler: SchedulerOptions;
  /** For constrained decoding; absent when the tokenizer is not byte-level BPE. */
  tokenBytes?: TokenByteTable;
}

export type ToWorker =
  | OpenMessage
  | { type: "submit"; id: number; req: Omit<SubmitRequest, "signal"> }
  | { type: "cancel"; id: number }
  | { type: "close" };

export interface WireError {
  code: string;
  message: string;
  hint?: string;
  details?: Record<string, unknown>;
}

export type FromWorker =
  | { type: "opened"; vocab: number }
  | { type: "open-error"; error: WireError }
  | { type: "chunk"; id: number; chunk: TokenChunk }
  | { type: "end"; id: number }
  | { type: "error"; id: number; error: WireError }
  | { type: "stats"; stats: EmbeddedStats; counters: EngineCounters }
  | { type: "closed" };
