/**
 * The generation books of an OpenAI Responses API answer (`POST /v1/responses`, passed to an upstream
 * as it came, ProxyBackend.forward): what the gateway keeps for chat and completions — the time to the
 * first text delta and the gaps between deltas when streamed, the usage's input and output tokens, and
 * a finish reason from the response's status — read from the bytes on their way to the client, which
 * pass unchanged. vLLM serves this API for reasoning models too (its reasoning deltas count as tokens,
 * as reasoning does in chat streams).
 */
import { StringDecoder } from "node:string_decoder";
import type { Instrument } from "./metrics.js";
import type { RequestRecord } from "./types.js";

/** Streamed events that carry generated text: each counts as one token event (TTFT, inter-token gaps). */
const TEXT_DELTA = /^response\.(?:output_text|reasoning_text|reasoning_summary_text|refusal)\.delta$/;
/** The events that end a response, with it (its status and usage) in `response`. */
const TERMINAL = new Set(["response.completed", "response.incomplete", "response.failed"]);
/** A non-streamed answer larger than this is passed on without books. */
const MAX_BODY = 8 << 20;

interface ResponseObject {
  status?: string;
  incomplete_details?: { reason?: string } | null;
  usage?: { input_tokens?: number; output_tokens?: number } | null;
}

/** The finish reason vLLM's metrics would give a response of this status (length for a token budget that ran out). */
function finishOf(r: ResponseObject): string {
  if (r.status === "incomplete") {
    const why = r.incomplete_details?.reason;
    return why === "max_output_tokens" ? "length" : why ?? "length";
  }
  return r.status === "failed" ? "error" : "stop";
}

export class ResponsesBooks {
  private readonly decoder = new StringDecoder("utf8");
  /** Streamed: the text after the last complete event. */
  private pending = "";
  /** Not streamed: the body so far (undefined once over MAX_BODY). */
  private parts: Buffer[] | undefined;
  private size = 0;
  private deltas = 0;
  private lastDeltaAt = 0;

  constructor(
    private readonly record: RequestRecord,
    /** The request's start (performance.now() ms), for TTFT. */
    private readonly t0: number,
    private readonly ins: Instrument,
    private readonly stream: boolean,
  ) {
    if (!stream) this.parts = [];
  }

  /** Bytes of the answer as they go to the client. */
  feed(chunk: Buffer): void {
    if (!this.stream) {
      this.size += chunk.length;
      if (this.parts && this.size <= MAX_BODY) this.parts.push(chunk);
      else this.parts = undefined;
      return;
    }
    const now = performance.now();
    let text = this.pending + this.decoder.write(chunk);
    // SSE lines may also end with CRLF or a lone CR; a CR at the very end waits (it may be half a CRLF)
    let held = "";
    if (text.includes("\r")) {
      if (text.endsWith("\r")) {
        held = "\r";
        text = text.slice(0, -1);
      }
      text = text.replace(/\r\n?/g, "\n");
    }
    this.pending = this.scan(text, now) + held;
  }

  /** Handles the complete events of `text` (lines ended by LF); returns what follows the last. */
  private scan(text: string, now: number): string {
    let at = 0;
    for (let end = text.indexOf("\n\n", at); end >= 0; end = text.indexOf("\n\n", at)) {
      this.event(text.slice(at, end), now);
      at = end + 2;
    }
    return text.slice(at);
  }

  /** The answer ended: the books go to the record (nothing when no response object was seen). */
  end(): void {
    if (this.stream) {
      // a CR held back at the end of the last read ended a line after all
      if (this.pending.endsWith("\r")) this.scan(`${this.pending.slice(0, -1)}\n`, performance.now());
      return;
    }
    if (this.parts === undefined) return;
    try {
      this.settle(JSON.parse(Buffer.concat(this.parts).toString("utf8")) as ResponseObject);
    } catch {
      // not JSON: no books
    }
  }

  private event(ev: string, now: number): void {
    // OpenAI and vLLM name each event on an `event:` line; without one, the data's type (its first key)
    const named = /^event: ?(.*)$/m.exec(ev)?.[1] ?? /"type":"([^"]*)"/.exec(ev)?.[1];
    if (named === undefined) return;
    const type = named.trim();
    if (TEXT_DELTA.test(type)) {
      if (this.deltas++ === 0) {
        this.record.ttftMs = now - this.t0;
        this.ins.ttft(this.record.ttftMs / 1000);
      } else this.ins.itl((now - this.lastDeltaAt) / 1000);
      this.lastDeltaAt = now;
      return;
    }
    if (!TERMINAL.has(type)) return;
    const data = ev
      .split("\n")
      .filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).trimStart())
      .join("\n");
    try {
      const response = (JSON.parse(data) as { response?: ResponseObject }).response;
      if (response) this.settle(response);
    } catch {
      // a terminal event that is not JSON: no books
    }
  }

  private settle(r: ResponseObject): void {
    const usage = r.usage ?? undefined;
    this.record.finishReason = finishOf(r);
    this.record.promptTokens = usage?.input_tokens;
    this.record.completionTokens = usage?.output_tokens ?? (this.stream ? this.deltas : undefined);
  }
}
