/**
 * Constrained decoding (response_format) for an engine that samples in another process: the torch
 * worker draws tokens on the GPU, while the JSON machine (embedded/json-constraint.ts) stays here,
 * in one place for every engine. After drawing, the worker sends the tokens of its constrained rows
 * (`check`: one for the step's decode rows, one for its finished prompts); each gets `true` (it may
 * follow), or the state's full mask as a base64 bitmask, under which the worker draws again
 * (`verdict`). That is the embedded sampler's accept-or-redraw (sampler.ts): the drawn token is
 * usually allowed (inside a JSON string or number almost anything is), so a row costs one check,
 * not a scan of the vocabulary; a mask crosses the socket once and is then named by its id. Tokens
 * are committed here as the worker emits them; the token that completes the value ends the stream
 * with finish "stop", as on the embedded engine.
 */
import { DsrError } from "../errors.js";
import type { TokenByteTable } from "../text/token-bytes.js";
import { JsonConstraint, JsonVocabulary } from "./embedded/json-constraint.js";
import type { SubmitRequest } from "./types.js";

/**
 * Per checked row: true (allowed); false (drop the row: its stream already ended); or a mask to draw
 * again under, as `[id, bits]` the first time (bits: base64, token i is bit i & 7 of byte i >> 3) and
 * as the bare `id` while the worker still holds it (see `held`).
 */
export type Verdict = boolean | number | [number, string];

/** Masks the worker keeps by default (`maskCache` in its open frame): ~152 KB of GPU memory each for R1's vocabulary. */
export const WORKER_MASK_CACHE = 256;

export class RemoteConstraints {
  private vocabulary?: JsonVocabulary;
  private readonly live = new Map<number, JsonConstraint>();
  /** Per mask array of the vocabulary's cache (one per state, reused as is): its id and its packed bits. */
  private readonly ids = new WeakMap<Uint8Array, { id: number; bits: string }>();
  private nextId = 0;
  /**
   * The mask ids the worker holds, least recently used first. The worker applies the same rule to
   * the same verdicts in the same order (insert on `[id, bits]`, evict the oldest past `capacity`,
   * move to the end on a bare id), so the two sides never disagree, and a mask
   * crosses the socket once instead of every time a state refuses a draw.
   */
  private readonly held = new Map<number, true>();

  /** `capacity`: how many masks the worker keeps (the `maskCache` of its open frame). */
  constructor(
    private readonly table: TokenByteTable,
    private readonly vocab: number,
    private readonly capacity = WORKER_MASK_CACHE,
  ) {}

  add(id: number, spec: NonNullable<SubmitRequest["constraint"]>): void {
    this.live.set(id, new JsonConstraint((this.vocabulary ??= new JsonVocabulary(this.table, this.vocab)), spec));
  }

  has(id: number): boolean {
    return this.live.has(id);
  }

  remove(id: number): void {
    this.live.delete(id);
  }

  clear(): void {
    this.live.clear();
  }

  /** Commits tokens the engine emitted for `id`; true when its JSON value is now complete. Throws if one was not allowed. */
  accept(id: number, ids: readonly number[]): boolean {
    const c = this.live.get(id);
    if (!c) return false;
    for (const t of ids) c.accept(t);
    return c.done;
  }

  /** May `token` follow in request `id`'s state? Throws DSR_CONSTRAINT_DEAD_END when no token can. */
  verdict(id: number, token: number): Verdict {
    const c = this.live.get(id);
    if (!c) return false;
    if (!c.active || c.allows(token)) return true;
    const mask = c.mask();
    let m = this.ids.get(mask);
    if (m === undefined) {
      m = { id: this.nextId++, bits: pack(mask) };
      this.ids.set(mask, m);
    }
    if (this.held.delete(m.id)) {
      this.held.set(m.id, true);
      return m.id;
    }
    this.held.set(m.id, true);
    if (this.held.size > this.capacity) this.held.delete(this.held.keys().next().value!);
    return [m.id, m.bits];
  }
}

/** A 0/1 mask as base64 bits; throws DSR_CONSTRAINT_DEAD_END for a mask with no token. */
function pack(mask: Uint8Array): string {
  const out = Buffer.alloc((mask.length + 7) >> 3);
  let any = false;
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) {
      out[i >> 3]! |= 1 << (i & 7);
      any = true;
    }
  }
  if (!any) throw new DsrError("DSR_CONSTRAINT_DEAD_END", "no token of the vocabulary can continue the constrained output", { hint: "the tokenizer lacks single-byte tokens; report this with the model name" });
  return out.toString("base64");
}
