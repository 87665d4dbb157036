/**
 * Incremental decoder for HTTP/1.1 chunked bodies (RFC 9112 §7.1), shared by the proxy's client
 * (h1-pool.ts, upstream answers) and the gateway's server (h1-server.ts, request bodies), and the
 * encoding of one chunk (chunkSize / beginChunk / endChunk) for what the gateway sends. Size lines
 * and trailers may be split across reads; it works on byte offsets and never builds strings for the
 * common path.
 */
const enum C {
  Size,
  Data,
  DataEnd,
  Trailer,
  Done,
}

export class ChunkedDecoder {
  private state = C.Size;
  /** The chunk-size line being parsed: value so far, digits, bytes, past the digits, inside an extension, after a CR. */
  private size = 0;
  private sizeDigits = 0;
  private sizeLine = 0;
  private sizeEnd = false;
  private sizeExt = false;
  private sizeCR = false;
  /** Bytes of chunk extensions in the whole body: bounded as llhttp bounds them since CVE-2024-22019. */
  private extBytes = 0;
  /** Chunk data bytes still to come. */
  private left = 0;
  private crlfLeft = 0;
  /** Bytes of a trailer line split across reads. */
  private line = "";
  /** Where the zero-size chunk's line starts in the last fed read, or -1 when it was not in it. */
  zeroAt = -1;
  /** Decoded bytes so far (request bodies are size-limited on this). */
  total = 0;

  /** True when the next byte starts a chunk-size line (the bytes so far end on a chunk boundary). */
  get atBoundary(): boolean {
    return this.state === C.Size && this.sizeLine === 0;
  }

  /** True once the zero-size chunk and the trailers were read. */
  get done(): boolean {
    return this.state === C.Done;
  }

  /**
   * Decodes `b` from `pos`, adding where chunk data lies in `b` to `ranges` (offsets, not slices: a
   * read of many small chunks allocates nothing). Returns the position after
   * the last byte consumed: `b.length`, or less when the body ended inside `b` (a pipelined message
   * may follow). Throws an Error naming what was malformed.
   */
  feed(b: Buffer, pos: number, ranges: Ranges): number {
    this.zeroAt = -1;
    const start = pos;
    while (pos < b.length && this.state !== C.Done) {
      if (this.state === C.Size && this.sizeLine === 0) {
        const next = this.wholeChunk(b, pos, ranges);
        if (next > 0) {
          pos = next;
          continue;
        }
      }
      switch (this.state) {
        case C.Size: {
          // hex digits, optional whitespace, optional `;extension`, CRLF, byte by byte. Nothing else: a
          // size line read one way here and another way by a proxy in front is how requests get smuggled.
          const c = b[pos++];
          this.sizeLine++;
          if (c === 10) {
            const n = this.size;
            if (this.sizeDigits === 0) throw new Error("a chunk size line without a size");
            this.size = this.sizeDigits = this.sizeLine = 0;
            this.sizeEnd = this.sizeExt = this.sizeCR = false;
            if (n === 0) {
              this.zeroAt = Math.max(start, lineStart(b, pos));
              this.state = C.Trailer;
            } else {
              this.left = n;
              this.state = C.Data;
            }
          } else if (this.sizeCR) throw new Error("a CR without its LF in a chunk size line");
          else if (c === 13) this.sizeCR = true;
          else if (this.sizeExt) {
            if (++this.extBytes > 16 * 1024) throw new Error("chunk extensions over 16 KiB");
          } else if (c === 59 /* ; */) this.sizeExt = true;
          else if ((c === 32 || c === 9) && this.sizeDigits > 0) this.sizeEnd = true;
          else {
            const v = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
            if (v < 0 || this.sizeEnd || ++this.sizeDigits > 12) throw new Error(`a malformed chunk size (byte ${c})`);
            this.size = this.size * 16 + v;
          }
          break;
        }
        case C.Data: {
          const n = Math.min(this.left, b.length - pos);
          ranges.add(pos, pos + n);
          this.total += n;
          pos += n;
          this.left -= n;
          if (this.left === 0) {
            this.state = C.DataEnd;
            this.crlfLeft = 2;
          }
          break;
        }
        case C.DataEnd: {
          // the CRLF after the chunk's data (a bare LF is tolerated, as llhttp does in lenient mode)
          const c = b[pos++];
          if (c === 10) this.state = C.Size;
          else if (c !== 13 || --this.crlfLeft === 0) throw new Error("a chunk without its CRLF");
          break;
        }
        case C.Trailer: {
          const lf = b.indexOf(10, pos);
          if (lf < 0) {
            this.line += b.toString("latin1", pos);
            if (this.line.length > 16 * 1024) throw new Error("trailers over 16 KiB");
            pos = b.length;
            break;
          }
          const text = this.line + b.toString("latin1", pos, lf);
          this.line = "";
          pos = lf + 1;
          if (text === "" || text === "\r") this.state = C.Done;
          break;
        }
      }
    }
    return pos;
  }

  /**
   * The common case in one step: a plain `SIZE\r\n` line (hex digits only), then all of its data
   * and CRLF, inside `b`. Returns the position after it, or 0 to let the byte-by-byte machine above
   * take it (an extension, whitespace, the zero-size chunk, a chunk split across reads, anything
   * malformed — that machine names the fault). Streams of small SSE chunks spent most of their
   * decoding time in that machine's per-byte state updates.
   */
  private wholeChunk(b: Buffer, pos: number, ranges: Ranges): number {
    let size = 0;
    let i = pos;
    for (; i < b.length && i - pos <= 12; i++) {
      const c = b[i];
      const v = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : c >= 65 && c <= 70 ? c - 55 : -1;
      if (v < 0) break;
      size = size * 16 + v;
    }
    const dataAt = i + 2;
    const end = dataAt + size;
    if (size === 0 || i - pos > 12 || end + 2 > b.length || b[i] !== 13 || b[i + 1] !== 10 || b[end] !== 13 || b[end + 1] !== 10) return 0;
    ranges.add(dataAt, end);
    this.total += size;
    return end + 2;
  }
}

/** Start of the line that ends just before `pos` (the zero-size chunk's own line), within `b`. */
function lineStart(b: Buffer, pos: number): number {
  let i = pos - 2; // the LF just consumed is at pos - 1
  while (i >= 0 && b[i] !== 10) i--;
  return i + 1;
}

/**
 * Where body bytes lie in one read: start, end offsets (`v[0]`, `v[1]`, … up to `n`). Cleared and
 * refilled per read without reallocating: setting an array's length to 0 would drop V8's backing
 * store and make every read grow a new one.
 */
export class Ranges {
  readonly v: number[] = [];
  /** Values in use (twice the number of ranges). */
  n = 0;

  static of(...offsets: number[]): Ranges {
    const r = new Ranges();
    for (let i = 0; i + 1 < offsets.length; i += 2) r.add(offsets[i], offsets[i + 1]);
    return r;
  }

  add(start: number, end: number): void {
    this.v[this.n++] = start;
    this.v[this.n++] = end;
  }

  clear(): void {
    this.n = 0;
  }

  /** How many bytes of the ranges lie inside [a, b). */
  bytesIn(a: number, b: number): number {
    let size = 0;
    for (let i = 0; i < this.n && this.v[i] < b; i += 2) size += Math.max(0, Math.min(this.v[i + 1], b) - Math.max(this.v[i], a));
    return size;
  }

  /** Copies the bytes of `src` that the ranges name inside [a, b) to `dst` at `at`; returns the offset after them. */
  copyIn(src: Buffer, a: number, b: number, dst: Buffer, at: number): number {
    for (let i = 0; i < this.n && this.v[i] < b; i += 2) {
      const lo = Math.max(this.v[i], a);
      const hi = Math.min(this.v[i + 1], b);
      if (lo < hi) at += src.copy(dst, at, lo, hi);
    }
    return at;
  }

  /** The bytes of `src` that the ranges name, as one new Buffer (no slice object per range). */
  gather(src: Buffer): Buffer {
    const out = Buffer.allocUnsafe(this.bytesIn(0, src.length));
    this.copyIn(src, 0, src.length, out, 0);
    return out;
  }

  /** The slices of `b` these ranges name. */
  slices(b: Buffer): Buffer[] {
    const out: Buffer[] = [];
    for (let i = 0; i < this.n; i += 2) out.push(b.subarray(this.v[i], this.v[i + 1]));
    return out;
  }
}

/** Bytes one chunk of `n` data bytes takes: its size line, the data and the CRLF after them. */
export function chunkSize(n: number): number {
  return hexDigits(n) + n + 4;
}

/** Writes the size line of a chunk of `n` data bytes into `out` at `at`; returns where the data goes. */
export function beginChunk(out: Buffer, at: number, n: number): number {
  for (let i = at + hexDigits(n) - 1, v = n; i >= at; i--, v = Math.floor(v / 16)) out[i] = HEX[v % 16];
  at += hexDigits(n);
  out[at] = 13;
  out[at + 1] = 10;
  return at + 2;
}

/** Writes the CRLF that closes a chunk's data at `at`; returns the offset after it. */
export function endChunk(out: Buffer, at: number): number {
  out[at] = 13;
  out[at + 1] = 10;
  return at + 2;
}

/** `b` (or the parts, joined) as one chunk, in a new Buffer. */
export function chunkOf(b: Buffer | readonly Buffer[]): Buffer {
  const parts = Buffer.isBuffer(b) ? [b] : b;
  let size = 0;
  for (const p of parts) size += p.length;
  const out = Buffer.allocUnsafe(chunkSize(size));
  let at = beginChunk(out, 0, size);
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  endChunk(out, at);
  return out;
}

const HEX = Buffer.from("0123456789abcdef", "latin1");
/** Hex digits of a size (at least one). */
function hexDigits(n: number): number {
  let d = 1;
  for (; n >= 16; d++) n = Math.floor(n / 16);
  return d;
}
