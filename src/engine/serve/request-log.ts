/**
 * Request log: one JSON line per request (id, client address, model, status, tokens, TTFT, latency, instance — never
 * the API key, and prompt text only when asked) appended to a file, rotated by size like logrotate's
 * `size` + `rotate N`: `log` → `log.1` → … → `log.N`, the oldest dropped. Lines are batched and written
 * by one async writer so a busy gateway never blocks on the disk per request.
 */
import { open, rename, rm, stat, type FileHandle } from "node:fs/promises";

export interface RequestLogEntry {
  ts: string;
  id: string;
  method: string;
  path: string;
  status: number;
  /** The client's address, and what an `x-forwarded-for` header says when a proxy in front sent one. */
  client?: string;
  forwarded_for?: string;
  /** With `--ssl-cert-reqs`: the verified client certificate's subject CN. */
  client_cert?: string;
  /** The name of the API key the request carried (its name in the key file, or `key-` and a hash prefix), never the key. */
  key?: string;
  model?: string;
  stream?: boolean;
  instance?: string;
  prompt_tokens?: number;
  completion_tokens?: number;
  finish_reason?: string | null;
  ttft_ms?: number;
  latency_ms: number;
  queue_ms?: number;
  cache?: "hit" | "miss";
  retries?: number;
  error?: string;
  prompt?: unknown;
}

export interface RequestLogOptions {
  path: string;
  maxBytes: number;
  keep: number;
  /** Flush interval (ms). */
  flushMs?: number;
}

export class RequestLog {
  private fh?: FileHandle;
  private size = 0;
  private buf: string[] = [];
  private timer?: NodeJS.Timeout;
  private chain: Promise<void> = Promise.resolve();

  private constructor(private readonly o: RequestLogOptions) {}

  static async open(o: RequestLogOptions): Promise<RequestLog> {
    const log = new RequestLog(o);
    log.fh = await open(o.path, "a");
    log.size = (await stat(o.path)).size;
    return log;
  }

  write(e: RequestLogEntry): void {
    this.buf.push(JSON.stringify(e) + "\n");
    if (!this.timer) this.timer = setTimeout(() => this.flush(), this.o.flushMs ?? 200);
  }

  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const lines = this.buf;
    this.buf = [];
    if (lines.length > 0) this.chain = this.chain.then(() => this.writeLines(lines)).catch(() => undefined);
    return this.chain;
  }

  async close(): Promise<void> {
    await this.flush();
    await this.fh?.close();
    this.fh = undefined;
  }

  private async writeLines(lines: string[]): Promise<void> {
    for (const line of lines) {
      if (this.size > 0 && this.size + Buffer.byteLength(line) > this.o.maxBytes) await this.rotate();
      const b = Buffer.from(line);
      await this.fh!.write(b);
      this.size += b.length;
    }
  }

  private async rotate(): Promise<void> {
    await this.fh!.close();
    const p = this.o.path;
    if (this.o.keep <= 0) {
      await rm(p, { force: true });
    } else {
      await rm(`${p}.${this.o.keep}`, { force: true });
      for (let i = this.o.keep - 1; i >= 1; i--) await rename(`${p}.${i}`, `${p}.${i + 1}`).catch(() => undefined);
      await rename(p, `${p}.1`);
    }
    this.fh = await open(p, "a");
    this.size = 0;
  }
}
