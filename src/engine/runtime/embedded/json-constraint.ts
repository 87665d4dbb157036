/**
 * Constrained decoding for `response_format: {"type": "json_object"}`: the output (after the
 * reasoning block, when the request says so) is one JSON object, then the sequence ends.
 *
 * The recogniser is a small hand-written pushdown automaton over UTF-8 bytes (RFC 8259: the top level
 * must be an object; strings are checked as valid UTF-8 with valid escapes, numbers as JSON's
 * grammar). It is hand-written because no well-kept npm library checks a JSON *prefix* token by token
 * against a vocabulary: streaming JSON parsers want complete values and throw without a resumable
 * state, and @mlc-ai/web-xgrammar (xgrammar built for the browser, web-llm's) is a 0.1 wasm build
 * with little use outside web-llm that computes a full vocabulary bitmask every step.
 *
 * Cost: a token is checked by running its bytes from the current state on a scratch cursor whose
 * stack overlays the committed one (no copying). The sampler checks lazily (sampler.ts): the token it
 * would pick anyway is checked first, and only when it is rejected does the sampler ask for the full
 * mask of the state, which is computed once per state key and cached. Most steps of a JSON answer
 * sit inside a string or a number, where the model's choice is allowed, so a step costs one check
 * instead of 152k.
 *
 * Structural whitespace runs are capped (MAX_WHITESPACE_RUN) so a model cannot loop on spaces or
 * newlines between tokens forever — grammar engines cap it the same way.
 */
import type { TokenByteTable } from "../../text/token-bytes.js";
import type { SubmitRequest } from "../types.js";

/**
 * Longest run of whitespace bytes allowed between JSON tokens: a newline plus indentation for
 * depth 9 at two spaces or depth 4 at four, enough for pretty-printed answers.
 */
export const MAX_WHITESPACE_RUN = 20;
/** Full masks kept per vocabulary (each is vocab bytes: 152 KB for R1's tokenizer). */
const MASK_CACHE_ENTRIES = 64;

// Automaton modes. Structural modes (up to AFTER) accept whitespace.
const TOP = 0; // before the top-level '{'
const VALUE = 1; // a value must start (after ':' or an array's ',')
const ARR_FIRST = 2; // after '[': a value or ']'
const OBJ_FIRST = 3; // after '{': a key or '}'
const KEY = 4; // after an object's ',': a key
const COLON = 5; // after a key: ':'
const AFTER = 6; // after a value: ',' or the container's closer
const STR = 7; // inside a string (key: whether it is an object key)
const ESC = 8; // after a backslash
const HEX = 9; // inside \uXXXX, aux = hex digits left
const UTF8 = 10; // inside a multi-byte character: aux = continuation bytes left, next in [lo, hi]
const LIT = 11; // inside true/false/null: lit = which, aux = bytes matched
const NUM_MINUS = 12;
const NUM_ZERO = 13;
const NUM_INT = 14;
const NUM_DOT = 15;
const NUM_FRAC = 16;
const NUM_E = 17;
const NUM_ESIGN = 18;
const NUM_EXP = 19;
const DONE = 20; // the top-level object is closed

const OBJ = 0;
const ARR = 1;
const LITERALS = [Buffer.from("true"), Buffer.from("false"), Buffer.from("null")];

const isWs = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isHex = (b: number) => isDigit(b) || (b >= 0x61 && b <= 0x66) || (b >= 0x41 && b <= 0x46);

/**
 * Automaton state. The container stack is base[0, keep) followed by extra: a trial run from the
 * committed state shares the committed stack (pops lower `keep`, pushes go to `extra`).
 */
class Cursor {
  mode = TOP;
  aux = 0;
  lo = 0;
  hi = 0;
  lit = 0;
  key = false;
  ws = 0;
  base: number[] = [];
  keep = 0;
  extra: number[] = [];

  from(c: Cursor): void {
    this.mode = c.mode;
    this.aux = c.aux;
    this.lo = c.lo;
    this.hi = c.hi;
    this.lit = c.lit;
    this.key = c.key;
    this.ws = c.ws;
    this.base = c.base;
    this.keep = c.base.length;
    this.extra.length = 0;
  }

  private top(): number {
    return this.extra.length ? this.extra[this.extra.length - 1]! : this.keep ? this.base[this.keep - 1]! : -1;
  }

  private close(): void {
    if (this.extra.length) this.extra.pop();
    else this.keep--;
    this.mode = this.extra.length + this.keep === 0 ? DONE : AFTER;
  }

  private open(kind: number): void {
    this.extra.push(kind);
    this.mode = kind === OBJ ? OBJ_FIRST : ARR_FIRST;
  }

  /** Consumes one byte; false when no JSON object has this prefix. */
  feed(b: number): boolean {
    switch (this.mode) {
      case STR:
        if (b === 0x22) {
          this.mode = this.key ? COLON : AFTER;
          this.ws = 0;
          return true;
        }
        if (b === 0x5c) return (this.mode = ESC), true;
        if (b < 0x20) return false; // raw control characters must be escaped
        if (b < 0x80) return true;
        return this.lead(b);
      case ESC:
        if (b === 0x75) return (this.mode = HEX), (this.aux = 4), true;
        if (b === 0x22 || b === 0x5c || b === 0x2f || b === 0x62 || b === 0x66 || b === 0x6e || b === 0x72 || b === 0x74) return (this.mode = STR), true;
        return false;
      case HEX:
        if (!isHex(b)) return false;
        if (--this.aux === 0) this.mode = STR;
        return true;
      case UTF8:
        if (b < this.lo || b > this.hi) return false;
        this.lo = 0x80;
        this.hi = 0xbf;
        if (--this.aux === 0) this.mode = STR;
        return true;
      case LIT: {
        const word = LITERALS[this.lit]!;
        if (b !== word[this.aux]) return false;
        if (++this.aux === word.length) (this.mode = AFTER), (this.ws = 0);
        return true;
      }
      case NUM_MINUS:
        if (!isDigit(b)) return false;
        this.mode = b === 0x30 ? NUM_ZERO : NUM_INT;
        return true;
      case NUM_DOT:
        return isDigit(b) ? ((this.mode = NUM_FRAC), true) : false;
      case NUM_E:
        if (b === 0x2b || b === 0x2d) return (this.mode = NUM_ESIGN), true;
        return isDigit(b) ? ((this.mode = NUM_EXP), true) : false;
      case NUM_ESIGN:
        return isDigit(b) ? ((this.mode = NUM_EXP), true) : false;
      case NUM_ZERO:
      case NUM_INT:
      case NUM_FRAC:
      case NUM_EXP:
        if (isDigit(b) && this.mode !== NUM_ZERO) return true; // (no leading zeros)
        if (b === 0x2e && (this.mode === NUM_ZERO || this.mode === NUM_INT)) return (this.mode = NUM_DOT), true;
        if ((b === 0x65 || b === 0x45) && this.mode !== NUM_EXP) return (this.mode = NUM_E), true;
        this.mode = AFTER; // the number ended; the byte is structural
        this.ws = 0;
        return this.feed(b);
      case DONE:
        return false;
    }
    // Structural modes.
    if (isWs(b)) {
      if (this.ws >= MAX_WHITESPACE_RUN) return false;
      this.ws++;
      return true;
    }
    this.ws = 0;
    switch (this.mode) {
      case TOP:
        return b === 0x7b ? (this.open(OBJ), true) : false;
      case OBJ_FIRST:
      case KEY:
        if (b === 0x7d && this.mode === OBJ_FIRST) return this.close(), true;
        return b === 0x22 ? ((this.mode = STR), (this.key = true), true) : false;
      case COLON:
        return b === 0x3a ? ((this.mode = VALUE), true) : false;
      case AFTER: {
        const top = this.top();
        if (b === 0x2c) return (this.mode = top === OBJ ? KEY : VALUE), true;
        if ((b === 0x7d && top === OBJ) || (b === 0x5d && top === ARR)) return this.close(), true;
        return false;
      }
      case ARR_FIRST:
        if (b === 0x5d) return this.close(), true;
    }
    // VALUE, or ARR_FIRST with a value
    if (b === 0x22) return (this.mode = STR), (this.key = false), true;
    if (b === 0x7b) return this.open(OBJ), true;
    if (b === 0x5b) return this.open(ARR), true;
    if (b === 0x2d) return (this.mode = NUM_MINUS), true;
    if (isDigit(b)) return (this.mode = b === 0x30 ? NUM_ZERO : NUM_INT), true;
    const lit = b === 0x74 ? 0 : b === 0x66 ? 1 : b === 0x6e ? 2 : -1;
    if (lit < 0) return false;
    this.mode = LIT;
    this.lit = lit;
    this.aux = 1;
    return true;
  }

  /** A UTF-8 lead byte inside a string: the continuation count and the first continuation's range (RFC 3629). */
  private lead(b: number): boolean {
    let n: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) n = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      n = 2;
      if (b === 0xe0) lo = 0xa0; // no overlong forms
      if (b === 0xed) hi = 0x9f; // no surrogates
    } else if (b >= 0xf0 && b <= 0xf4) {
      n = 3;
      if (b === 0xf0) lo = 0x90;
      if (b === 0xf4) hi = 0x8f; // nothing above U+10FFFF
    } else return false;
    this.mode = UTF8;
    this.aux = n;
    this.lo = lo;
    this.hi = hi;
    return true;
  }

  /**
   * What decides which tokens are allowed next: the scalars, and the top `depthSeen` containers (no
   * token can pop more), marked when more lie below.
   */
  cacheKey(depthSeen: number): string {
    const s = this.base;
    const from = Math.max(0, s.length - depthSeen);
    return `${this.mode},${this.aux},${this.lo},${this.hi},${this.lit},${+this.key},${this.ws}|${from > 0 ? "+" : ""}${s.slice(from).join("")}`;
  }
}

/** Incremental JSON-object prefix recogniser over bytes. */
export class JsonObjectMatcher {
  private readonly state = new Cursor();
  private readonly trial = new Cursor();

  /** Whether bytes[from, to) can follow what was consumed so far. */
  accepts(bytes: Uint8Array, from: number, to: number): boolean {
    const t = this.trial;
    t.from(this.state);
    for (let i = from; i < to; i++) if (!t.feed(bytes[i]!)) return false;
    return true;
  }

  /** Consumes bytes[from, to) if they are accepted; returns whether they were. */
  advance(bytes: Uint8Array, from: number, to: number): boolean {
    if (!this.accepts(bytes, from, to)) return false;
    const t = this.trial;
    const s = this.state;
    s.base.length = t.keep; // t shares s's stack: apply its pops, then its pushes
    s.base.push(...t.extra);
    s.from(t);
    return true;
  }

  /** True once the top-level object is closed: nothing more may follow. */
  get done(): boolean {
    return this.state.mode === DONE;
  }

  /** The mask cache key of the current state. */
  key(depthSeen: number): string {
    return this.state.cacheKey(depthSeen);
  }
}

/**
 * The vocabulary side, shared by every sequence of an engine: token bytes and the cache of full masks
 * by state key.
 */
export class JsonVocabulary {
  /** The most container closers any one token holds: how deep into the stack a mask can depend. */
  private readonly depthSeen: number;
  private readonly masks = new Map<string, Uint8Array>();
  /** Full masks computed (cache misses), for the tests and the benchmark. */
  maskBuilds = 0;

  constructor(private readonly table: TokenByteTable, readonly vocab: number) {
    let most = 0;
    const { offsets, bytes } = table;
    for (let id = 0; id + 1 < offsets.length; id++) {
      let n = 0;
      for (let i = offsets[id]!; i < offsets[id + 1]!; i++) if (bytes[i] === 0x7d || bytes[i] === 0x5d) n++;
      most = Math.max(most, n);
    }
    this.depthSeen = most + 1;
  }

  /** Whether token `id` can follow the matcher's state (empty and out-of-table tokens never can). */
  allows(m: JsonObjectMatcher, id: number): boolean {
    const { offsets, bytes } = this.table;
    if (id + 1 >= offsets.length) return false;
    const from = offsets[id]!;
    const to = offsets[id + 1]!;
    return to > from && m.accepts(bytes, from, to);
  }

  /** 1 for every token allowed in the matcher's state (a cached array: do not modify). */
  mask(m: JsonObjectMatcher): Uint8Array {
    const key = m.key(this.depthSeen);
    let mask = this.masks.get(key);
    if (mask) {
      this.masks.delete(key); // most recently used goes last
    } else {
      mask = new Uint8Array(this.vocab);
      for (let id = 0; id < this.vocab; id++) mask[id] = this.allows(m, id) ? 1 : 0;
      this.maskBuilds++;
      if (this.masks.size >= MASK_CACHE_ENTRIES) this.masks.delete(this.masks.keys().next().value!);
    }
    this.masks.set(key, mask);
    return mask;
  }

  /** Advances the matcher by token `id`; false (state unchanged) if the token is not allowed. */
  advance(m: JsonObjectMatcher, id: number): boolean {
    const { offsets, bytes } = this.table;
    if (id + 1 >= offsets.length || offsets[id + 1]! === offsets[id]!) return false;
    return m.advance(bytes, offsets[id]!, offsets[id + 1]!);
  }
}

/**
 * One sequence's constraint: free until `startAfterId` has been generated (the reasoning block),
 * then every token must continue the JSON object; done when it closes.
 */
export class JsonConstraint {
  private readonly matcher = new JsonObjectMatcher();
  active: boolean;

  constructor(private readonly vocab: JsonVocabulary, private readonly spec: NonNullable<SubmitRequest["constraint"]>) {
    this.active = spec.startAfterId === undefined;
  }

  allows(id: number): boolean {
    return this.vocab.allows(this.matcher, id);
  }

  mask(): Uint8Array {
    return this.vocab.mask(this.matcher);
  }

  /** Records a generated token. */
  accept(id: number): void {
    if (!this.active) {
      this.active = id === this.spec.startAfterId;
      return;
    }
    // The sampler only returns allowed tokens; anything else is a bug worth failing loudly on.
    if (!this.vocab.advance(this.matcher, id)) throw new Error(`json constraint: token ${id} does not continue the JSON object`);
  }

  get done(): boolean {
    return this.active && this.matcher.done;
  }
}
