/**
 * A minimal HTTP/1.1 client for the one request shape the proxy sends on its hot path: a POST with a
 * JSON body to an OpenAI upstream, answered by a (usually chunked) body. Keep-alive sockets are
 * pooled per upstream origin.
 *
 * Hand-written rather than undici because the proxy wants the upstream's body bytes *as received*,
 * chunk framing included: a run of complete chunks whose events need no change is forwarded to the
 * client socket verbatim, one write per read, with no re-framing. undici decodes the framing (its
 * llhttp runs in wasm, one copy into wasm memory per read), so every event had to be re-framed and
 * written again. Probes and /v1/models still use undici (UpstreamInstance.pool).
 *
 * What it handles: status line and headers (1xx skipped), chunked bodies (h1-chunked.ts),
 * content-length bodies, bodies delimited by close, HTTP/1.0 and `connection: close` answers (socket not reused), the server's `keep-alive: timeout=N` hint,
 * and a kept-alive socket that the server closed just as it was reused (retried once on a fresh
 * connection, before anything was received).
 */
import { connect, type Socket } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { ChunkedDecoder, Ranges } from "./h1-chunked.js";

export interface H1Response {
  status: number;
  /** Lower-cased names; repeated headers joined with ", " (built when first asked for). */
  readonly headers: Record<string, string>;
  /** The content-type header, or "". */
  contentType: string;
  /** True when the body arrives chunk-framed (then `raw` in onBody carries that framing). */
  chunked: boolean;
}

/**
 * A response head: the few headers the client acts on are picked out while the lines are walked;
 * the rest become an object only if someone asks (error answers: retry-after). Building an object
 * of every header for every answer (date, server, cache-control…) was 7% of a request's CPU at one
 * token per stream, mostly megamorphic property stores and string internalisation.
 */
class UpstreamHead implements H1Response {
  private all: Record<string, string> | undefined;
  contentType = "";
  chunked = false;
  constructor(
    readonly status: number,
    /** The head's text, status line included, without the blank line. */
    private readonly text: string,
  ) {}

  get headers(): Record<string, string> {
    if (this.all) return this.all;
    const h: Record<string, string> = {};
    for (const line of this.text.split("\r\n").slice(1)) {
      const c = line.indexOf(":");
      if (c <= 0) continue;
      const k = line.slice(0, c).trim().toLowerCase();
      const v = line.slice(c + 1).trim();
      h[k] = h[k] === undefined ? v : `${h[k]}, ${v}`;
    }
    return (this.all = h);
  }
}

/** One read's worth of body. The object and its `ranges` are reused for the next read: use them before onBody returns. */
export interface BodyRead {
  /** The read. */
  buf: Buffer;
  /** Where the decoded body bytes lie in `buf` (one range per chunk's data). */
  ranges: Ranges;
  /** The read's bytes as received, minus the terminating zero-size chunk and trailers. */
  raw: Buffer;
  /** True when `raw` is exactly a run of complete chunks (it starts and ends on chunk boundaries), so it may be forwarded as is to a client that expects chunked framing. */
  aligned: boolean;
  /** True when the body's end (the zero-size chunk) is in this read: onEnd follows at once, so a caller may hold this read's bytes and send them with its own end. */
  last: boolean;
}

export interface H1Handler {
  onHead(res: H1Response): void;
  onBody(read: BodyRead): void;
  onEnd(): void;
  /** Failure before or during the body. `beforeHead`: nothing was received (safe to retry). */
  onError(err: Error, beforeHead: boolean): void;
}

export interface H1Request {
  path: string;
  /**
   * Header lines (`name: value\r\n` each) besides host and content-length, which the pool adds. One
   * string the caller renders once per kind of request, not an object walked on every request.
   * Latin1: each character is one byte on the wire.
   */
  headerLines: string;
  /** The body, or its parts in order. */
  body: Buffer | string | Buffer[];
}

export interface H1Call {
  /** Destroys the connection: the upstream sees the close and stops generating. */
  abort(): void;
  pause(): void;
  resume(): void;
  /**
   * The handler keeps bytes of the current read past its callback (a write still queued on a slow
   * client, a non-stream body being gathered): the socket's next read goes to a fresh buffer.
   */
  retainRead(): void;
  /** The plain-TCP socket the answer is being read from, for the native relay (undefined over TLS or once the exchange is over). */
  readonly handOffSocket: Socket | undefined;
  /** Handles bytes read from that socket by someone else (the native relay's hand-back) as the exchange's next read. */
  inject(read: Buffer): void;
  /** Someone else (the native relay) read the body's end, and nothing after it: the exchange ends, and the socket may serve another. */
  ended(): void;
}

/**
 * What a pooled socket serves now. Its listeners are attached once, at connect, and pass events to
 * the current exchange (none while idle): adding and removing four listeners (and four closures)
 * per request cost about 3 µs of CPU per request on the development machine. Reads of a plain-TCP socket land in one buffer of its own (net's `onread`),
 * not in a new allocation per read pushed through a Readable: the common read is handled and
 * forwarded before its callback returns. A handler that keeps a read's bytes says so (retainRead)
 * and the buffer is replaced; the next read never overwrites bytes still in use.
 */
interface SocketSlot {
  exchange: Exchange | undefined;
  /** Plain TCP: the read buffer and whether the last read's bytes are still held. */
  buf: Buffer | undefined;
  retained: boolean;
  /** What onBody is handed, refilled per read: one per socket, not one per request (with its ranges array grown anew each time). */
  read: BodyRead;
}
const READ_BUFFER_BYTES = 16 * 1024;
const slots = new WeakMap<Socket, SocketSlot>();

const CRLF2 = Buffer.from("\r\n\r\n");
const EMPTY = Buffer.alloc(0);
const enum S {
  Head,
  Chunked,
  Length,
  Close,
  Done,
}

/** One upstream origin's keep-alive sockets (most recently used first). */
export class H1Pool {
  private readonly idle: { socket: Socket; since: number; ttl: number }[] = [];
  private readonly host: string;
  private readonly port: number;
  private readonly hostHeader: string;
  private readonly tls: boolean;
  private readonly sweeper: NodeJS.Timeout;
  private closed = false;

  constructor(origin: string, private readonly o: { connectTimeoutMs?: number } = {}) {
    const u = new URL(origin);
    if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error(`h1 pool: ${origin} is not http:// or https://`);
    this.tls = u.protocol === "https:";
    this.host = u.hostname.replace(/^\[|\]$/g, "");
    this.port = Number(u.port || (this.tls ? 443 : 80));
    this.hostHeader = u.host;
    // expired idle sockets are closed by one timer per pool, not one per socket
    this.sweeper = setInterval(() => this.sweep(performance.now()), 1000).unref();
  }

  get idleCount(): number {
    return this.idle.length;
  }

  request(req: H1Request, h: H1Handler): H1Call {
    const parts = typeof req.body === "string" ? [Buffer.from(req.body)] : Array.isArray(req.body) ? req.body : [req.body];
    let length = 0;
    for (const b of parts) length += b.length;
    const head = `POST ${req.path} HTTP/1.1\r\nhost: ${this.hostHeader}\r\n${req.headerLines}content-length: ${length}\r\n\r\n`;
    // head and body in one allocation; latin1: one byte per character, no length to compute
    const bytes = Buffer.allocUnsafe(head.length + length);
    let at = bytes.write(head, 0, head.length, "latin1");
    for (const b of parts) at += b.copy(bytes, at);
    const call = new Exchange(this, bytes, h);
    call.start(this.take());
    return call;
  }

  /** A pooled socket still open and inside its keep-alive window, else undefined. */
  take(): Socket | undefined {
    const now = performance.now();
    for (;;) {
      const e = this.idle.pop();
      if (!e) return undefined;
      if (now - e.since < e.ttl && !e.socket.destroyed && e.socket.readyState === "open") return e.socket;
      e.socket.destroy();
    }
  }

  connect(): Socket {
    const slot: SocketSlot = { exchange: undefined, buf: undefined, retained: false, read: { buf: EMPTY, ranges: new Ranges(), raw: EMPTY, aligned: false, last: false } };
    let s: Socket;
    if (this.tls) {
      s = tlsConnect({ host: this.host, port: this.port, servername: this.host, ALPNProtocols: ["http/1.1"] }).setNoDelay(true);
      s.on("data", (b: Buffer) => (slot.exchange ? slot.exchange.data(b) : s.destroy()));
    } else {
      const fresh = () => (slot.buf = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES));
      s = connect({
        host: this.host,
        port: this.port,
        noDelay: true,
        onread: {
          // asked once at connect and again after every read
          buffer: () => (slot.retained ? ((slot.retained = false), fresh()) : slot.buf ?? fresh()),
          callback: (n) => {
            const ex = slot.exchange;
            if (ex) ex.data(slot.buf!.subarray(0, n));
            else s.destroy(); // an idle socket must not receive anything: that would be a protocol error
            return true;
          },
        },
      });
    }
    slots.set(s, slot);
    s.setTimeout(this.o.connectTimeoutMs ?? 5000, () => s.destroy(new Error(`connect to ${this.hostHeader} timed out`)));
    s.once(this.tls ? "secureConnect" : "connect", () => s.setTimeout(0));
    // an idle socket that the server closes or resets simply leaves the pool
    s.on("end", () => slot.exchange?.eof());
    s.on("error", (e: Error) => slot.exchange?.fail(e));
    s.on("close", () => {
      this.forget(s);
      slot.exchange?.fail(new Error("upstream closed the connection"));
    });
    return s;
  }

  release(socket: Socket, ttlMs: number): void {
    if (this.closed || socket.destroyed) return void socket.destroy();
    socket.resume(); // the last exchange may have paused it for a slow client; idle sockets must see a close
    this.idle.push({ socket, since: performance.now(), ttl: ttlMs });
  }

  private forget(s: Socket): void {
    const i = this.idle.findIndex((e) => e.socket === s);
    if (i >= 0) this.idle.splice(i, 1);
  }

  private sweep(now: number): void {
    for (const e of this.idle.filter((x) => now - x.since >= x.ttl)) e.socket.destroy();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.sweeper);
    for (const e of this.idle.splice(0)) e.socket.destroy();
  }
}

/** The status code of an `HTTP/1.0 NNN` or `HTTP/1.1 NNN` line, or -1 (what /^HTTP\/1\.[01] \d{3}/ accepts, with no match array per answer). */
function statusOf(line: string): number {
  if (!line.startsWith("HTTP/1.") || (line.charCodeAt(7) !== 0x30 && line.charCodeAt(7) !== 0x31) || line.charCodeAt(8) !== 0x20) return -1;
  let status = 0;
  for (let i = 9; i < 12; i++) {
    const d = line.charCodeAt(i) - 0x30;
    if (!(d >= 0 && d <= 9)) return -1;
    status = status * 10 + d;
  }
  return status;
}

const joined = (prev: string, v: string) => (prev === "" ? v : `${prev}, ${v}`);

/** One request/response on one socket (plus, at most, one retry on a fresh socket). */
class Exchange implements H1Call {
  private socket!: Socket;
  private reused = false;
  private received = false;
  private finished = false;
  private state = S.Head;
  private headBuf: Buffer | undefined;
  private res: H1Response | undefined;
  private keepAlive = true;
  private ttlMs = 4000;
  /** Body bytes still to come (Length). */
  private left = 0;
  private chunks: ChunkedDecoder | undefined;
  private read!: BodyRead;
  /** The socket's slot: its listeners pass events here while this exchange holds it. */
  private slot!: SocketSlot;

  constructor(private readonly pool: H1Pool, private readonly bytes: Buffer, private readonly h: H1Handler) {}

  start(pooled: Socket | undefined): void {
    this.reused = pooled !== undefined;
    const s = (this.socket = pooled ?? this.pool.connect());
    this.slot = slots.get(s)!;
    this.slot.exchange = this;
    this.read = this.slot.read;
    s.write(this.bytes);
  }

  abort(): void {
    if (this.finished) return;
    this.finished = true;
    this.detach();
    this.socket.destroy();
  }

  // no-ops once the exchange is over: by then the socket may serve another request from the pool
  pause(): void {
    if (!this.finished) this.socket.pause();
  }

  resume(): void {
    if (!this.finished) this.socket.resume();
  }

  retainRead(): void {
    this.slot.retained = true;
  }

  get handOffSocket(): Socket | undefined {
    return this.finished || this.slot.buf === undefined ? undefined : this.socket; // no read buffer of its own: TLS
  }

  inject(read: Buffer): void {
    if (!this.finished) this.data(read);
  }

  ended(): void {
    this.done(true);
  }

  private detach(): void {
    if (this.slot.exchange === this) this.slot.exchange = undefined;
  }

  fail(e: Error): void {
    if (this.finished) return;
    if (this.reused && !this.received) {
      // the server closed a kept-alive socket as we reused it: the request never reached it
      this.detach();
      this.socket.destroy();
      return this.start(undefined);
    }
    this.finished = true;
    this.detach();
    this.socket.destroy();
    this.h.onError(e, !this.received);
  }

  eof(): void {
    if (this.state === S.Close) return this.done(false);
    this.fail(new Error(this.res ? "upstream closed the connection mid-body" : "upstream closed the connection before answering"));
  }

  private done(reusable: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.detach();
    if (reusable && this.keepAlive) this.pool.release(this.socket, this.ttlMs);
    else this.socket.destroy();
    this.h.onEnd();
  }

  data(b: Buffer): void {
    this.received = true;
    let pos = 0;
    if (this.state === S.Head) {
      pos = this.head(b);
      if (pos < 0) return;
      if ((this.state as S) === S.Done) return this.done(pos === b.length); // head() moved it on
      if (pos === b.length) return;
    }
    this.body(b, pos);
  }

  /** Parses the response head; returns where the body starts in `b`, or -1 when more is needed. */
  private head(b: Buffer): number {
    const buf = this.headBuf ? Buffer.concat([this.headBuf, b]) : b;
    const offset = this.headBuf ? this.headBuf.length : 0;
    const end = buf.indexOf(CRLF2);
    if (end < 0) {
      if (buf.length > 64 * 1024) this.fail(new Error("upstream response head exceeds 64 KiB"));
      else this.headBuf = Buffer.from(buf); // copy: the read's memory is not ours to keep
      return -1;
    }
    this.headBuf = undefined;
    const text = buf.toString("latin1", 0, end);
    const eol = text.indexOf("\r\n");
    const statusLine = eol < 0 ? text : text.slice(0, eol);
    const status = statusOf(statusLine);
    if (status < 0) {
      this.fail(new Error(`upstream sent a malformed status line: ${JSON.stringify(statusLine.slice(0, 80))}`));
      return -1;
    }
    const head = new UpstreamHead(status, text);
    let te = "";
    let cl: string | undefined;
    let conn = "";
    let ka = "";
    for (let p = eol < 0 ? text.length : eol + 2; p < text.length; ) {
      let e = text.indexOf("\r\n", p);
      if (e < 0) e = text.length;
      const c = text.indexOf(":", p);
      // only names of these lengths matter here: connection and keep-alive 10, content-type 12,
      // content-length 14, transfer-encoding 17 (a repeated one is joined, as the full map does)
      const n = c - p;
      if (c > 0 && c < e && (n === 10 || n === 12 || n === 14 || n === 17)) {
        const k = text.slice(p, c).toLowerCase();
        const v = text.slice(c + 1, e).trim();
        if (k === "content-type") head.contentType = joined(head.contentType, v);
        else if (k === "transfer-encoding") te = joined(te, v);
        else if (k === "content-length") cl = cl === undefined ? v : `${cl}, ${v}`;
        else if (k === "connection") conn = joined(conn, v);
        else if (k === "keep-alive") ka = joined(ka, v);
      }
      p = e + 2;
    }
    const bodyAt = end + 4 - offset; // offset of the body within `b`
    if (status < 200) {
      // 1xx (103 Early Hints, an unasked-for 100): the real answer follows
      if (bodyAt === b.length) return -1;
      const r = this.head(b.subarray(bodyAt));
      return r < 0 ? r : r + bodyAt;
    }
    conn = conn.toLowerCase();
    this.keepAlive = statusLine.charCodeAt(7) === 0x31 /* HTTP/1.1 */ ? !conn.includes("close") : conn.includes("keep-alive");
    const kaTimeout = ka === "" ? null : /timeout=(\d+)/.exec(ka);
    // like undici: trust the server's advertised idle timeout minus a second, else 4 s
    if (kaTimeout) this.ttlMs = Math.max(0, Number(kaTimeout[1]) * 1000 - 1000);
    head.chunked = te !== "" && /chunked/i.test(te);
    this.res = head;
    if (head.chunked) {
      this.state = S.Chunked;
      this.chunks = new ChunkedDecoder();
    } else if (status === 204 || status === 304) this.state = S.Done;
    else if (cl !== undefined) {
      this.left = Number(cl);
      if (!Number.isSafeInteger(this.left) || this.left < 0) {
        this.fail(new Error(`upstream sent content-length ${JSON.stringify(cl)}`));
        return -1;
      }
      this.state = this.left === 0 ? S.Done : S.Length;
    } else {
      this.state = S.Close;
      this.keepAlive = false;
    }
    this.h.onHead(this.res);
    if (this.finished) return -1; // the handler aborted
    return bodyAt;
  }

  private body(b: Buffer, pos: number): void {
    const r = this.read;
    r.buf = b;
    r.ranges.clear();
    if (this.state === S.Length) {
      const n = Math.min(this.left, b.length - pos);
      r.ranges.add(pos, pos + n);
      this.left -= n;
      this.emit(b.subarray(pos, pos + n), false, this.left === 0);
      if (this.left === 0 && !this.finished) this.done(pos + n === b.length);
      return;
    }
    if (this.state === S.Close) {
      r.ranges.add(pos, b.length);
      return this.emit(b.subarray(pos), false, false);
    }
    const start = pos;
    const dec = this.chunks!;
    const startAligned = dec.atBoundary;
    try {
      pos = dec.feed(b, pos, r.ranges);
    } catch (e) {
      return this.fail(new Error(`upstream sent ${(e as Error).message}`));
    }
    const rawEnd = dec.zeroAt; // where the zero-size chunk starts, when it is in this read
    const aligned = startAligned && (rawEnd >= 0 || dec.atBoundary);
    // most reads are all chunk data: the read itself, not one more Buffer object per read
    const raw = start === 0 && rawEnd < 0 ? b : b.subarray(start, rawEnd >= 0 ? rawEnd : b.length);
    if (raw.length > 0 || r.ranges.n > 0) this.emit(raw, aligned, dec.done);
    if (dec.done && !this.finished) this.done(pos === b.length);
  }

  private emit(raw: Buffer, aligned: boolean, last: boolean): void {
    const r = this.read;
    r.raw = raw;
    r.aligned = aligned;
    r.last = last;
    this.h.onBody(r);
  }
}
