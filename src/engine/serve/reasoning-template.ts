/**
 * The byte-level rewrite of a stream's reasoning events. An R1 stream is mostly reasoning: vLLM
 * sends each of those tokens as `…"delta":{"reasoning":"tok"}…` (older releases and SGLang:
 * `reasoning_content`), and the gateway must put the text under the configured names. Parsing and
 * re-serialising every such event cost about 5 µs of CPU each, five times a plain event's relay.
 *
 * Within one stream these events differ only in the string: id, created, model, index, the other
 * delta keys and finish_reason null repeat byte for byte. So the first one that the JSON path
 * rewrote is learnt as a template (the bytes before the key, the key, the bytes after the string),
 * and a later event that is the template with another string body in it is rewritten by copying
 * bytes. A string body cannot hold a key (its quotes are escaped), so such an event has the learnt
 * event's structure, and the JSON path would make the same change to it.
 */
import type { ReasoningField } from "./reasoning.js";

/** rewrite()'s answer for an event of the template whose key is already the only configured name: forward it as it is. */
export const UNCHANGED = Buffer.alloc(0);
const BLANK_LINE = Buffer.from("\n\n");

export class ReasoningTemplate {
  private constructor(
    /** The event up to the key's opening quote. */
    private readonly prefix: Buffer,
    /** `"reasoning":"` or `"reasoning_content":"`. */
    private readonly key: Buffer,
    /** From the string's closing quote to the event's end. */
    private readonly suffix: Buffer,
    /** What replaces the key: `"f1":"` for the first configured name, `","f2":"` for each next one, each followed by the string body. */
    private readonly heads: Buffer[],
    /** The configured names are exactly the event's own key: nothing to rewrite. */
    private readonly same: boolean,
  ) {}

  /**
   * A template from one event's bytes (`data: …`, without its blank line) that the JSON path found to
   * be a single choice whose delta or message carries `key` as a string and nothing else to change
   * (no usage, no error, no finish reason). Undefined when the bytes do not have that key exactly
   * once, as `"key":"` with no space, closed on the same event.
   */
  static learn(ev: Buffer, key: ReasoningField, fields: readonly ReasoningField[]): ReasoningTemplate | undefined {
    const k = ev.indexOf(`"${key}":"`, 0, "latin1");
    // the key must be the event's only mention of a reasoning name (an escaped quote inside a string can spell one)
    if (k < 0 || ev.indexOf('"reasoning', 0, "latin1") !== k || ev.indexOf('"reasoning', k + 1, "latin1") >= 0) return undefined;
    const at = k + key.length + 4;
    const close = stringEnd(ev, at, ev.length);
    if (close < 0) return undefined;
    const heads = fields.map((f, i) => Buffer.from(i === 0 ? `"${f}":"` : `","${f}":"`, "latin1"));
    return new ReasoningTemplate(Buffer.from(ev.subarray(0, k)), Buffer.from(ev.subarray(k, at)), Buffer.from(ev.subarray(close)), heads, fields.length === 1 && fields[0] === key);
  }

  /**
   * The event buf[a, b) (without its blank line) rewritten, with a blank line after it; UNCHANGED when
   * it matches and needs no change; undefined when it is not this template's event.
   */
  rewrite(buf: Buffer, a: number, b: number): Buffer | undefined {
    const { prefix: p, key: k, suffix: x } = this;
    const from = a + p.length + k.length; // the string body
    const to = b - x.length;
    if (to < from) return undefined;
    if (buf.compare(p, 0, p.length, a, a + p.length) !== 0 || buf.compare(k, 0, k.length, a + p.length, from) !== 0) return undefined;
    if (buf.compare(x, 0, x.length, to, b) !== 0 || !isStringBody(buf, from, to)) return undefined;
    if (this.same) return UNCHANGED;
    const n = to - from;
    let size = p.length + x.length + 2;
    for (const h of this.heads) size += h.length + n;
    const out = Buffer.allocUnsafe(size);
    let at = p.copy(out, 0);
    for (const h of this.heads) {
      at += h.copy(out, at);
      at += buf.copy(out, at, from, to);
    }
    at += x.copy(out, at);
    BLANK_LINE.copy(out, at);
    return out;
  }
}

/** True when buf[a, b) is the body of a JSON string: no unescaped quote, no control byte, only JSON's escapes (RFC 8259 §7). */
export function isStringBody(buf: Buffer, a: number, b: number): boolean {
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
