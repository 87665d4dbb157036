/** What the HTTP gateway hands to a backend (an upstream router or a token engine) for one request. */
import type { IncomingHttpHeaders } from "node:http";
import type { Cancel } from "./cancel.js";
import type { H1Response } from "./h1-server.js";
import type { ChatRequest, CompletionRequest, Endpoint } from "./schemas.js";
import type { DetokenizeRequest, TokenizeRequest, TokensOp } from "./tokenize.js";

export interface ModelCard {
  id: string;
  object: "model";
  created: number;
  owned_by: string;
  root?: string;
  max_model_len?: number;
}

/**
 * Where a backend writes its answer. `started` turns true with the first byte sent to the client:
 * from then on a failure can no longer be retried elsewhere and is reported in-band.
 */
export interface Sink {
  readonly started: boolean;
  json(status: number, body: unknown, headers?: Record<string, string>): void;
  /** Raw bytes of a complete non-stream body (already JSON). */
  raw(status: number, body: string | Buffer, contentType: string): void;
  startStream(headers?: Record<string, string>): void;
  /** Writes SSE bytes; resolves when the socket can take more (backpressure). */
  write(chunk: string | Buffer): Promise<void> | void;
  /**
   * After the first write(): whether writeFramed() may be used, i.e. this response takes bytes that
   * already carry HTTP/1.1 chunk framing as they are (not for an HTTP/1.0 client or a cache capture).
   */
  takesFramed?(): boolean;
  /** Writes a run of complete chunks, framing included, as an upstream sent them (only when takesFramed()). */
  writeFramed?(framed: Buffer): Promise<void> | void;
  /** Ends the response; `last` (optional) leaves with the final chunk, in one write. */
  end(last?: Buffer): void;
  /** True while written bytes wait in the client connection's queue (they may still refer to the caller's buffers). */
  readonly queued?: boolean;
  /**
   * The client's plain-TCP socket for the native relay, while chunks are written as they are (not
   * capturing for the cache): `holder` is stopped before the socket is ever destroyed. Undefined
   * when it cannot be lent. giveBack() ends the loan.
   */
  lend?(holder: { stop(): void }): import("node:net").Socket | undefined;
  giveBack?(): void;
  /** Whether the holder of a loan may write the body's end itself: nothing waits to run before the client sees the end. */
  letsHolderEnd?(): boolean;
  /** The body's last chunk went out as framed bytes (from the holder of a loan, or writeFramed()): the response is over. */
  endedFramed?(): void;
}

/** Filled by the backend, read by the request log and metrics. */
export interface RequestRecord {
  instance?: string;
  promptTokens?: number;
  completionTokens?: number;
  finishReason?: string | null;
  ttftMs?: number;
  retries?: number;
}

export interface GenerationRequest {
  id: string;
  endpoint: Endpoint;
  /** The validated request. */
  req: ChatRequest | CompletionRequest;
  /** The body exactly as received (proxies forward it without re-serialising when they can). */
  rawBody: Buffer;
  /** The model name the client used, already checked against the served names. */
  model: string;
  stream: boolean;
  headers: IncomingHttpHeaders;
  /** Client gone, timeout or shutdown; `cancel.signal` gives an AbortSignal for what needs one. */
  cancel: Cancel;
  sink: Sink;
  record: RequestRecord;
  /** Wall-clock start, performance.now() ms. */
  t0: number;
}

/**
 * A request for another `/v1` route than chat and completions (`/v1/responses`, `/v1/embeddings`,
 * `/v1/messages`, audio…), which only an upstream can answer: it is passed on as it came (forward()).
 */
export interface ForwardRequest {
  id: string;
  /** The target as the client sent it (path and query). */
  url: string;
  method: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** The body as JSON when it is a JSON object, for its `model`. */
  json: Record<string, unknown> | undefined;
  /** The body's model, checked against the served names; undefined when the body names none. */
  model: string | undefined;
  res: H1Response;
  cancel: Cancel;
  /** What the answer told, for the metrics and the request log (a Responses API answer's generation books). */
  record: RequestRecord;
  /** Wall-clock start, performance.now() ms. */
  t0: number;
}

export interface Backend {
  /** Served model names (the first is the default); /v1/models lists them. */
  models(): ModelCard[];
  /** The same names alone, without building cards (checked on every request). */
  modelIds(): readonly string[];
  /** True when a request could be served now (at least one healthy instance). */
  ready(): boolean;
  /** Details for /ready and the startup banner. */
  describe(): Record<string, unknown>;
  handle(g: GenerationRequest): Promise<void>;
  /** /tokenize and /detokenize (tokenize.ts) for `model` (a served name): the answer's status and JSON body. */
  tokens(op: TokensOp, req: TokenizeRequest | DetokenizeRequest, rawBody: Buffer, model: string): Promise<{ status: number; body: unknown }>;
  close(): Promise<void>;
  /** Passes any other `/v1` POST to an instance and its answer back as it comes; returns the status. Absent on token engines. */
  forward?(f: ForwardRequest): Promise<number>;
}
