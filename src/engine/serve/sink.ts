/**
 * The gateway's Sink over a ServerResponse: SSE headers, backpressure, an in-band error event once
 * bytes were sent (facts §1.3: a `data:` line holding `{"error":{…}}`), and an optional copy of the
 * bytes for the response cache.
 */
import type { ServerResponse } from "node:http";
import type { Writable } from "node:stream";
import type { CachedResponse } from "./cache.js";
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
  private capturing = false;
  /** In capture mode the response's last step waits until the answer is in the cache (finish()). */
  private held: (() => void) | undefined;
  private parts: (string | Buffer)[] = [];
  private contentType = "";

  constructor(private readonly res: ServerResponse, private readonly signal: AbortSignal) {}

  get started(): boolean {
    return this.res.headersSent;
  }

  capture(): void {
    this.capturing = true;
  }

  captured(): CachedResponse | undefined {
    if (!this.capturing || this.parts.length === 0) return undefined;
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
      if (!this.res.headersSent) this.res.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body), ...headers }).end(body);
    };
    if (this.capturing && status === 200) {
      this.parts.push(body);
      this.held = send;
    } else send();
  }

  startStream(headers: Record<string, string> = {}): void {
    this.status = 200;
    this.contentType = SSE_HEADERS["content-type"];
    // no flushHeaders(): the headers leave with the first event, in the same syscall
    this.res.writeHead(200, { ...SSE_HEADERS, ...headers });
  }

  write(chunk: string | Buffer): Promise<void> | void {
    if (this.capturing) this.parts.push(chunk);
    if (this.res.write(chunk)) return;
    if (this.res.destroyed) return;
    return drained(this.res);
  }

  rawChunks(): ((framed: Buffer) => Promise<void> | void) | undefined {
    const { res } = this;
    const socket = res.socket;
    // node:http frames this response with chunked encoding only for HTTP/1.1 clients; `socket` is
    // null while a pipelined response waits for the one before it to finish.
    if (this.capturing || !socket || !res.headersSent || res.req.httpVersion !== "1.1") return undefined;
    // Writing to the response's own socket keeps the order with node:http's writes (one Writable),
    // and res.end() still writes the terminating chunk, so the connection stays reusable.
    return (framed) => {
      if (socket.write(framed) || socket.destroyed) return;
      return drained(socket);
    };
  }

  /** Ends the response; `last` bytes go out with the final chunk in one write. */
  end(last?: Buffer): void {
    if (last && this.capturing) this.parts.push(last);
    const end = () => {
      if (!this.res.writableEnded) this.res.end(last);
    };
    if (this.capturing) this.held = end;
    else end();
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
    const err = e instanceof HttpError ? e : new HttpError(500, e instanceof Error ? e.message : String(e), { code: "internal_error" });
    if (this.signal.aborted && err.status === 499) {
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

/** Resolves when a writable that refused more can take it again (or is gone). */
function drained(w: Writable): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      w.off("drain", done);
      w.off("close", done);
      resolve();
    };
    w.on("drain", done);
    w.on("close", done);
  });
}
