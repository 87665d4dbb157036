/**
 * The byte-level rewrite of a stream's reasoning events. An R1 stream is mostly reasoning: vLLM
 * sends each of those tokens as `…"delta":{"reasoning":"tok"}…` (older releases and SGLang:
 * `reasoning_content`), and the gateway must put the text under the configured names. Parsing and
 * re-serialising every such event cost about 5 µs of CPU each, five times a plain event's relay.
 * Servers that speak DeepSeek's API shape also name the absent part in every event
 * (`"content":null,"reasoning_content":"tok"` while thinking, then `"content":"tok","reasoning_content":null`),
 * so their answer's events need the rename too.
 *
 * Within one stream these events differ only in one string: id, created, model, index, the other
 * delta keys and finish_reason null repeat byte for byte. So the first one that the JSON path
 * rewrote is learnt as a template (the bytes before the string's body and the bytes after it, and
 * what they become), and a later event that is the template with another string body in it is
 * rewritten by copying bytes. A string body cannot hold a key (its quotes are escaped), so such an
 * event has the learnt event's structure, and the JSON path would make the same change to it.
 */
import { beginChunk, chunkSize, endChunk } from "./h1-chunked.js";
import type { ReasoningField } from "./reasoning.js";

/** rewrite()'s answer for an event of the template whose key is already the only configured name: forward it as it is. */
export const UNCHANGED = Buffer.alloc(0);
const BLANK_LINE = Buffer.from("\n\n");

export class ReasoningTemplate {
  private constructor(
    /** The event up to its string's body (the body of the reasoning text, or of the content beside a null reasoning key). */
    private readonly head: Buffer,
    /** From the string's closing quote to the event's end. */
    private readonly tail: Buffer,
    /**
     * The rewritten event around the copies of the string body, the last piece ending with the blank
     * line after the event. Undefined when the configured names are exactly the event's key.
     */
    private readonly pieces: Buffer[] | undefined,
  ) {}

  /**
   * From one event's bytes (`data: …`, without its blank line) that the JSON path found to be a single
   * choice whose delta or message carries `key` as a string and nothing else to change (no usage, no
   * error, no finish reason). Undefined when the bytes do not have that key exactly once, as
   * `"key":"` with no space, closed on the same event.
   */
  static learnText(ev: Buffer, key: ReasoningField, fields: readonly ReasoningField[]): ReasoningTemplate | undefined {
    const k = onlyMention(ev, `"${key}":"`);
    if (k < 0) return undefined;
    const at = k + key.length + 4;
    const close = stringEnd(ev, at, ev.length);
    if (close < 0) return undefined;
    // `…"f1":"` body `","f2":"` body … `"…` (the tail, from the closing quote)
    const pieces = sameNames(key, fields)
      ? undefined
      : [
          Buffer.concat([ev.subarray(0, k), Buffer.from(`"${fields[0]}":"`, "latin1")]),
          ...fields.slice(1).map((f) => Buffer.from(`","${f}":"`, "latin1")),
          Buffer.concat([ev.subarray(close), BLANK_LINE]),
        ];
    return new ReasoningTemplate(Buffer.from(ev.subarray(0, at)), Buffer.from(ev.subarray(close)), pieces);
  }

  /**
   * From an event of the same kind whose delta or message carries `key` as null and its content as a
   * string (DeepSeek's API shape, SGLang): the content is what varies, and `"key":null` becomes the
   * configured names, each null. Undefined unless `"key":null` and `"content":"` occur exactly once.
   */
  static learnNullPartner(ev: Buffer, key: ReasoningField, fields: readonly ReasoningField[]): ReasoningTemplate | undefined {
    const nullKey = `"${key}":null`;
    const k = onlyMention(ev, nullKey);
    const c = ev.indexOf('"content":"', 0, "latin1");
    if (k < 0 || c < 0 || ev.indexOf('"content":"', c + 1, "latin1") >= 0) return undefined;
    const at = c + 11;
    const close = stringEnd(ev, at, ev.length);
    if (close < 0) return undefined;
    const head = ev.subarray(0, at);
    const tail = ev.subarray(close);
    // copies, never views of `ev`: the read buffer it lies in is reused for the connection's next read
    const renamed = (part: Buffer, offset: number) =>
      k < offset || k >= offset + part.length
        ? Buffer.from(part)
        : Buffer.concat([part.subarray(0, k - offset), Buffer.from(fields.map((f) => `"${f}":null`).join(","), "latin1"), part.subarray(k - offset + nullKey.length)]);
    const pieces = sameNames(key, fields) ? undefined : [renamed(head, 0), Buffer.concat([renamed(tail, close), BLANK_LINE])];
    return new ReasoningTemplate(Buffer.from(head), Buffer.from(tail), pieces);
  }

  /**
   * Templates as the native relay reads them (relay-native.c, decode_templates): a count, then per
   * template its head, its tail and its pieces (their count, 0xFFFFFFFF for none), each as a
   * little-endian u32 length and the bytes; then the configured reasoning names when given (a count,
   * then each as a length and its bytes), with which the native relay learns templates itself from
   * a stream's events (relay-native.c learn(), the byte-level twin of learnText and learnNullPartner).
   */
  static encodeAll(templates: readonly ReasoningTemplate[], learnWith?: readonly ReasoningField[]): Buffer {
    const parts: Buffer[] = [u32(templates.length)];
    const field = (b: Buffer) => parts.push(u32(b.length), b);
    for (const t of templates) {
      field(t.head);
      field(t.tail);
      parts.push(u32(t.pieces === undefined ? 0xffffffff : t.pieces.length));
      for (const p of t.pieces ?? []) field(p);
    }
    if (learnWith !== undefined) {
      parts.push(u32(learnWith.length));
      for (const f of learnWith) field(Buffer.from(f, "latin1"));
    }
    return Buffer.concat(parts);
  }

  /**
   * The event buf[a, b) (without its blank line) rewritten, with a blank line after it (and framed as
   * one HTTP/1.1 chunk when `chunked`); UNCHANGED when it matches and needs no change; undefined when
   * it is not this template's event.
   */
  rewrite(buf: Buffer, a: number, b: number, chunked: boolean): Buffer | undefined {
    const { head: h, tail: t } = this;
    const from = a + h.length; // the string body
    const to = b - t.length;
    if (to < from || buf.compare(h, 0, h.length, a, from) !== 0 || buf.compare(t, 0, t.length, to, b) !== 0 || !isStringBody(buf, from, to)) return undefined;
    const pieces = this.pieces;
    if (pieces === undefined) return UNCHANGED;
    // pieces and copies of the body, alternating; Uint8Array#set, not Buffer#copy: no argument checks per piece
    const body = buf.subarray(from, to);
    let size = body.length * (pieces.length - 1);
    for (const p of pieces) size += p.length;
    const out = Buffer.allocUnsafe(chunked ? chunkSize(size) : size);
    let at = chunked ? beginChunk(out, 0, size) : 0;
    for (let i = 0; i < pieces.length; i++) {
      if (i > 0) {
        out.set(body, at);
        at += body.length;
      }
      out.set(pieces[i], at);
      at += pieces[i].length;
    }
    if (chunked) endChunk(out, at);
    return out;
  }
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32LE(n);
  return b;
}

/** Where `needle` is in `ev`, when it is the event's only mention of a reasoning name (an escaped quote inside a string can spell one); else -1. */
function onlyMention(ev: Buffer, needle: string): number {
  const k = ev.indexOf(needle, 0, "latin1");
  if (k < 0 || ev.indexOf('"reasoning', 0, "latin1") !== k || ev.indexOf('"reasoning', k + 1, "latin1") >= 0) return -1;
  return k;
}

const sameNames = (key: ReasoningField, fields: readonly ReasoningField[]) => fields.length === 1 && fields[0] === key;

/** True when buf[a, b) is the body of a JSON string: no unescaped quote, no control byte, only JSON's escapes (RFC 8259 §7). */
function isStringBody(buf: Buffer, a: number, b: number): boolean {
  for (let j = a; j < b; j++) {
    const c = buf[j];
    if (c === 0x5c /* \ */) {
      const e = buf[++j];
      if (j >= b) return false;
      if (e === 0x75 /* u */) {
        if (j + 4 >= b) return false;
        for (let h = 1; h <= 4; h++) if (!isHex(buf[j + h])) return false;
        j += 4;
      } else if (!SIMPLE_ESCAPE[e]) return false;
    } else if (c === 0x22 || c < 0x20) return false;
  }
  return true;
}

/** The characters that may follow a backslash in a JSON string besides `u`: " \ / b f n r t. */
const SIMPLE_ESCAPE: boolean[] = [];
for (const ch of '"\\/bfnrt') SIMPLE_ESCAPE[ch.charCodeAt(0)] = true;
const isHex = (c: number) => (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66);

/** Where the JSON string whose body starts at `at` closes (its quote's offset), before `end`; -1 if it does not. */
function stringEnd(buf: Buffer, at: number, end: number): number {
  for (let j = at; j < end; j++) {
    const c = buf[j];
    if (c === 0x5c) j++;
    else if (c === 0x22) return j;
    else if (c < 0x20) return -1;
  }
  return -1;
}
