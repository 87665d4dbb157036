/**
 * The gateway's Sink over an H1Response (h1-server.ts): SSE headers, backpressure, an in-band error event once
 * bytes were sent (facts §1.3: a `data:` line holding `{"error":{…}}`), and an optional copy of the
 * bytes for the response cache.
 */
import type { Socket } from "node:net";
import type { CachedResponse } from "./cache.js";
import type { Cancel } from "./cancel.js";
import type { H1Response } from "./h1-server.js";
import { HttpError } from "./http-error.js";
import type { Sink } from "./types.js";

const SSE_HEADERS = {
  "content-type": "text/event-stream; charset=utf-8",
  "cache-control": "no-cache",
  "x-accel-buffering": "no", // tells an nginx in front not to buffer the stream
};

export class ResponseSink implements Sink {
  status = 0;
  failedInBand = false;
  /** In capture mode the response's last step waits until the answer is in the cache (finish()). */
  private held: (() => void) | undefined;
  /** What capture mode copied; undefined when not capturing (most requests). */
  private parts: (string | Buffer)[] | undefined;
  private contentType = "";
  /**
   * Run once just before the answer's last bytes are written: what the request held (a per-key slot
   * kept by another process) is given back before the client can send its next request.
   */
  beforeEnd: (() => void) | undefined;

  constructor(private readonly res: H1Response, private readonly cancel: Cancel) {}

  get started(): boolean {
    return this.res.headersSent;
  }

  get queued(): boolean {
    return this.res.holdsBytes;
  }

  capture(): void {
    this.parts = [];
  }

  captured(): CachedResponse | undefined {
    if (!this.parts || this.parts.length === 0) return undefined;
    const body = this.parts.map((p) => (typeof p === "string" ? p : p.toString("utf8"))).join("");
    return { contentType: this.contentType, body };
  }

  json(status: number, body: unknown, headers: Record<string, string> = {}): void {
    this.raw(status, JSON.stringify(body), "application/json", headers);
  }

  raw(status: number, body: string | Buffer, contentType: string, headers: Record<string, string> = {}): void {
    this.status = status;
    this.contentType = contentType;
    const send = () => {
      this.ending();
      if (!this.res.headersSent) this.res.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body), ...headers }).end(body);
    };
    if (this.parts && status === 200) {
      this.parts.push(body);
      this.held = send;
    } else send();
  }

  startStream(headers?: Record<string, string>): void {
    this.status = 200;
    this.contentType = SSE_HEADERS["content-type"];
    // no flushHeaders(): the headers leave with the first event, in the same syscall
    this.res.writeHead(200, headers ? { ...SSE_HEADERS, ...headers } : SSE_HEADERS, true);
  }

  write(chunk: string | Buffer): Promise<void> | void {
    if (this.parts) this.parts.push(typeof chunk === "string" ? chunk : Buffer.from(chunk)); // the caller's buffer may be reused
    if (this.res.write(chunk) || this.res.destroyed) return;
    return this.res.waitDrain();
  }

  takesFramed(): boolean {
    // only a chunk-framed answer (HTTP/1.1 clients) can take an upstream's chunks as they are
    return !this.parts && this.res.framedWrites;
  }

  lend(holder: { stop(): void }): Socket | undefined {
    return this.parts ? undefined : this.res.lend(holder);
  }

  giveBack(): void {
    this.res.returned();
  }

  letsHolderEnd(): boolean {
    // what runs before the end (a per-key slot given back) must run before the client can send its next request
    return this.beforeEnd === undefined && !this.parts;
  }

  endedFramed(): void {
    this.ending();
    this.res.endedFramed();
  }

  writeFramed(framed: Buffer): Promise<void> | void {
    if (this.res.writeFramed(framed) || this.res.destroyed) return;
    return this.res.waitDrain();
  }

  /** Ends the response; `last` bytes go out with the final chunk in one write. */
  end(last?: Buffer): void {
    if (!this.parts) {
      this.ending();
      if (!this.res.writableEnded) this.res.end(last);
      return;
    }
    if (last) this.parts.push(Buffer.from(last));
    this.held = () => {
      this.ending();
      if (!this.res.writableEnded) this.res.end(last);
    };
  }

  private ending(): void {
    const f = this.beforeEnd;
    this.beforeEnd = undefined;
    f?.();
  }

  /**
   * Sends what capture mode held back. The gateway calls it once the answer is in the cache, so a
   * client that got the answer from one gateway finds it in a cache shared with others.
   */
  finish(): void {
    const h = this.held;
    this.held = undefined;
    h?.();
  }

  /** After the first byte an error can only travel inside the stream. */
  inBandError(e: unknown): void {
    this.failedInBand = true;
    if (this.res.writableEnded || this.res.destroyed) return;
    this.ending();
    const err = e instanceof HttpError ? e : new HttpError(500, e instanceof Error ? e.message : String(e), { code: "internal_error" });
    if (this.cancel.aborted && err.status === 499) {
      this.res.destroy();
      return;
    }
    if (this.contentType.startsWith("text/event-stream")) {
      this.res.end(`data: ${JSON.stringify(err.body())}\n\ndata: [DONE]\n\n`);
    } else {
      this.res.destroy();
    }
  }
}
