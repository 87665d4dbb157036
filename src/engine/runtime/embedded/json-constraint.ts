/**
 * Constrained decoding for `response_format` json_object and json_schema: the output (after the
 * reasoning block, when the request says so) is one JSON value that the schema accepts, then the
 * sequence ends. json_object is the schema `{"type": "object"}`, run by the same machine.
 *
 * The recogniser is a small hand-written pushdown automaton over UTF-8 bytes (RFC 8259: strings are
 * checked as valid UTF-8 with valid escapes, numbers as JSON's grammar), walking the compiled schema
 * (json-schema.ts) as it goes. It is hand-written because no well-kept npm library checks a JSON
 * *prefix* token by token against a vocabulary and a schema: streaming JSON parsers want complete
 * values and throw without a resumable state, JSON Schema validators (ajv) check complete documents,
 * and @mlc-ai/web-xgrammar (xgrammar built for the browser, web-llm's) is a 0.1 wasm build with little
 * use outside web-llm that computes a full vocabulary bitmask every step.
 *
 * Schema state: the container stack is a persistent linked list of frames, each holding the schema
 * alternatives still possible for that container (anyOf of objects narrows as keys arrive; an
 * alternative records which alternatives of the frame below it refines). Frames are never modified,
 * only replaced, so a trial run from the committed state shares the committed stack and copies
 * nothing; committing is taking the trial's references.
 *
 * Cost: a token is checked by running its bytes from the current state on a scratch cursor. The
 * sampler checks lazily (sampler.ts): the token it would pick anyway is checked first, and only when
 * it is rejected does the sampler ask for the full mask of the state, which is computed once per state
 * key and cached (the key holds the schema position: frames, alternatives, seen keys). Most steps of
 * a JSON answer sit inside a string or a number, where the model's choice is allowed, so a step costs
 * one check instead of 152k.
 *
 * Object keys: no key twice in one object (duplicates make JSON.parse keep the last, which could pass
 * a value the schema forbids). So that equal keys are equal bytes, keys are spelled one way: no `\u`
 * or `\/` escapes in a key other than as a declared property's JSON.stringify spelling.
 *
 * Structural whitespace runs are capped (MAX_WHITESPACE_RUN) so a model cannot loop on spaces or
 * newlines between tokens forever — grammar engines cap it the same way. A top-level number has no
 * closing delimiter: one whitespace byte after it ends the output.
 */
import type { TokenByteTable } from "../../text/token-bytes.js";
import type { SubmitRequest } from "../types.js";
import { compileJsonSchema, JSON_OBJECT_SCHEMA, type ArrayBranch, type CompiledSchema, type ObjectBranch, type ScalarBranch } from "./json-schema.js";

/**
 * Longest run of whitespace bytes allowed between JSON tokens: a newline plus indentation for
 * depth 9 at two spaces or depth 4 at four, enough for pretty-printed answers.
 */
export const MAX_WHITESPACE_RUN = 20;
/** Full masks kept per vocabulary (each is vocab bytes: 152 KB for R1's tokenizer). */
const MASK_CACHE_ENTRIES = 64;
/** Compiled schemas kept per vocabulary (requests with the same schema share one, and its masks). */
const SCHEMA_CACHE_ENTRIES = 32;

// Automaton modes. Structural modes (up to AFTER) accept whitespace.
const TOP = 0; // before the top-level value
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
const DONE = 20; // the top-level value is complete

// Frame kinds.
const OBJ = 0;
const ARR = 1;
const ROOT = 2;
const LITERALS = [Buffer.from("true"), Buffer.from("false"), Buffer.from("null")];

const isWs = (b: number) => b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
const isDigit = (b: number) => b >= 0x30 && b <= 0x39;
const isHex = (b: number) => isDigit(b) || (b >= 0x61 && b <= 0x66) || (b >= 0x41 && b <= 0x46);

/** One schema alternative of an open container. Immutable: changes make a new one. */
interface Alt {
  readonly o: ObjectBranch | null;
  readonly a: ArrayBranch | null;
  /** Indices of the alternatives of the frame below that this one refines. */
  readonly ps: readonly number[];
  /** Objects: properties seen (bitset words; forbidden ones start set). */
  readonly seen: Uint32Array | null;
  /** Arrays: items so far. */
  readonly n: number;
  /** Objects: the schema node of the value after the last key. */
  readonly v: number;
}

interface Frame {
  readonly kind: number;
  readonly alts: readonly Alt[];
  /** Objects: the keys so far, as latin1 strings of their bytes. */
  readonly keys: readonly string[];
  readonly below: Frame | null;
}

/** A scalar schema a value being read may still satisfy. */
interface Cand {
  readonly s: ScalarBranch;
  readonly ps: readonly number[];
  /** Position in s.lit (-1: off the literals). */
  readonly t: number;
  /** The free form (any string / number / integer) still fits. */
  readonly f: boolean;
}

const NO_CANDS: readonly Cand[] = [];
const NO_POS: readonly number[] = [];
const NO_KEYS: readonly string[] = [];
const ROOT_ALT: Alt = { o: null, a: null, ps: NO_POS, seen: null, n: 0, v: -1 };

const hasBit = (w: Uint32Array, p: number) => (w[p >>> 5]! & (1 << (p & 31))) !== 0;
function withBit(w: Uint32Array, p: number): Uint32Array {
  const c = w.slice();
  c[p >>> 5]! |= 1 << (p & 31);
  return c;
}
/** Some property under trie node `n` is not seen yet. */
function unseenUnder(a: Alt, n: number): boolean {
  const u = a.o!.under[n]!;
  const s = a.seen!;
  for (let i = 0; i < u.length; i++) if ((u[i]! & ~s[i]!) !== 0) return true;
  return false;
}
const canKey = (a: Alt) => a.o!.additional >= 0 || unseenUnder(a, 0);
const canClose = (a: Alt) => {
  const r = a.o!.required;
  for (let i = 0; i < r.length; i++) if ((r[i]! & ~a.seen![i]!) !== 0) return false;
  return true;
};
const childOf = (parents: readonly { ps: readonly number[] }[], i: number) => parents.some((c) => c.ps.includes(i));

/** Bytes of the key being read, shared by a matcher's cursors: a trial writes past the committed key only. */
interface KeyBuffer {
  b: Buffer;
}

class Cursor {
  mode = TOP;
  aux = 0;
  lo = 0;
  hi = 0;
  lit = 0;
  /** Inside an object key. */
  key = false;
  ws = 0;
  top: Frame;
  cands: readonly Cand[] = NO_CANDS;
  /** Some candidate needs per-byte work (a literal trie, or integers that a '.' or 'e' rules out). */
  track = false;
  /** Inside a key: per alternative of the top frame, its position in the declared names' trie (-1: off it). */
  kpos: readonly number[] = NO_POS;
  /** The key has a `\u` or `\/` escape (so it can only be a declared name spelled that way). */
  kesc = false;
  /** The key's bytes are kb.b[ks, ke). */
  ks = 0;
  ke = 0;

  constructor(readonly schema: CompiledSchema, readonly kb: KeyBuffer, root: Frame) {
    this.top = root;
  }

  from(c: Cursor): void {
    this.mode = c.mode;
    this.aux = c.aux;
    this.lo = c.lo;
    this.hi = c.hi;
    this.lit = c.lit;
    this.key = c.key;
    this.ws = c.ws;
    this.top = c.top;
    this.cands = c.cands;
    this.track = c.track;
    this.kpos = c.kpos;
    this.kesc = c.kesc;
    this.ks = c.ks;
    this.ke = c.ke;
  }

  /** Consumes one byte; false when no accepted JSON value has this prefix. */
  feed(b: number): boolean {
    switch (this.mode) {
      case STR:
        if (b === 0x22) return this.key ? this.endKey() : this.scalarByte(b, false) && this.endScalar();
        if (b === 0x5c) this.mode = ESC;
        else if (b < 0x20) return false; // raw control characters must be escaped
        else if (b >= 0x80 && !this.lead(b)) return false;
        return this.key ? this.keyByte(b) : this.scalarByte(b, false);
      case ESC:
        if (b === 0x75) (this.mode = HEX), (this.aux = 4);
        else if (b === 0x22 || b === 0x5c || b === 0x2f || b === 0x62 || b === 0x66 || b === 0x6e || b === 0x72 || b === 0x74) this.mode = STR;
        else return false;
        if (!this.key) return this.scalarByte(b, false);
        if (b === 0x75 || b === 0x2f) this.kesc = true;
        return this.keyByte(b);
      case HEX:
        if (!isHex(b)) return false;
        if (--this.aux === 0) this.mode = STR;
        return this.key ? this.keyByte(b) : this.scalarByte(b, false);
      case UTF8:
        if (b < this.lo || b > this.hi) return false;
        this.lo = 0x80;
        this.hi = 0xbf;
        if (--this.aux === 0) this.mode = STR;
        return this.key ? this.keyByte(b) : this.scalarByte(b, false);
      case LIT: {
        const word = LITERALS[this.lit]!;
        if (b !== word[this.aux] || !this.scalarByte(b, false)) return false;
        return ++this.aux === word.length ? this.endScalar() : true;
      }
      case NUM_MINUS:
        if (!isDigit(b)) return false;
        this.mode = b === 0x30 ? NUM_ZERO : NUM_INT;
        return this.scalarByte(b, false);
      case NUM_DOT:
        return isDigit(b) && ((this.mode = NUM_FRAC), this.scalarByte(b, false));
      case NUM_E:
        if (b === 0x2b || b === 0x2d) return (this.mode = NUM_ESIGN), this.scalarByte(b, false);
        return isDigit(b) && ((this.mode = NUM_EXP), this.scalarByte(b, false));
      case NUM_ESIGN:
        return isDigit(b) && ((this.mode = NUM_EXP), this.scalarByte(b, false));
      case NUM_ZERO:
      case NUM_INT:
      case NUM_FRAC:
      case NUM_EXP:
        if (isDigit(b) && this.mode !== NUM_ZERO) return this.scalarByte(b, false); // (no leading zeros)
        if (b === 0x2e && (this.mode === NUM_ZERO || this.mode === NUM_INT)) return (this.mode = NUM_DOT), this.scalarByte(b, true);
        if ((b === 0x65 || b === 0x45) && this.mode !== NUM_EXP) return (this.mode = NUM_E), this.scalarByte(b, true);
        // The number ended; the byte is structural. At the top level it must be one whitespace byte.
        if (!this.endScalar()) return false;
        return (this.mode as number) === DONE ? isWs(b) : this.feed(b);
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
      case VALUE:
        return this.startValue(b);
      case OBJ_FIRST:
        if (b === 0x7d) return this.close(canClose);
        return b === 0x22 && this.startKey();
      case KEY:
        return b === 0x22 && this.startKey();
      case COLON:
        return b === 0x3a && ((this.mode = VALUE), true);
      case AFTER:
        if (this.top.kind === OBJ) {
          if (b === 0x2c) return this.narrow(canKey, KEY);
          return b === 0x7d && this.close(canClose);
        }
        if (b === 0x2c) return this.narrow((a) => a.n < a.a!.max, VALUE);
        return b === 0x5d && this.close((a) => a.n >= a.a!.min);
      case ARR_FIRST:
        if (b === 0x5d) return this.close((a) => a.a!.min === 0);
        return this.startValue(b);
    }
    return false;
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

  /** Keeps the top frame's alternatives that pass; false if none does. */
  private narrow(pass: (a: Alt) => boolean, mode: number): boolean {
    const f = this.top;
    if (!f.alts.every(pass)) {
      const alts = f.alts.filter(pass);
      if (alts.length === 0) return false;
      this.top = { kind: f.kind, alts, keys: f.keys, below: f.below };
    }
    this.mode = mode;
    return true;
  }

  /** Closes the top container: the alternatives that may close here complete the value below. */
  private close(pass: (a: Alt) => boolean): boolean {
    const alts = this.top.alts.filter(pass);
    if (alts.length === 0) return false;
    this.top = this.top.below!;
    return this.complete(alts);
  }

  /** A value of the top frame is complete; `done` are its schemas that still fit (their ps). */
  private complete(done: readonly { ps: readonly number[] }[]): boolean {
    const f = this.top;
    this.ws = 0;
    if (f.kind === ROOT) {
      this.mode = DONE;
      return true;
    }
    this.mode = AFTER;
    const alts: Alt[] = [];
    for (let i = 0; i < f.alts.length; i++) {
      if (!childOf(done, i)) continue;
      const a = f.alts[i]!;
      alts.push(f.kind === ARR ? { o: null, a: a.a, ps: a.ps, seen: null, n: a.n + 1, v: -1 } : a);
    }
    if (f.kind === ARR || alts.length < f.alts.length) this.top = { kind: f.kind, alts, keys: f.keys, below: f.below };
    return true;
  }

  /** The first byte of a value: its kind picks the schema branches that can hold it. */
  private startValue(b: number): boolean {
    const f = this.top;
    const nodes = this.schema.nodes;
    // The value's schema nodes, each with the alternative of f it serves.
    const want: number[] = [];
    if (f.kind === ROOT) want.push(this.schema.root, 0);
    else if (f.kind === OBJ) f.alts.forEach((a, i) => want.push(a.v, i));
    else f.alts.forEach((a, i) => a.n < a.a!.max && want.push(a.a!.items, i));

    if (b === 0x7b || b === 0x5b) {
      const obj = b === 0x7b;
      const alts: Alt[] = [];
      for (let w = 0; w < want.length; w += 2) {
        const node = nodes[want[w]!]!;
        const i = want[w + 1]!;
        for (const br of obj ? node.objs : node.arrs) {
          const same = alts.find((x) => x.o === br || x.a === br);
          if (same) (same.ps as number[]).push(i);
          else alts.push(obj ? { o: br as ObjectBranch, a: null, ps: [i], seen: (br as ObjectBranch).forbidden, n: 0, v: -1 } : { o: null, a: br as ArrayBranch, ps: [i], seen: null, n: 0, v: -1 });
        }
      }
      if (alts.length === 0) return false;
      this.top = { kind: obj ? OBJ : ARR, alts, keys: NO_KEYS, below: f };
      this.mode = obj ? OBJ_FIRST : ARR_FIRST;
      return true;
    }

    const kind = b === 0x22 ? STR : b === 0x2d || isDigit(b) ? NUM_MINUS : b === 0x74 || b === 0x66 || b === 0x6e ? LIT : -1;
    if (kind < 0) return false;
    const cands: Cand[] = [];
    for (let w = 0; w < want.length; w += 2) {
      const s = nodes[want[w]!]!.scalar;
      if (!s) continue;
      const same = cands.find((c) => c.s === s);
      if (same) {
        (same.ps as number[]).push(want[w + 1]!);
        continue;
      }
      const free = kind === STR ? s.str : kind === NUM_MINUS ? s.num > 0 : false;
      const t = s.lit ? s.lit.step(0, b) : -1;
      if (free || t >= 0) cands.push({ s, ps: [want[w + 1]!], t, f: free });
    }
    if (cands.length === 0) return false;
    this.cands = cands;
    this.track = cands.some((c) => c.t >= 0 || (kind === NUM_MINUS && c.f && c.s.num === 1));
    if (kind === STR) (this.mode = STR), (this.key = false);
    else if (kind === NUM_MINUS) this.mode = b === 0x2d ? NUM_MINUS : b === 0x30 ? NUM_ZERO : NUM_INT;
    else (this.mode = LIT), (this.lit = b === 0x74 ? 0 : b === 0x66 ? 1 : 2), (this.aux = 1);
    return true;
  }

  /** A byte of a scalar value (after its first): literal positions move; `dotOrE` rules out free integers. */
  private scalarByte(b: number, dotOrE: boolean): boolean {
    if (!this.track) return true;
    const next: Cand[] = [];
    let track = false;
    for (const c of this.cands) {
      const t = c.t >= 0 ? c.s.lit!.step(c.t, b) : -1;
      const f = c.f && !(dotOrE && c.s.num === 1);
      if (!f && t < 0) continue;
      next.push({ s: c.s, ps: c.ps, t, f });
      if (t >= 0 || (f && c.s.num === 1 && this.mode >= NUM_MINUS)) track = true;
    }
    if (next.length === 0) return false;
    this.cands = next;
    this.track = track;
    return true;
  }

  /** The scalar ended (its last byte consumed, or a number's terminator seen). */
  private endScalar(): boolean {
    const done = this.cands.filter((c) => c.f || (c.t >= 0 && c.s.lit!.term[c.t]! >= 0));
    if (done.length === 0) return false;
    this.cands = NO_CANDS;
    this.track = false;
    return this.complete(done);
  }

  /** The opening quote of a key. */
  private startKey(): boolean {
    if (!this.narrow(canKey, STR)) return false;
    this.key = true;
    this.kpos = this.top.alts.map(() => 0);
    this.kesc = false;
    this.ks = this.ke;
    return true;
  }

  /** A byte inside a key: each alternative must still have a declared name or an undeclared key to end in. */
  private keyByte(b: number): boolean {
    let buf = this.kb.b;
    if (this.ke >= buf.length) {
      const grown = Buffer.allocUnsafe(buf.length * 2);
      buf.copy(grown);
      this.kb.b = buf = grown;
    }
    buf[this.ke++] = b;
    const kp = this.kpos;
    if (!this.kesc && kp.every((k) => k < 0)) return true; // off every trie, undeclared keys allowed: nothing changes
    const f = this.top;
    const alts: Alt[] = [];
    const next: number[] = [];
    for (let i = 0; i < kp.length; i++) {
      const a = f.alts[i]!;
      const k = kp[i]! >= 0 ? a.o!.trie.step(kp[i]!, b) : -1;
      if ((k >= 0 && unseenUnder(a, k)) || (a.o!.additional >= 0 && !this.kesc)) alts.push(a), next.push(k);
    }
    if (alts.length === 0) return false;
    if (alts.length < f.alts.length) this.top = { kind: OBJ, alts, keys: f.keys, below: f.below };
    this.kpos = next;
    return true;
  }

  /** The closing quote of a key: not a key seen before; each alternative takes it as a property or an extra key. */
  private endKey(): boolean {
    const f = this.top;
    const buf = this.kb.b;
    const ks = this.ks;
    const len = this.ke - ks;
    for (const k of f.keys) {
      if (k.length !== len) continue;
      let j = 0;
      while (j < len && k.charCodeAt(j) === buf[ks + j]) j++;
      if (j === len) return false; // a duplicate
    }
    const alts: Alt[] = [];
    f.alts.forEach((a, i) => {
      const o = a.o!;
      const k = this.kpos[i]!;
      const p = k >= 0 ? o.trie.term[k]! : -1;
      if (p >= 0) {
        if (!hasBit(a.seen!, p)) alts.push({ o, a: null, ps: a.ps, seen: withBit(a.seen!, p), n: 0, v: o.propNode[p]! });
      } else if (o.additional >= 0 && !this.kesc) alts.push({ o, a: null, ps: a.ps, seen: a.seen, n: 0, v: o.additional });
    });
    if (alts.length === 0) return false;
    this.top = { kind: OBJ, alts, keys: [...f.keys, buf.toString("latin1", ks, this.ke)], below: f.below };
    this.mode = COLON;
    this.key = false;
    this.kpos = NO_POS;
    this.ws = 0;
    return true;
  }

  /**
   * What decides which tokens are allowed next: the scalars, the value or key being read, and the top
   * `depthSeen` frames (no token can pop more), marked when more lie below.
   */
  cacheKey(depthSeen: number): string {
    let s = `${this.mode},${this.aux},${this.lo},${this.hi},${this.lit},${+this.key},${this.ws},${+this.kesc}|`;
    for (const c of this.cands) s += `${c.s.id}:${c.ps}:${c.t}:${+c.f};`;
    // (a token may close this key and write another whole key: the key so far matters, not only its trie position)
    if (this.key) s += `|${this.kpos}|${JSON.stringify(this.kb.b.toString("latin1", this.ks, this.ke))}`;
    let f: Frame | null = this.top;
    for (let d = 0; f && d < depthSeen; d++, f = f.below) {
      s += `|${f.kind}`;
      for (const a of f.alts) s += `[${a.o?.id ?? a.a?.id ?? ""}:${a.ps}:${a.seen ?? ""}:${a.n}:${a.v}]`;
      if (f.keys.length) s += JSON.stringify(f.keys);
    }
    return f ? s + "+" : s;
  }
}

/** Identity of compiled schemas in mask cache keys. */
const schemaIds = new WeakMap<CompiledSchema, number>();
let nextSchemaId = 0;
const schemaId = (s: CompiledSchema) => {
  let id = schemaIds.get(s);
  if (id === undefined) schemaIds.set(s, (id = nextSchemaId++));
  return id;
};

let jsonObject: CompiledSchema | undefined;
/** The compiled json_object schema (`{"type": "object"}`). */
export const jsonObjectSchema = () => (jsonObject ??= compileJsonSchema(JSON_OBJECT_SCHEMA));

/** Incremental prefix recogniser over bytes for the JSON values a compiled schema accepts. */
export class JsonMatcher {
  private readonly state: Cursor;
  private readonly trial: Cursor;
  readonly id: number;

  constructor(readonly schema: CompiledSchema) {
    const kb = { b: Buffer.allocUnsafe(64) };
    const root: Frame = { kind: ROOT, alts: [ROOT_ALT], keys: NO_KEYS, below: null };
    this.state = new Cursor(schema, kb, root);
    this.trial = new Cursor(schema, kb, root);
    this.id = schemaId(schema);
  }

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
    const s = this.state;
    s.from(this.trial);
    // Keep the key buffer small: outside a key nothing in it is needed; inside one, move it to the front.
    if (!s.key) s.ks = s.ke = 0;
    else if (s.ks > 0) {
      s.kb.b.copyWithin(0, s.ks, s.ke);
      s.ke -= s.ks;
      s.ks = 0;
    }
    return true;
  }

  /** True once the top-level value is complete: nothing more may follow. */
  get done(): boolean {
    return this.state.mode === DONE;
  }

  /** The mask cache key of the current state. */
  key(depthSeen: number): string {
    return `${this.id}#${this.state.cacheKey(depthSeen)}`;
  }
}

/** The json_object recogniser: JsonMatcher on `{"type": "object"}`. */
export class JsonObjectMatcher extends JsonMatcher {
  constructor() {
    super(jsonObjectSchema());
  }
}

type ConstraintSpec = NonNullable<SubmitRequest["constraint"]>;

/**
 * The vocabulary side, shared by every sequence of an engine: token bytes, the compiled schemas, and
 * the cache of full masks by (schema, state) key.
 */
export class JsonVocabulary {
  /** The most container closers any one token holds: how deep into the stack a mask can depend. */
  private readonly depthSeen: number;
  private readonly masks = new Map<string, Uint8Array>();
  private readonly schemas = new Map<string, CompiledSchema>();
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

  /** The compiled schema of a constraint (cached by the schema's JSON text); throws SchemaError. */
  compile(spec: ConstraintSpec): CompiledSchema {
    if (spec.kind === "json_object") return jsonObjectSchema();
    const text = JSON.stringify(spec.schema);
    let s = this.schemas.get(text);
    if (s) this.schemas.delete(text);
    else {
      s = compileJsonSchema(spec.schema);
      if (this.schemas.size >= SCHEMA_CACHE_ENTRIES) this.schemas.delete(this.schemas.keys().next().value!);
    }
    this.schemas.set(text, s);
    return s;
  }

  /** Whether token `id` can follow the matcher's state (empty and out-of-table tokens never can). */
  allows(m: JsonMatcher, id: number): boolean {
    const { offsets, bytes } = this.table;
    if (id + 1 >= offsets.length) return false;
    const from = offsets[id]!;
    const to = offsets[id + 1]!;
    return to > from && m.accepts(bytes, from, to);
  }

  /** 1 for every token allowed in the matcher's state (a cached array: do not modify). */
  mask(m: JsonMatcher): Uint8Array {
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
  advance(m: JsonMatcher, id: number): boolean {
    const { offsets, bytes } = this.table;
    if (id + 1 >= offsets.length || offsets[id + 1]! === offsets[id]!) return false;
    return m.advance(bytes, offsets[id]!, offsets[id + 1]!);
  }
}

/**
 * One sequence's constraint: free until `startAfterId` has been generated (the reasoning block),
 * then every token must continue the JSON value; done when it is complete.
 */
export class JsonConstraint {
  private readonly matcher: JsonMatcher;
  active: boolean;

  constructor(private readonly vocab: JsonVocabulary, private readonly spec: ConstraintSpec) {
    this.matcher = new JsonMatcher(vocab.compile(spec));
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
    if (!this.vocab.advance(this.matcher, id)) throw new Error(`json constraint: token ${id} does not continue the JSON value`);
  }

  get done(): boolean {
    return this.active && this.matcher.done;
  }
}
