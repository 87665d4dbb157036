/**
 * Constrained decoding (response_format) for an engine that samples in another process: the torch
 * worker draws tokens on the GPU, while the JSON machine (embedded/json-constraint.ts) stays here,
 * in one place for every engine. Tokens are committed here as the worker emits them; after each,
 * dsr sends the worker the mask of the state it leads to (`mask`), and the worker draws the row's
 * next token from the allowed ones. The mask is computed and sent while the worker runs its next
 * forward pass, so in the steady state the worker never waits for it; masks are cached per state
 * (json-constraint.ts) and cross the socket once, then are named by id. The token that completes
 * the value ends the stream with finish "stop", as on the embedded engine.
 */
import { DsrError } from "../errors.js";
import type { TokenByteTable } from "../text/token-bytes.js";
import { JsonConstraint, JsonVocabulary } from "./embedded/json-constraint.js";
import type { SubmitRequest } from "./types.js";

/**
 * The allowed tokens of a row's next draw: `[id, bits]` the first time (bits: base64, token i is
 * bit i & 7 of byte i >> 3), then the bare `id` while the worker still holds it (see `held`).
 */
export type MaskRef = number | [number, string];

/** Masks the worker keeps by default (`maskCache` in its open frame): ~152 KB of GPU memory each for R1's vocabulary. */
export const WORKER_MASK_CACHE = 256;
/** State masks kept here: with every state's mask built (not only where a draw was refused), more states recur than the embedded engine's 64. */
const STATE_MASKS = 256;

export class RemoteConstraints {
  private vocabulary?: JsonVocabulary;
  private readonly live = new Map<number, JsonConstraint>();
  /** Per mask array of the vocabulary's cache (one per state, reused as is): its id and its packed bits. */
  private readonly ids = new WeakMap<Uint8Array, { id: number; bits: string }>();
  private nextId = 0;
  /**
   * The mask ids the worker holds, least recently used first. The worker applies the same rule to
   * the same `mask` messages in the same order (insert on `[id, bits]`, evict the oldest past
   * `capacity`, move to the end on a bare id), so the two sides never disagree.
   */
  private readonly held = new Map<number, true>();

  /** `capacity`: how many masks the worker keeps (the `maskCache` of its open frame). */
  constructor(
    private readonly table: TokenByteTable,
    private readonly vocab: number,
    private readonly capacity = WORKER_MASK_CACHE,
  ) {}

  /** Registers a constrained request; returns the mask of its first draw when it is constrained from the start. */
  add(id: number, spec: NonNullable<SubmitRequest["constraint"]>): MaskRef | undefined {
    const c = new JsonConstraint((this.vocabulary ??= new JsonVocabulary(this.table, this.vocab, STATE_MASKS)), spec);
    const first = c.active ? this.ref(c) : undefined; // a dead end throws before anything is kept
    this.live.set(id, c);
    return first;
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

  /**
   * Commits tokens the engine emitted for `id`. Returns "done" when its JSON value is complete,
   * the mask of its next draw once constrained (from the token after `startAfterId`), or undefined
   * while it is not. Throws if a token was not allowed, and DSR_CONSTRAINT_DEAD_END when no token
   * can follow.
   */
  accept(id: number, ids: readonly number[]): MaskRef | "done" | undefined {
    const c = this.live.get(id);
    if (!c) return undefined;
    for (const t of ids) c.accept(t);
    if (c.done) return "done";
    return c.active ? this.ref(c) : undefined;
  }

  private ref(c: JsonConstraint): MaskRef {
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
