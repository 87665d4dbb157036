/**
 * The generation books of an answer the gateway passes on as it came (ProxyBackend.forward): what it
 * keeps for chat and completions — the time to the first token and the gaps between tokens when
 * streamed, the prompt and output tokens, and a finish reason — read from the bytes on their way to
 * the client, which pass unchanged. Each API's own events are read by a subclass
 * (responses-books.ts: OpenAI's Responses API; messages-books.ts: Anthropic's Messages API, which
 * vLLM also serves); this part splits a streamed answer into its SSE events and gathers a JSON one.
 */
import { StringDecoder } from "node:string_decoder";
import type { Instrument } from "./metrics.js";
import type { RequestRecord } from "./types.js";

/** A non-streamed answer larger than this is passed on without books. */
const MAX_BODY = 8 << 20;

export abstract class AnswerBooks {
  private readonly decoder = new StringDecoder("utf8");
  /** Streamed: the text after the last complete event. */
  private pending = "";
  /** Not streamed: the body so far (undefined once over MAX_BODY). */
  private parts: Buffer[] | undefined;
  private size = 0;
  /** Streamed: the token-bearing events so far. */
  protected deltas = 0;
  private lastDeltaAt = 0;

  constructor(
    protected readonly record: RequestRecord,
    /** The request's start (performance.now() ms), for TTFT. */
    private readonly t0: number,
    private readonly ins: Instrument,
    protected readonly stream: boolean,
  ) {
    if (!stream) this.parts = [];
  }

  /** Handles one complete streamed event: `type` from its `event:` line, else its data's first `"type"`. */
  protected abstract event(type: string, ev: string, now: number): void;

  /** Takes the whole JSON answer of a non-streamed request. */
  protected abstract settle(body: unknown): void;

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

  /** The answer ended: the books go to the record (nothing when the answer told nothing). */
  end(): void {
    if (this.stream) {
      // a CR held back at the end of the last read ended a line after all
      if (this.pending.endsWith("\r")) this.scan(`${this.pending.slice(0, -1)}\n`, performance.now());
      return;
    }
    if (this.parts === undefined) return;
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(this.parts).toString("utf8"));
    } catch {
      return; // not JSON: no books
    }
    if (body !== null && typeof body === "object") this.settle(body);
  }

  /** A token-bearing event arrived now: TTFT for the first, a gap for each later one. */
  protected delta(now: number): void {
    if (this.deltas++ === 0) {
      this.record.ttftMs = now - this.t0;
      this.ins.ttft(this.record.ttftMs / 1000);
    } else this.ins.itl((now - this.lastDeltaAt) / 1000);
    this.lastDeltaAt = now;
  }

  /** An event's data lines, joined, parsed as JSON (an object), or undefined. */
  protected static data(ev: string): Record<string, unknown> | undefined {
    const text = ev
      .split("\n")
      .filter((l) => l.startsWith("data:"))
      .map((l) => l.slice(5).trimStart())
      .join("\n");
    try {
      const v = JSON.parse(text) as unknown;
      return v !== null && typeof v === "object" ? (v as Record<string, unknown>) : undefined;
    } catch {
      return undefined;
    }
  }

  /** Handles the complete events of `text` (lines ended by LF); returns what follows the last. */
  private scan(text: string, now: number): string {
    let at = 0;
    for (let end = text.indexOf("\n\n", at); end >= 0; end = text.indexOf("\n\n", at)) {
      const ev = text.slice(at, end);
      // OpenAI, Anthropic and vLLM name each event on an `event:` line; without one, the data's type
      const named = /^event: ?(.*)$/m.exec(ev)?.[1] ?? /"type":"([^"]*)"/.exec(ev)?.[1];
      if (named !== undefined) this.event(named.trim(), ev, now);
      at = end + 2;
    }
    return text.slice(at);
  }
}

/** A number, or undefined. */
export const count = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
