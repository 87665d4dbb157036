/**
 * The messages between a TokenEngine client and an engine that runs elsewhere: the embedded engine's
 * worker thread (structured clone) and the torch worker process (length-prefixed JSON over a Unix
 * socket, docs/worker-protocol.md). Each side's `open` message is its own; everything after it is
 * shared, so one client (message-engine.ts) serves both.
 */
import { DsrError } from "../errors.js";
import type { Verdict } from "./remote-constraints.js";
import type { EngineStats, SubmitRequest, TokenChunk } from "./types.js";

export interface WireError {
  code: string;
  message: string;
  hint?: string;
  details?: Record<string, unknown>;
}

export interface EngineCounters {
  prefillTokens: number;
  decodeTokens: number;
  prefillMs: number;
  decodeMs: number;
  decodeSteps: number;
  /** Engines that ask for verdicts (remote-constraints.ts): round trips, ms spent waiting on them, redraws under a mask. */
  checks?: number;
  checkMs?: number;
  redraws?: number;
}

export type ToEngine =
  | { type: "submit"; id: number; req: Omit<SubmitRequest, "signal"> }
  | { type: "cancel"; id: number }
  | { type: "close" }
  /** The answer to `check`: one Verdict (remote-constraints.ts) per row, in its order. */
  | { type: "verdict"; rows: Verdict[] };

/** `opened` carries the engine's vocabulary size and whatever else that engine reports about itself. */
export type FromEngine<S extends EngineStats = EngineStats> =
  | { type: "opened"; vocab: number; [info: string]: unknown }
  | { type: "open-error"; error: WireError }
  | { type: "chunk"; id: number; chunk: TokenChunk }
  | { type: "end"; id: number }
  | { type: "error"; id: number; error: WireError }
  | { type: "stats"; stats: S; counters: EngineCounters }
  /** May these drawn tokens follow? `rows` is flat [request id, token, …]; the engine waits for `verdict`. */
  | { type: "check"; rows: number[] }
  | { type: "closed" };

export const fromWire = (w: WireError) => new DsrError(w.code, w.message, { hint: w.hint, details: w.details });

export const toWire = (e: unknown): WireError =>
  e instanceof DsrError ? { code: e.code, message: e.message, hint: e.hint, details: e.details } : { code: "DSR_ENGINE_FAILED", message: (e as Error)?.message ?? String(e) };
