/**
 * The gateway's HTTP/1.1 server, on node:net.
 *
 * Hand-written rather than node:http because of what node:http costs on the gateway's hot path: with
 * the same relay behind both fronts, a 64-token SSE stream cost 0.205 ms of user CPU behind node:http
 * and 0.143 ms behind this server (docs/serve.md, "Gateway cost"). node:http builds an
 * IncomingMessage (a Readable) and a ServerResponse (a Writable) per request, frames each write as a
 * separate writev, and corks and uncorks the socket on a tick; here a request is a plain object with
 * its body already read, and a response writes one buffer per call.
 *
 * What it handles: request line and headers (validated: token characters, no obs-fold, no bare LF,
 * Host on HTTP/1.1, Content-Length and Transfer-Encoding rules against request smuggling — 400 and
 * close on anything else), content-length and chunked request bodies up to a limit (past it the
 * request is still dispatched, marked `bodyTooLarge`, and the connection closes after the answer),
 * `Expect: 100-continue`, keep-alive and pipelining (one response at a time, in order), HTTP/1.0
 * clients (no chunked framing; a stream ends with the connection), HEAD, deadlines for a request's
 * head and for all of it (408) and for idle keep-alive connections, a graceful close, and HTTPS
 * (node:tls, the certificate replaceable while running, client certificates optionally verified).
 * Its parser is fuzzed against llhttp in test/serve/h1-server.test.ts.
 */
import { STATUS_CODES } from "node:http";
import { createServer, type AddressInfo, type Server, type Socket } from "node:net";
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from "node:tls";
import { beginChunk, chunkOf, chunkSize, ChunkedDecoder, endChunk, Ranges } from "./h1-chunked.js";
import { HttpError } from "./http-error.js";

export interface H1Request {
  method: string;
  /** The request target as sent (origin-form: path and query). */
  url: string;
  httpVersion: "1.0" | "1.1";
  /** Lower-cased names; repeated headers joined with ", ". */
  headers: Record<string, string>;
  /** The whole body (empty when there is none or it was too large). */
  body: Buffer;
  /** Set when the body exceeded the limit: its size as declared or as received so far. */
  bodyTooLarge?: number;
  /** The client's address (the connection's peer). */
  remoteAddress?: string;
  /** With client certificates (`verifyClients`): the verified certificate's subject CN (or whole subject). */
  clientCert?: string;
}

/** HTTPS: PEM key and certificate chain, and optionally client certificates checked against `ca` (mutual TLS). */
export interface TlsOptions {
  key: Buffer;
  cert: Buffer;
  /** PEM CA certificates client certificates must chain to. */
  ca?: Buffer;
  /** "required": a client without a valid certificate fails the handshake; "optional": one without any is let in. */
  verifyClients?: "optional" | "required";
}

export interface H1ServerOptions {
  maxBodyBytes: number;
  /** Idle time after which a kept-alive connection is closed. */
  keepAliveTimeoutMs?: number;
  /** Time allowed from a request's first byte to the end of its head. */
  headersTimeoutMs?: number;
  /** Time allowed from a request's first byte to the end of its body (node:http's requestTimeout). */
  requestTimeoutMs?: number;
  maxHeaderBytes?: number;
  maxHeaders?: number;
  /** Serve HTTPS with this PEM key and certificate chain (HTTP/1.1 over TLS, announced by ALPN). */
  tls?: TlsOptions;
}

export type H1Handler = (req: H1Request, res: H1Response) => void;

const CRLF2 = Buffer.from("\r\n\r\n");
const LAST_CHUNK = Buffer.from("0\r\n\r\n");
const CONTINUE = Buffer.from("HTTP/1.1 100 Continue\r\n\r\n");
/**
 * Per byte: 1 for a token character (a header name's), 2 for a control character a header value must
 * not hold (RFC 9110 §5.5: all below 0x20 but HTAB, and DEL). One table lookup per byte instead of two
 * regex runs per header line: the head is parsed on every request.
 */
const BYTE_CLASS = (() => {
  const t = new Uint8Array(256);
  for (const c of "!#$%&'*+-.^_`|~") t[c.charCodeAt(0)] = 1;
  for (let c = 0; c < 256; c++) {
    if ((c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a)) t[c] = 1;
    if ((c < 0x20 && c !== 9) || c === 0x7f) t[c] = 2;
  }
  return t;
})();
/** Method, target (visible ASCII only, as llhttp takes it: clients percent-encode the rest), version digits. */
const REQUEST_LINE = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([!-~]+) HTTP\/(\d)\.(\d)$/;
/** Optional whitespace around a header value: space or tab. */
const isOws = (c: number) => c === 32 || c === 9;

/** The Date header, rendered once per second as node:http does. */
let dateLine = "";
let dateAt = 0;
function date(): string {
  const now = Date.now();
  if (now - dateAt >= 1000) {
    dateAt = now - (now % 1000);
    dateLine = `date: ${new Date(now).toUTCString()}\r\n`;
  }
  return dateLine;
}

export class H1Server {
  private readonly server: Server;
  private readonly conns = new Set<Conn>();
  private readonly sweeper: NodeJS.Timeout;
  closing = false;
  readonly o: Required<Omit<H1ServerOptions, "tls">> & Pick<H1ServerOptions, "tls">;

  constructor(o: H1ServerOptions, readonly handler: H1Handler) {
    this.o = { keepAliveTimeoutMs: 65_000, headersTimeoutMs: 30_000, requestTimeoutMs: 300_000, maxHeaderBytes: 16 * 1024, maxHeaders: 200, ...o };
    const accept = (socket: Socket) => {
      const c = new Conn(this, socket);
      this.conns.add(c);
      socket.on("close", () => this.conns.delete(c));
    };
    if (o.tls) {
      const { key, cert, ca, verifyClients } = o.tls;
      // node:tls rejects a bad client certificate in the handshake only when all clients must send
      // one; with "optional", one that was sent but does not verify is cut here instead
      const mutual = verifyClients ? { ca, requestCert: true, rejectUnauthorized: verifyClients === "required" } : {};
      // a TLSSocket is a net.Socket: the connection code is the same once the handshake is done
      const server = createTlsServer({ key, cert, ...mutual, ALPNProtocols: ["http/1.1"], handshakeTimeout: this.o.headersTimeoutMs }, (socket) => {
        if (verifyClients === "optional" && !socket.authorized && hasPeerCert(socket)) return void socket.destroy();
        accept(socket.setNoDelay(true));
      });
      server.on("tlsClientError", () => undefined); // a failed handshake only closes that socket
      this.server = server;
    } else this.server = createServer({ noDelay: true }, accept);
    // deadlines are checked by one timer per server, not one per connection
    this.sweeper = setInterval(() => this.sweep(performance.now()), 1000).unref();
  }

  /**
   * A new key, certificate and client CA for connections accepted from now on (an HTTPS server
   * only). Whether client certificates are asked for is fixed at start.
   */
  setTls(tls: TlsOptions): void {
    if (!this.o.tls) throw new Error("h1 server: setTls on a server started without TLS");
    (this.server as TlsServer).setSecureContext({ key: tls.key, cert: tls.cert, ca: tls.ca });
  }

  listen(port: number, host: string, backlog = 4096): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen({ port, host, backlog }, () => {
        this.server.off("error", reject);
        resolve(this.server.address() as AddressInfo);
      });
    });
  }

  /**
   * Stops accepting and closes idle connections (as node:http does since Node 19); the others close
   * once their current answer is sent. Deadlines are still enforced until the last one is gone.
   */
  close(): void {
    this.closing = true;
    this.server.close(() => clearInterval(this.sweeper));
    for (const c of this.conns) c.closeAfterAnswer();
  }

  closeIdleConnections(): void {
    for (const c of this.conns) if (c.idle) c.socket.destroy();
  }

  closeAllConnections(): void {
    for (const c of this.conns) c.destroy();
  }

  private sweep(now: number): void {
    for (const c of this.conns) c.checkDeadlines(now);
  }
}

/** One client connection: parses requests in order and runs one response at a time. */
class Conn {
  private buf: Buffer | undefined;
  /** Scratch for the chunked decoder's data offsets. */
  private readonly ranges = new Ranges();
  private active: H1Response | undefined;
  /** The request whose body is being read, with what is left of it. */
  private pending: { req: H1Request; left: number; chunks?: ChunkedDecoder; parts: Buffer[] } | undefined;
  /** When the current request's first byte came (-1: none yet); its head and body deadlines run from there. */
  private headSince = -1;
  /** Inside pump(): an answer ended synchronously by the handler lets that loop go on, instead of a nested one per request. */
  private pumping = false;
  private idleSince = performance.now();
  /** The client certificate's name, when the server verifies client certificates and this one passed. */
  private readonly clientCert: string | undefined;

  constructor(private readonly server: H1Server, readonly socket: Socket) {
    if (server.o.tls?.verifyClients && (socket as TLSSocket).authorized) this.clientCert = certName(socket as TLSSocket);
    socket.on("data", (b: Buffer) => this.data(b));
    socket.on("error", () => socket.destroy());
    socket.on("close", () => this.active?.closed());
  }

  /** Closes the connection now, taking it back first from whoever was lent its socket (H1Response.lend). */
  destroy(): void {
    this.active?.takeBack();
    this.socket.destroy();
  }

  /** No answer running and no request half-received. */
  get idle(): boolean {
    return !this.active && !this.pending && !this.buf;
  }

  /** Closes the connection now when idle, else after the current answer (which says so when its head is still to go). */
  closeAfterAnswer(): void {
    if (this.idle) this.socket.destroy();
    else if (this.active) this.active.keepAlive = false;
  }

  checkDeadlines(now: number): void {
    if (this.active || this.socket.destroyed) return;
    const o = this.server.o;
    if (this.pending && now - this.headSince > o.requestTimeoutMs) this.refuse(408, "request not received in time");
    else if (!this.pending && this.headSince >= 0 && now - this.headSince > o.headersTimeoutMs) this.refuse(408, "request head not received in time");
    else if (this.idle && now - this.idleSince > o.keepAliveTimeoutMs) this.socket.destroy();
  }

  private data(b: Buffer): void {
    if (this.socket.writableEnded) return; // closing after an answer: the rest is not read
    if (this.headSince < 0 && !this.pending) this.headSince = performance.now();
    this.buf = this.buf ? Buffer.concat([this.buf, b]) : b;
    // a client that pipelines far ahead of its answers waits in its own socket buffer
    if (this.active && this.buf.length > 1024 * 1024) this.socket.pause();
    this.pump();
  }

  /** Parses and dispatches requests while no answer is running. */
  private pump(): void {
    this.pumping = true;
    try {
      while (!this.active && this.buf && !this.socket.destroyed) {
        if (this.pending) {
          if (!this.readBody()) return;
          continue;
        }
        if (this.buf[0] === 13 || this.buf[0] === 10) {
          // RFC 9112 §2.2: empty lines before a request are ignored (some clients send CRLF after a body)
          let i = 1;
          while (i < this.buf.length && (this.buf[i] === 13 || this.buf[i] === 10)) i++;
          this.take(i);
          if (!this.buf) this.headSince = -1; // nothing of a request yet: the connection is idle
          continue;
        }
        const end = this.buf.indexOf(CRLF2);
        if (end < 0) {
          if (this.buf.length > this.server.o.maxHeaderBytes) this.refuse(431, `request head exceeds ${this.server.o.maxHeaderBytes} bytes`);
          return;
        }
        if (end > this.server.o.maxHeaderBytes) return this.refuse(431, `request head exceeds ${this.server.o.maxHeaderBytes} bytes`);
        const head = this.buf.toString("latin1", 0, end);
        this.take(end + 4);
        let req: H1Request | undefined;
        try {
          req = this.parseHead(head);
        } catch (e) {
          const err = e instanceof HttpError ? e : new HttpError(400, String(e));
          return this.refuse(err.status, err.message);
        }
        // outside the try: what the handler throws is not the client's fault
        if (req) this.dispatch(req);
      }
    } finally {
      this.pumping = false;
    }
  }

  private take(n: number): void {
    this.buf = n >= this.buf!.length ? undefined : this.buf!.subarray(n);
  }

  /** The request to dispatch now, or undefined when its body is to be read first (`pending`). */
  private parseHead(head: string): H1Request | undefined {
    if (/(?:^|[^\r])\n/.test(head)) throw new HttpError(400, "a bare LF in the request head (lines end with CRLF)");
    // lines are walked in place (no array of them); values are trimmed by index, not by regex
    const eol = head.indexOf("\r\n");
    const requestLine = eol < 0 ? head : head.slice(0, eol);
    const m = REQUEST_LINE.exec(requestLine);
    if (!m) throw new HttpError(400, `malformed request line ${JSON.stringify(requestLine.slice(0, 80))}`);
    if (m[3] !== "1" || (m[4] !== "0" && m[4] !== "1")) throw new HttpError(505, `HTTP/${m[3]}.${m[4]} is not supported (HTTP/1.0 and 1.1 are)`);
    const headers: Record<string, string> = {};
    let count = 0;
    for (let p = eol < 0 ? head.length : eol + 2; p < head.length; ) {
      let e = head.indexOf("\r\n", p);
      if (e < 0) e = head.length;
      if (++count > this.server.o.maxHeaders) throw new HttpError(431, `more than ${this.server.o.maxHeaders} request headers`);
      const c = head.indexOf(":", p);
      const first = head.charCodeAt(p);
      if (c <= p || c >= e || first === 32 || first === 9) throw new HttpError(400, `malformed header line ${JSON.stringify(head.slice(p, Math.min(e, p + 80)))}`);
      let upper = false;
      for (let i = p; i < c; i++) {
        const b = head.charCodeAt(i);
        if (BYTE_CLASS[b] !== 1) throw new HttpError(400, `malformed header name ${JSON.stringify(head.slice(p, Math.min(c, p + 80)))}`);
        if (b <= 0x5a && b >= 0x41) upper = true;
      }
      let a = c + 1;
      let z = e;
      while (a < z && isOws(head.charCodeAt(a))) a++;
      while (z > a && isOws(head.charCodeAt(z - 1))) z--;
      for (let i = a; i < z; i++) if (BYTE_CLASS[head.charCodeAt(i)] === 2) throw new HttpError(400, `header ${head.slice(p, c)} holds a control character`);
      const value = head.slice(a, z);
      // most clients send lower-case names: no second string for them
      const k = upper ? head.slice(p, c).toLowerCase() : head.slice(p, c);
      const prev = headers[k];
      // not `=== undefined`: "constructor" would find Object.prototype's
      if (typeof prev !== "string") headers[k] = value;
      else if (k === "content-length" || k === "host") {
        if (prev !== value) throw new HttpError(400, `conflicting ${k} headers`);
      } else headers[k] = `${prev}, ${value}`;
      p = e + 2;
    }
    const httpVersion = m[4] === "1" ? "1.1" : "1.0";
    if (httpVersion === "1.1" && headers.host === undefined) throw new HttpError(400, "an HTTP/1.1 request without a Host header");
    const req: H1Request = { method: m[1], url: m[2], httpVersion, headers, body: EMPTY, remoteAddress: this.socket.remoteAddress, clientCert: this.clientCert };
    const te = headers["transfer-encoding"];
    const limit = this.server.o.maxBodyBytes;
    let left = 0;
    let chunks: ChunkedDecoder | undefined;
    if (te !== undefined) {
      if (headers["content-length"] !== undefined) throw new HttpError(400, "both Content-Length and Transfer-Encoding (send one)");
      if (httpVersion === "1.0") throw new HttpError(400, "Transfer-Encoding on an HTTP/1.0 request");
      if (!/(?:^|,)[ \t]*chunked[ \t]*$/i.test(te)) throw new HttpError(400, `Transfer-Encoding ${JSON.stringify(te)} (only chunked is accepted)`);
      chunks = new ChunkedDecoder();
    } else if (headers["content-length"] !== undefined) {
      const cl = headers["content-length"];
      if (!/^\d{1,15}$/.test(cl)) throw new HttpError(400, `malformed Content-Length ${JSON.stringify(cl.slice(0, 40))}`);
      left = Number(cl);
      if (left > limit) {
        // answered at once without reading the body; the connection closes after the answer
        req.bodyTooLarge = left;
        return req;
      }
    }
    if (left === 0 && !chunks) return req;
    if (httpVersion === "1.1" && !this.buf && (headers.expect ?? "").toLowerCase() === "100-continue") this.socket.write(CONTINUE);
    this.pending = { req, left, chunks, parts: [] };
    return undefined;
  }

  /** Moves body bytes from the buffer into the pending request; true when it was dispatched. */
  private readBody(): boolean {
    const p = this.pending!;
    const b = this.buf!;
    if (p.chunks) {
      let pos: number;
      try {
        this.ranges.clear();
        pos = p.chunks.feed(b, 0, this.ranges);
      } catch (e) {
        this.pending = undefined;
        this.refuse(400, `malformed chunked request body: ${(e as Error).message}`);
        return false;
      }
      p.parts.push(...this.ranges.slices(b));
      this.take(pos);
      if (p.chunks.total > this.server.o.maxBodyBytes) {
        this.pending = undefined;
        p.req.bodyTooLarge = p.chunks.total;
        this.dispatch(p.req);
        return true;
      }
      if (!p.chunks.done) return false;
    } else {
      const n = Math.min(p.left, b.length);
      p.parts.push(b.subarray(0, n));
      p.left -= n;
      this.take(n);
      if (p.left > 0) return false;
    }
    this.pending = undefined;
    p.req.body = p.parts.length === 1 ? p.parts[0] : Buffer.concat(p.parts);
    this.dispatch(p.req);
    return true;
  }

  /** Runs the handler on a request; a body over the limit was not read, so the connection closes after it. */
  private dispatch(req: H1Request): void {
    this.headSince = -1;
    const closeAfter = req.bodyTooLarge !== undefined;
    if (closeAfter) this.buf = undefined; // the rest of an over-long body is never read
    const conn = (req.headers.connection ?? "").toLowerCase();
    const keepAlive = !closeAfter && !this.server.closing && (req.httpVersion === "1.1" ? !conn.includes("close") : conn.includes("keep-alive"));
    const res = new H1Response(this.socket, req, keepAlive, this.server.o.keepAliveTimeoutMs, this);
    this.active = res;
    this.server.handler(req, res);
  }

  /** `res` ended: the connection reads its next request, or closes. */
  finished(res: H1Response): void {
    if (this.active !== res) return;
    this.active = undefined;
    this.idleSince = performance.now();
    // a paused client is read again either way: to serve what it pipelined, or to drain it before the close
    if (this.socket.isPaused()) this.socket.resume();
    if (!res.keepAlive || this.server.closing) {
      this.socket.end();
      this.buf = undefined;
      return;
    }
    if (this.buf) this.headSince = performance.now();
    if (!this.pumping) this.pump();
  }

  /** Answers a request the server itself rejects, then closes the connection. */
  private refuse(status: number, message: string): void {
    this.buf = undefined;
    this.pending = undefined;
    this.headSince = -1;
    const body = JSON.stringify(new HttpError(status, message, { code: "bad_http_request" }).body());
    this.socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n${date()}content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  }
}

const EMPTY = Buffer.alloc(0);

/** Whether the client sent a certificate (node gives an empty object when it did not). */
function hasPeerCert(socket: TLSSocket): boolean {
  const c = socket.getPeerCertificate();
  return c !== null && typeof c === "object" && Object.keys(c).length > 0;
}

/** A verified client certificate's subject CN, else its whole subject as one line. */
function certName(socket: TLSSocket): string | undefined {
  const subject = socket.getPeerCertificate()?.subject as Record<string, string | string[]> | undefined;
  if (!subject) return undefined;
  const cn = subject.CN;
  if (cn !== undefined) return Array.isArray(cn) ? cn.join(",") : cn;
  const all = Object.entries(subject).map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(",") : v}`);
  return all.length ? all.join(", ") : undefined;
}

/**
 * One answer. Headers go out with the first write or with end(): one buffer per call. After the head,
 * HTTP/1.1 bodies of unknown length are chunk-framed; HTTP/1.0 ones end with the connection.
 */
export class H1Response {
  statusCode = 0;
  headersSent = false;
  writableEnded = false;
  /** True once the connection closed before end() (the client went away). */
  destroyed = false;
  /** Told once when the connection closes before the answer ended (the request's Cancel). */
  closeListener: { onClientClose(): void } | undefined;
  /** Who holds the socket now (lend()): stopped before the socket is destroyed. */
  private lentTo: { stop(): void } | undefined;
  private extra = "";
  private headers: Record<string, string | number> = {};
  private chunked = false;
  private stream = false;
  private readonly head: boolean;
  /**
   * HTTPS: bytes given as they are (writeFramed, an HTTP/1.0 body) are copied first. A TLS socket
   * reports written bytes as pending until its write completes in a later turn, so `holdsBytes` would
   * stay true and make the caller give up its read buffer on every read; a copy costs less.
   */
  private readonly copies: boolean;

  constructor(
    readonly socket: Socket,
    readonly req: H1Request,
    /** Whether the connection stays open after this answer (false once the head said close). */
    public keepAlive: boolean,
    private readonly keepAliveMs: number,
    /** Told when this answer ended (the connection itself: no closure per request). */
    private readonly conn: { finished(res: H1Response): void },
  ) {
    this.head = req.method === "HEAD";
    this.copies = (socket as { encrypted?: boolean }).encrypted === true;
  }

  /** True while bytes the caller passed to write() as they are may still be read by the socket (the caller must not reuse them). */
  get holdsBytes(): boolean {
    return !this.copies && this.socket.writableLength > 0;
  }

  /** `b` itself, or a copy when the socket could hold on to it (see `copies`). */
  private own(b: Buffer): Buffer {
    return this.copies ? Buffer.from(b) : b;
  }

  /** A header for whatever head this response sends (set before writeHead). */
  setHeader(name: string, value: string): void {
    this.extra += `${name}: ${value}\r\n`;
  }

  /** `stream`: the body's length is never declared, even when end() brings all of it (SSE). */
  writeHead(status: number, headers: Record<string, string | number> = {}, stream = false): this {
    this.statusCode = status;
    this.headers = headers;
    this.stream = stream;
    return this;
  }

  /** Writes body bytes (the head first, with them); false when the socket asks to wait (waitDrain). */
  write(chunk: string | Buffer): boolean {
    if (this.writableEnded || this.destroyed) return true;
    const body = typeof chunk === "string" ? Buffer.from(chunk) : chunk;
    if (!this.headersSent) return this.socket.write(this.withHead(body, false));
    if (this.head || body.length === 0) return true;
    return this.socket.write(this.chunked ? frame(body) : this.own(body));
  }

  /**
   * Writes bytes that already carry HTTP/1.1 chunk framing (complete chunks, as an upstream sent
   * them); only after the head went out on a chunked response.
   */
  writeFramed(framed: Buffer): boolean {
    if (this.writableEnded || this.destroyed || this.head) return true;
    return this.socket.write(this.own(framed));
  }

  get framedWrites(): boolean {
    return this.headersSent && this.chunked && !this.head;
  }

  end(chunk?: string | Buffer): void {
    if (this.writableEnded) return;
    this.writableEnded = true;
    if (!this.destroyed) {
      const body = chunk === undefined ? EMPTY : typeof chunk === "string" ? Buffer.from(chunk) : chunk;
      if (!this.headersSent) {
        this.socket.write(this.withHead(body, true));
      } else if (this.chunked && !this.head) this.socket.write(body.length > 0 ? frame(body, true) : LAST_CHUNK);
      else if (body.length > 0 && !this.head) this.socket.write(this.own(body)); // an HTTP/1.0 stream, whose end is the close
    }
    this.conn.finished(this);
  }

  /** The body's last chunk went out as framed bytes (writeFramed(), or the native relay with the socket lent): the answer is over. */
  endedFramed(): void {
    if (this.writableEnded) return;
    this.writableEnded = true;
    this.conn.finished(this);
  }

  /** Resolves when the socket can take more, or is gone. */
  waitDrain(): Promise<void> {
    if (this.destroyed) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const s = this.socket;
      const done = () => {
        s.off("drain", done);
        s.off("close", done);
        resolve();
      };
      s.on("drain", done);
      s.on("close", done);
    });
  }

  destroy(): void {
    this.takeBack();
    this.socket.destroy();
  }

  /**
   * The plain-TCP socket, lent to the native relay while a chunked stream's body is being written
   * (relay-handoff.ts): `holder` is stopped before the socket is destroyed, so nothing else watches
   * its fd when it is closed. Undefined over TLS, HTTP/1.0, HEAD, or once the answer ended.
   */
  lend(holder: { stop(): void }): Socket | undefined {
    if (this.copies || !this.framedWrites || this.writableEnded || this.destroyed || this.lentTo) return undefined;
    this.lentTo = holder;
    return this.socket;
  }

  /** Stops the socket's holder, if any (it gives the socket back). */
  takeBack(): void {
    const h = this.lentTo;
    this.lentTo = undefined;
    h?.stop();
  }

  /** The holder gave the socket back. */
  returned(): void {
    this.lentTo = undefined;
  }

  /** The connection closed. */
  closed(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    if (!this.writableEnded) this.closeListener?.onClientClose();
  }

  /** The head plus the first body bytes, as one buffer. `whole`: this is all of the body. */
  private withHead(body: Buffer, whole: boolean): Buffer {
    this.headersSent = true;
    if (this.statusCode === 0) this.statusCode = 200;
    const status = this.statusCode;
    let h = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\n${date()}${this.extra}`;
    let length: number | undefined;
    for (const k in this.headers) {
      const lk = k.toLowerCase();
      if (lk === "content-length") length = Number(this.headers[k]);
      // the handler's "connection: close" ends the connection after this answer; the server writes the header itself
      else if (lk === "connection") this.keepAlive &&= !String(this.headers[k]).toLowerCase().includes("close");
      else h += `${k}: ${this.headers[k]}\r\n`;
    }
    const noBody = status === 204 || status === 304 || (status >= 100 && status < 200);
    // the whole body given to end() is its length; HEAD's is what GET's would be, as declared
    if (whole && !this.stream && !(this.head && length !== undefined)) length = body.length;
    if (!noBody && length !== undefined) h += `content-length: ${length}\r\n`;
    else if (!noBody && this.req.httpVersion === "1.1") {
      this.chunked = true;
      h += "transfer-encoding: chunked\r\n";
    }
    const keep = this.keepAlive && (length !== undefined || this.chunked || noBody);
    if (!keep) h += "connection: close\r\n";
    else if (this.req.httpVersion === "1.0") h += "connection: keep-alive\r\n";
    if (keep) h += `keep-alive: timeout=${Math.floor(this.keepAliveMs / 1000)}\r\n`;
    h += "\r\n";
    if (!keep) this.keepAlive = false;
    // a whole chunked body ends here too: the last chunk goes out in the same write
    const last = whole && this.chunked && !this.head;
    if (this.head || noBody || body.length === 0) return Buffer.from(last ? h + "0\r\n\r\n" : h, "latin1");
    // the head and the body (as its first chunk, and the last chunk when it ends here) in one allocation
    if (!this.chunked) {
      const out = Buffer.allocUnsafe(h.length + body.length);
      out.set(body, out.write(h, 0, h.length, "latin1"));
      return out;
    }
    const out = Buffer.allocUnsafe(h.length + chunkSize(body.length) + (last ? LAST_CHUNK.length : 0));
    const at = beginChunk(out, out.write(h, 0, h.length, "latin1"), body.length);
    out.set(body, at);
    const after = endChunk(out, at + body.length);
    if (last) out.set(LAST_CHUNK, after);
    return out;
  }
}

/** `b` as one chunk (size line, data, CRLF), and the last chunk after it when the body ends here: one allocation. */
function frame(b: Buffer, last = false): Buffer {
  if (!last) return chunkOf(b);
  const out = Buffer.allocUnsafe(chunkSize(b.length) + LAST_CHUNK.length);
  const at = beginChunk(out, 0, b.length);
  out.set(b, at);
  out.set(LAST_CHUNK, endChunk(out, at + b.length));
  return out;
}
