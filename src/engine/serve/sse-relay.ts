/**
 * Relays an upstream SSE byte stream to the client event by event. Events are framed on the blank
 * line (`\n\n` or `\r\n\r\n`) and forwarded as the same bytes unless they need a change: JSON is
 * parsed only for events that mention reasoning (field renaming), usage (token counts, and dropping
 * the usage chunk the gateway itself asked for) or an error. Everything else is a byte slice, which
 * keeps the proxy's added latency in the microseconds.
 */
import { beginChunk, chunkOf, chunkSize, endChunk, Ranges } from "./h1-chunked.js";
import type { ReasoningField } from "./reasoning.js";
import { ReasoningTemplate, UNCHANGED } from "./reasoning-template.js";
import type { RelayedUsage } from "./relay-native.js";

export interface RelayStats {
  /** Token-bearing events seen (chunks with choices). */
  events: number;
  firstEventAt?: number;
  lastEventAt?: number;
  promptTokens?: number;
  completionTokens?: number;
  finishReason?: string | null;
  error?: string;
}

export interface RelayOptions {
  fields: readonly ReasoningField[];
  /** Drop the usage-only chunk (the gateway added `include_usage`, the client did not ask for it). */
  dropUsageChunk: boolean;
  /** Told the time of each token event. An object with a method, so the proxy's per-try object can be the listener itself. */
  listener?: TokenListener;
}

export interface TokenListener {
  tokenAt(now: number): void;
}

/**
 * The keys that make an event worth a look, found in one regex pass over a read: usage, error and
 * reasoning send the event to event(); a string finish_reason is recorded where it stands. The
 * regex looks for the keys' tails and keyAt() checks the bytes before them: irregexp finds these
 * tails 2.5× faster than the whole keys, whose opening quote recurs every few bytes of JSON.
 */
const KEY_TAILS = 'sage"|rror"|easoning|reason":"';
const SPECIAL = new RegExp(`(?:${KEY_TAILS})`, "g");
/** SPECIAL, or a CRLF blank line, for the whole-events pass. */
const SPECIAL_OR_CRLF = new RegExp(`(?:${KEY_TAILS}|\r\n\r\n)`, "g");

/**
 * Where the event starting at `start` ends (its blank line), in text where one does. An event is
 * usually one `data:` line, so the first LF is its end: a one-character search is a memchr, while a
 * search for `\n\n` was a third of the relay's time per event.
 */
function eventEnd(s: string, start: number): number {
  const lf = s.indexOf("\n", start);
  return s.charCodeAt(lf + 1) === 0x0a ? lf : s.indexOf("\n\n", lf);
}
/** Scratch for that pass: match index, kind, match end, per key found (the relay runs to completion, never nested). */
const KEYS: number[] = [];
const NONE = 0;
const FINISH = 1; // `"finish_reason":"`: a string value starts at the match's end
const OTHER = 2; // `"usage"`, `"error"`, `"reasoning`

/** What the SPECIAL match `m` in `s` is part of. */
function keyAt(s: string, m: RegExpExecArray): number {
  const i = m.index;
  const quoted = (c: number) => s.charCodeAt(i - 1) === c && s.charCodeAt(i - 2) === 0x22;
  const c0 = s.charCodeAt(i);
  // `"usage":null` is no usage (OpenAI's API and SGLang send it in every chunk): not worth a look
  if (c0 === 0x73 /* sage" */) return quoted(0x75 /* u */) && !s.startsWith(":null", i + 5) ? OTHER : NONE;
  if (c0 === 0x65 /* easoning */) return quoted(0x72 /* r */) ? OTHER : NONE;
  if (s.charCodeAt(i + 1) === 0x72 /* rror" */) return quoted(0x65 /* e */) ? OTHER : NONE;
  return s.startsWith('"finish_', i - 8) ? FINISH : NONE;
}

const PROMPT_TOKENS = /"prompt_tokens":\s*(\d+)/;
const COMPLETION_TOKENS = /"completion_tokens":\s*(\d+)/;
const count = (text: string, re: RegExp) => {
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
};
const EMPTY = Buffer.alloc(0);

/** `data: [DONE]` at `i` (its `[` is tested first: a JSON event has `{` there). */
const isDone = (s: string, i: number) => s.charCodeAt(i + 6) === 0x5b && s.startsWith("data: [DONE]", i);

const isRoleOnly = (ev: string) => ev.includes('"role"') && ev.includes('"content":""');

/** True when every range ends with exactly one blank line (`\n\n` after a byte that is not `\n`): each holds whole events. */
function endsEvents(buf: Buffer, ranges: Ranges): boolean {
  const { v, n } = ranges;
  for (let i = 0; i < n; i += 2) {
    const e = v[i + 1];
    if (e - v[i] < 2 || buf[e - 1] !== 0x0a || buf[e - 2] !== 0x0a || (e - v[i] > 2 && buf[e - 3] === 0x0a)) return false;
  }
  return true;
}

/** Per configured names: the encoding of no template and those names (encodedTemplates()). */
const NAMES_ONLY = new WeakMap<readonly ReasoningField[], Buffer>();

export class SseRelay {
  // every field present from the start: one object shape for the whole stream, so the relay's
  // property reads stay monomorphic instead of meeting a new shape as the fields get filled in
  readonly stats: RelayStats = { events: 0, firstEventAt: undefined, lastEventAt: undefined, promptTokens: undefined, completionTokens: undefined, finishReason: undefined, error: undefined };
  /** True when the last push() returned exactly the bytes it was given: nothing held back, nothing changed. */
  passedThrough = false;
  /**
   * True when the last push() took whole events and needed nothing but forwarding and the stream's
   * reasoning templates (no JSON, nothing held): what the native relay can do with the next reads.
   */
  simple = false;
  /** event() ran during this push() (the JSON path). */
  private viaJson = false;
  private pending: Buffer | undefined;
  private result: Buffer[] | undefined;
  /** After wholeEvents(): the read and its ranges, copied out only if `out` is asked for. */
  private read: Buffer | undefined;
  private readRanges: Ranges | undefined;
  /**
   * When wholeEvents() dropped or replaced events: what to forward instead of the whole read, as
   * pairs [a, b) of read offsets (the chunk data inside them) or [-1, i] for `inserts[i]`. Offsets, not
   * a slice object per chunk: the last read of a busy stream holds dozens of chunks.
   */
  private readonly cuts: number[] = [];
  private nCuts = 0;
  private readonly inserts: Buffer[] = [];
  /** push()'s `chunked`: `out` is one HTTP/1.1 chunk. */
  private chunked = false;
  /** The read's one replacement (inserts[0]) was made as a chunk already. */
  private insertChunked = false;
  /**
   * This stream's reasoning events as byte templates (reasoning-template.ts), each learnt from the
   * first event of its kind that event() rewrote: reasoning text, and content beside a null
   * reasoning key (DeepSeek's API shape).
   */
  private textTemplate: ReasoningTemplate | undefined;
  private partnerTemplate: ReasoningTemplate | undefined;
  /** Events event() looked at for a template (a stream whose events do not fit stops trying). */
  private learnTries = 0;
  /**
   * The template reads are tried against before any scan: the last one an event fitted, until an
   * event does not fit it (an R1 stream reasons, then answers, and does not go back).
   */
  private first: ReasoningTemplate | undefined;

  constructor(private readonly o: RelayOptions) {}

  /**
   * Takes one read: `buf` and where its body bytes lie in it (`ranges`, as the chunked decoder gives
   * them; the whole buffer by default). Returns true when there are bytes to forward now (complete
   * events): `out` gives them, as one HTTP/1.1 chunk when `chunked` (framed as they are assembled,
   * instead of copied once more by the server).
   *
   * Events end at a blank line (`\n\n` or `\r\n\r\n`). One regex pass marks the events that need a
   * look inside (usage, error, reasoning to rename); only those go to event(). Every other event is
   * forwarded as the same bytes and counted in bulk, with the read timed once.
   */
  push(buf: Buffer, ranges: Ranges = Ranges.of(0, buf.length), chunked = false): boolean {
    this.chunked = chunked;
    this.insertChunked = false;
    this.passedThrough = this.simple = this.viaJson = false;
    this.result = this.read = this.readRanges = undefined;
    this.nCuts = 0;
    if (this.inserts.length > 0) this.inserts.length = 0;
    if (ranges.n === 0) return false;
    if (this.pending === undefined && endsEvents(buf, ranges)) {
      if (this.first !== undefined && this.allTemplated(buf, ranges)) return (this.simple = true);
      const r = this.wholeEvents(buf, ranges);
      this.simple = !this.viaJson;
      return r;
    }
    return this.general(ranges.n === 2 && ranges.v[0] === 0 && ranges.v[1] === buf.length ? [buf] : ranges.slices(buf));
  }

  /**
   * The common read, done without a slice or a string per chunk: nothing is held from the last read
   * and every range (a chunk's data) ends an event. The read, framing included, becomes one latin1
   * string; events are looked for inside their own range, so the framing between ranges never joins
   * two of them, and a key found in the framing (a chunk extension) is skipped.
   */
  private wholeEvents(buf: Buffer, ranges: Ranges): boolean {
    const { v, n } = ranges;
    const from = v[0];
    const s = buf.toString("latin1", from, v[n - 1]);
    const renaming = this.o.fields.length > 0;
    // one regex pass first, with no side effects: the keys that matter (rare), or a CRLF blank line,
    // which sends the read to the general path (CRLF events, or a range that starts with one)
    let nk = 0;
    SPECIAL_OR_CRLF.lastIndex = 0;
    for (let m = SPECIAL_OR_CRLF.exec(s); m !== null; m = SPECIAL_OR_CRLF.exec(s)) {
      if (m[0].charCodeAt(0) === 0x0d) return this.general(ranges.slices(buf));
      const k = keyAt(s, m);
      if (k === NONE || (k === OTHER && !renaming && s.charCodeAt(m.index) === 0x65 /* reasoning */)) continue;
      KEYS[nk++] = m.index;
      KEYS[nk++] = k;
      KEYS[nk++] = m.index + m[0].length;
    }
    let first = this.stats.events === 0;
    let tokens = 0;
    let cut = false; // an event was replaced or dropped
    let bytes = 0; // what is left to forward when cut
    let run = from; // where the current run of unchanged bytes starts in buf
    let ki = 0;
    for (let i = 0; i < n; i += 2) {
      const stop = v[i + 1] - from;
      for (let start = v[i] - from; start < stop; ) {
        const end = eventEnd(s, start); // at most stop - 2: endsEvents() checked the range's end
        let special = false;
        let finishAt = -1;
        for (; ki < nk && KEYS[ki] < end; ki += 3) {
          if (KEYS[ki] < start) continue; // in the framing before this event (a chunk extension)
          if (KEYS[ki + 1] === FINISH) finishAt = KEYS[ki + 2];
          else special = true;
        }
        if (special) {
          // the read's only event: its replacement can be made as the chunk `out` will give
          const replacement = this.special(buf, from + start, from + end, n === 2 && start === 0 && end + 2 === stop);
          if (replacement !== undefined) {
            cut = true;
            bytes += this.cutRun(ranges, run, from + start);
            if (replacement.length > 0) bytes += this.insert(replacement);
            run = from + end + 2;
          }
        } else if (end > start && s.charCodeAt(start) !== 0x3a && !isDone(s, start)) {
          if (!(first && isRoleOnly(s.slice(start, end)))) tokens++;
          if (finishAt > 0) this.stats.finishReason = s.slice(finishAt, s.indexOf('"', finishAt));
        }
        first = false;
        start = end + 2;
      }
    }
    this.countTokens(tokens);
    this.read = buf;
    this.readRanges = ranges;
    if (!cut) return (this.passedThrough = true);
    bytes += this.cutRun(ranges, run, v[n - 1]);
    return bytes > 0;
  }

  /**
   * A read whose every range is one event of the `first` template: rewritten (or passed on as it is
   * when the key is already the one configured name) without the latin1 string and the key scan.
   * False, with nothing kept, at the first range that does not fit; reads are not tried this way
   * again until an event fits a template.
   */
  private allTemplated(buf: Buffer, ranges: Ranges): boolean {
    const t = this.first!;
    const { v, n } = ranges;
    const whole = n === 2 && this.chunked;
    for (let i = 0; i < n; i += 2) {
      const r = t.rewrite(buf, v[i], v[i + 1] - 2, whole);
      if (r === undefined) {
        this.first = undefined;
        this.nCuts = 0;
        this.inserts.length = 0;
        return false;
      }
      if (r !== UNCHANGED) this.insert(r);
    }
    this.countTokens(n >> 1);
    this.read = buf;
    this.readRanges = ranges;
    this.insertChunked = whole;
    if (this.nCuts === 0) this.passedThrough = true; // every event UNCHANGED
    return true;
  }

  /** Keeps the chunk data of the read in [a, b); returns its size. */
  private cutRun(ranges: Ranges, a: number, b: number): number {
    const size = ranges.bytesIn(a, b);
    if (size > 0) {
      this.cuts[this.nCuts++] = a;
      this.cuts[this.nCuts++] = b;
    }
    return size;
  }

  private insert(b: Buffer): number {
    this.cuts[this.nCuts++] = -1;
    this.cuts[this.nCuts++] = this.inserts.push(b) - 1;
    return b.length;
  }

  /** Any read: parts joined as bytes only when a slice of them is needed; events may span reads. */
  private general(parts: Buffer[]): boolean {
    const input = this.pending ? [this.pending, ...parts] : parts;
    const held = this.pending !== undefined;
    this.pending = undefined;
    let joined: Buffer | undefined;
    const all = () => (joined ??= input.length === 1 ? input[0] : Buffer.concat(input));
    // one copy; its offsets are byte offsets
    const s = input.length === 1 ? input[0].toString("latin1") : input.map((b) => b.toString("latin1")).join("");
    const n = s.length;
    const crlf = s.indexOf("\r") >= 0;
    let first = this.stats.events === 0; // until the stream's first event was looked at
    const renaming = this.o.fields.length > 0;
    let out: Buffer[] | undefined; // only when an event was replaced or dropped
    let run = 0; // start of the current run of unchanged bytes
    let start = 0; // start of the current event
    let tokens = 0;
    SPECIAL.lastIndex = 0;
    let m = SPECIAL.exec(s);
    for (;;) {
      let end = s.indexOf("\n\n", start);
      let sep = 2;
      if (crlf) {
        const e4 = s.indexOf("\r\n\r\n", start);
        if (e4 >= 0 && (end < 0 || e4 < end)) [end, sep] = [e4, 4];
      }
      if (end < 0) break;
      let special = false;
      let finishAt = -1;
      for (; m !== null && m.index < end; m = SPECIAL.exec(s)) {
        const k = keyAt(s, m);
        if (k === FINISH) finishAt = m.index + m[0].length;
        else if (k === OTHER && (renaming || s.charCodeAt(m.index) !== 0x65 /* reasoning */)) special = true;
      }
      if (special) {
        const replacement = this.special(all(), start, end, false);
        if (replacement !== undefined) {
          out ??= [];
          if (start > run) out.push(all().subarray(run, start));
          if (replacement.length > 0) out.push(replacement);
          run = end + sep;
        }
      } else if (end > start && s.charCodeAt(start) !== 0x3a && !isDone(s, start)) {
        // `:` comments (keep-alives) and [DONE] carry no token, nor does vLLM's role-only first
        // chunk: counting it would under-report TTFT (facts §1.3)
        if (!(first && isRoleOnly(s.slice(start, end)))) tokens++;
        if (finishAt > 0) this.stats.finishReason = s.slice(finishAt, s.indexOf('"', finishAt));
      }
      start = end + sep;
      first = false;
    }
    this.countTokens(tokens);
    if (start < n) this.pending = Buffer.from(all().subarray(start)); // copy: chunk buffers get reused
    if (!out) {
      this.passedThrough = !held && start === n;
      if (start > 0) this.result = start === n ? input : [all().subarray(0, start)];
    } else {
      if (start > run) out.push(all().subarray(run, start));
      if (out.length > 0) this.result = out;
    }
    return this.result !== undefined;
  }

  /** The bytes to forward after a push() that returned true (joined on demand; one chunk when push() was asked for `chunked`). */
  get out(): Buffer {
    const framed = this.chunked;
    if (this.result) return framed ? chunkOf(this.result) : this.result.length === 1 ? this.result[0] : Buffer.concat(this.result);
    const buf = this.read!;
    const ranges = this.readRanges!;
    const { cuts, nCuts, inserts } = this;
    if (nCuts === 2 && cuts[0] < 0) {
      // one event, replaced (a reasoning token)
      const x = inserts[cuts[1]];
      return framed && !this.insertChunked ? chunkOf(x) : x;
    }
    if (nCuts === 0 && !framed) return ranges.n === 2 ? buf.subarray(ranges.v[0], ranges.v[1]) : ranges.gather(buf);
    // one allocation for the kept runs and the replacements, in order (or the read's body, framed)
    let size = 0;
    if (nCuts === 0) size = ranges.bytesIn(0, buf.length);
    for (let i = 0; i < nCuts; i += 2) size += cuts[i] < 0 ? inserts[cuts[i + 1]].length : ranges.bytesIn(cuts[i], cuts[i + 1]);
    const out = Buffer.allocUnsafe(framed ? chunkSize(size) : size);
    let at = framed ? beginChunk(out, 0, size) : 0;
    if (nCuts === 0) at = ranges.copyIn(buf, 0, buf.length, out, at);
    for (let i = 0; i < nCuts; i += 2) at = cuts[i] < 0 ? at + inserts[cuts[i + 1]].copy(out, at) : ranges.copyIn(buf, cuts[i], cuts[i + 1], out, at);
    if (framed) endChunk(out, at);
    return out;
  }

  /** Bytes left over when the upstream ended mid-event (forwarded as they are). */
  flush(): Buffer | undefined {
    const p = this.pending;
    this.pending = undefined;
    return p;
  }

  /** An event [a, b) of `buf` that mentions usage, error or reasoning: rewritten by one of the stream's reasoning templates when it fits, else by event(). */
  private special(buf: Buffer, a: number, b: number, whole: boolean): Buffer | undefined {
    const chunked = whole && this.chunked;
    let t = this.textTemplate;
    let r = t?.rewrite(buf, a, b, chunked);
    if (r === undefined && this.partnerTemplate !== undefined) r = (t = this.partnerTemplate).rewrite(buf, a, b, chunked);
    if (r === undefined) return this.event(buf.subarray(a, b));
    this.first = t;
    this.countToken(performance.now());
    if (r === UNCHANGED) return undefined;
    this.insertChunked = chunked;
    return r;
  }

  /** Inspects one event that mentions usage, error or reasoning; returns replacement bytes (with separator; empty = drop) or undefined = forward as is. */
  private event(ev: Buffer): Buffer | undefined {
    this.viaJson = true;
    const text = ev.toString("utf8");
    if (text.startsWith(":") || text.startsWith("data: [DONE]")) return undefined;
    const now = performance.now();
    const hasUsage = text.includes('"usage"');
    const hasReasoning = this.o.fields.length > 0 && text.includes('"reasoning');
    const hasError = text.includes('"error"');
    if (hasUsage && !hasError && !hasReasoning && text.includes('"choices":[]')) {
      // the usage-only chunk (once per stream): its two counts are read without parsing it, as the
      // native relay reads them, and it is dropped when the gateway asked for it rather than the
      // client. (Inside a JSON string a quote is escaped, so these patterns only match keys.)
      this.stats.promptTokens = count(text, PROMPT_TOKENS);
      this.stats.completionTokens = count(text, COMPLETION_TOKENS);
      return this.o.dropUsageChunk ? EMPTY : undefined;
    }
    const dataAt = text.indexOf("data:");
    if (dataAt < 0) return undefined;
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(text.slice(dataAt + 5));
    } catch {
      return undefined;
    }
    if (hasError && obj.error) {
      const e = obj.error as { message?: unknown } | string;
      this.stats.error = typeof e === "string" ? e : String(e.message ?? "upstream error");
      return undefined;
    }
    const choices = Array.isArray(obj.choices) ? (obj.choices as Record<string, unknown>[]) : [];
    // `"usage":null` (OpenAI's API and SGLang send it in every chunk) is no usage: it stays
    const withUsage = hasUsage && obj.usage !== undefined && obj.usage !== null;
    if (withUsage) {
      const u = obj.usage as { prompt_tokens?: number; completion_tokens?: number };
      this.stats.promptTokens = u.prompt_tokens;
      this.stats.completionTokens = u.completion_tokens;
    }
    if (choices.length === 0) {
      return withUsage && this.o.dropUsageChunk ? EMPTY : undefined;
    }
    // the stream's opening chunk (a role, and empty or null text, as DeepSeek's API sends it with
    // `"reasoning_content":""`) carries no token: counting it would under-report TTFT (facts §1.3)
    const opening = this.stats.events === 0 && choices.length === 1 && isRoleOnlyChoice(choices[0]);
    if (!opening) this.countToken(now);
    for (const c of choices) if (typeof c.finish_reason === "string") this.stats.finishReason = c.finish_reason;
    if (!hasReasoning && !(withUsage && this.o.dropUsageChunk)) return undefined;
    if (withUsage && this.o.dropUsageChunk) delete obj.usage; // continuous usage the client did not ask for
    else if (!withUsage && !hasError && choices.length === 1) {
      const c = choices[0];
      const key = soleReasoningKey(c, "text");
      const nullKey = key === undefined ? soleReasoningKey(c, "null") : undefined;
      // a reasoning token (or an answer token beside a null reasoning key) and nothing else: its
      // siblings in this stream can skip the JSON round trip. Not the opening chunk: DeepSeek's
      // (`"role":"assistant","content":null,"reasoning_content":""`) has a text key too, and a
      // template learnt from it, role and all, would fit none of the tokens after it
      if (c.finish_reason == null && !opening && this.learnTries < MAX_LEARN_TRIES) {
        if (key !== undefined && this.textTemplate === undefined) {
          this.learnTries++;
          this.first = this.textTemplate = ReasoningTemplate.learnText(ev, key, this.o.fields);
        } else if (nullKey !== undefined && this.partnerTemplate === undefined) {
          this.learnTries++;
          this.first = this.partnerTemplate = ReasoningTemplate.learnNullPartner(ev, nullKey, this.o.fields);
        }
      }
      // the upstream already uses the one configured name: its bytes go as they came
      const named = key ?? nullKey;
      if (named !== undefined && this.o.fields.length === 1 && this.o.fields[0] === named) return undefined;
    }
    normaliseReasoning(choices, this.o.fields);
    return Buffer.from(`data: ${JSON.stringify(obj)}\n\n`);
  }

  /**
   * For the native relay: the stream's reasoning templates (in the order special() tries them) and
   * the configured names, with which it learns a template itself when none fits; null when reasoning
   * is not renamed.
   */
  encodedTemplates(): Buffer | null {
    const { fields } = this.o;
    if (fields.length === 0) return null;
    const ts = [this.textTemplate, this.partnerTemplate].filter((t): t is ReasoningTemplate => t !== undefined);
    // most hand-offs carry no template yet: that encoding is the same for every stream (a Buffer.concat
    // per hand-off was 2% of the gateway's user time)
    if (ts.length > 0) return ReasoningTemplate.encodeAll(ts, fields);
    let none = NAMES_ONLY.get(fields);
    if (none === undefined) NAMES_ONLY.set(fields, (none = ReasoningTemplate.encodeAll([], fields)));
    return none;
  }

  /**
   * Reads the native relay forwarded (relay-native.c's marks: time, token events, per read), counted
   * as countTokens() counts a read, with the last finish reason and the usage counts it relayed;
   * returns their token events.
   */
  addRelayed(marks: Float64Array, finish: string | null = null, usage: RelayedUsage = null): number {
    let tokens = 0;
    for (let i = 0; i + 1 < marks.length; i += 2) {
      tokens += marks[i + 1];
      this.stats.events += marks[i + 1] - 1;
      this.countToken(marks[i]);
    }
    if (finish !== null) this.stats.finishReason = finish;
    if (usage !== null) [this.stats.promptTokens, this.stats.completionTokens] = usage;
    return tokens;
  }

  /** Counts a read's plain token events, timed once (the last one gets the read's time). */
  private countTokens(tokens: number): void {
    if (tokens === 0) return;
    this.stats.events += tokens - 1;
    this.countToken(performance.now());
  }

  private countToken(now: number): void {
    this.stats.events++;
    this.stats.firstEventAt ??= now;
    this.stats.lastEventAt = now;
    this.o.listener?.tokenAt(now);
  }
}

/** Events event() may learn a template from before the stream stops trying. */
const MAX_LEARN_TRIES = 8;

/**
 * The one reasoning key a choice's delta or message carries, if it carries exactly one: as a string
 * (`text`), or as null beside a string content (`null`, DeepSeek's API shape).
 */
function soleReasoningKey(c: Record<string, unknown>, kind: "text" | "null"): ReasoningField | undefined {
  const t = (c.message ?? c.delta) as Record<string, unknown> | undefined;
  if (!t || typeof t !== "object" || (kind === "null" && typeof t.content !== "string")) return undefined;
  const fits = (v: unknown) => (kind === "text" ? typeof v === "string" : v === null);
  if (fits(t.reasoning) && !Object.hasOwn(t, "reasoning_content")) return "reasoning";
  if (fits(t.reasoning_content) && !Object.hasOwn(t, "reasoning")) return "reasoning_content";
  return undefined;
}

/** A delta with a role and no text (content and reasoning empty or null, no tool calls). */
function isRoleOnlyChoice(c: Record<string, unknown>): boolean {
  const d = c.delta as Record<string, unknown> | undefined;
  if (!d || typeof d !== "object" || d.role === undefined || d.tool_calls) return false;
  return !d.content && !d.reasoning && !d.reasoning_content;
}

/** Renames `reasoning` / `reasoning_content` on each choice's message or delta to the configured fields. */
export function normaliseReasoning(choices: Record<string, unknown>[], fields: readonly ReasoningField[]): void {
  if (fields.length === 0) return;
  for (const c of choices) {
    const t = (c.message ?? c.delta) as Record<string, unknown> | undefined;
    if (!t || typeof t !== "object") continue;
    const r = t.reasoning !== undefined ? t.reasoning : t.reasoning_content;
    if (r === undefined) continue;
    delete t.reasoning;
    delete t.reasoning_content;
    for (const f of fields) t[f] = r;
  }
}
