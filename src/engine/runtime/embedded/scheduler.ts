/**
 * Continuous batching over one DecoderSession. Requests wait in a FIFO queue, join the running batch
 * between steps and leave when they finish; the loop alternates one prefill chunk of the newest
 * sequence (at most one prefills at a time) with one decode step of every decoding sequence, so a
 * long prompt delays running streams by one chunk, not by the whole prompt. Decoders occupy slots
 * [0, d), the prefilling sequence slot d; when a sequence leaves, the highest slots fill the hole.
 */
import { DsrError } from "../../errors.js";
import type { TokenByteTable } from "../../text/token-bytes.js";
import type { EngineCounters } from "../engine-protocol.js";
import type { EngineStats, SubmitRequest, TokenChunk, TokenEngine } from "../types.js";
import { Channel } from "./channel.js";
import type { DecoderSession } from "./decoder-session.js";
import { JsonConstraint, JsonVocabulary } from "./json-constraint.js";
import { compileJsonSchema, SchemaError } from "./json-schema.js";
import { Sampler } from "./sampler.js";

export interface SchedulerOptions {
  maxBatch: number;
  maxContext: number;
  /** Prompt tokens per prefill step while other sequences are decoding (bounds their stall). */
  prefillChunk: number;
  /** Prompt tokens per prefill step when nothing else is running. */
  prefillChunkIdle: number;
}

interface Seq {
  prompt: number[];
  slot: number;
  /** Tokens in the KV cache. */
  len: number;
  state: "prefill" | "decode" | "done";
  /** Last sampled token, fed at the next decode step. */
  next: number;
  generated: number;
  maxTokens: number;
  stopIds: Set<number>;
  sampler: Sampler;
  json?: JsonConstraint;
  channel: Channel<TokenChunk>;
  cancelled: boolean;
  unlisten: () => void;
}

/**
 * Checks a request before it is queued (also used by the worker proxy, which must throw synchronously).
 * `constraints`: whether the engine has the token byte table that constrained decoding needs.
 */
export function validateRequest(req: SubmitRequest, maxContext: number, vocab: number, constraints: boolean): void {
  if (req.constraint && !constraints) {
    throw new DsrError("DSR_CONSTRAINT_UNSUPPORTED", `constrained decoding (${req.constraint.kind}) needs a byte-level BPE tokenizer; this model's tokenizer is not one`, { hint: "serve the model with --engine vllm" });
  }
  if (req.constraint?.kind === "json_schema") {
    try {
      compileJsonSchema(req.constraint.schema); // (cheap; the engine compiles it again, cached, when it runs)
    } catch (e) {
      if (!(e instanceof SchemaError)) throw e;
      throw new DsrError("DSR_SCHEMA_UNSUPPORTED", e.message, { hint: "the embedded and torch engines enforce a JSON Schema subset (docs/serve.md); serve with --engine vllm for full JSON Schema" });
    }
  }
  const n = req.promptIds.length;
  if (n === 0) throw new DsrError("DSR_EMPTY_PROMPT", "request has an empty prompt", { hint: "send at least one token" });
  if (n >= maxContext) {
    throw new DsrError("DSR_CONTEXT_OVERFLOW", `prompt of ${n} tokens does not fit the engine context of ${maxContext} tokens (it needs room for at least one new token)`, {
      hint: "shorten the prompt, or open the engine with a larger maxContext (--max-context) if the model supports it",
      details: { promptTokens: n, maxContext },
    });
  }
  for (const id of req.promptIds) {
    if (!Number.isInteger(id) || id < 0 || id >= vocab) throw new DsrError("DSR_BAD_TOKEN", `prompt token id ${id} is outside the vocabulary (0..${vocab - 1})`, { hint: "tokenize with the model's own tokenizer" });
  }
}

export type EmbeddedStats = EngineStats & { kvBytesPerToken: number; kvCapacityBytes: number };

export class Scheduler implements TokenEngine {
  private waiting: Seq[] = [];
  private active: Seq[] = [];
  private closed = false;
  private wakeLoop?: () => void;
  private loop: Promise<void>;
  readonly counters: EngineCounters = { prefillTokens: 0, decodeTokens: 0, prefillMs: 0, decodeMs: 0, decodeSteps: 0 };

  /** Built on the first constrained request. */
  private json?: JsonVocabulary;

  /** `tokenBytes`: the model's token → bytes table (text/token-bytes.ts), for constrained decoding. */
  constructor(private readonly session: DecoderSession, private readonly opts: SchedulerOptions, private readonly tokenBytes?: TokenByteTable) {
    this.loop = this.run();
  }

  submit(req: SubmitRequest): AsyncIterable<TokenChunk> {
    if (this.closed) throw new DsrError("DSR_ENGINE_CLOSED", "the embedded engine is closed", { hint: "open a new engine" });
    validateRequest(req, this.opts.maxContext, this.session.vocab, !!this.tokenBytes);
    const n = req.promptIds.length;
    const vocab = this.session.vocab;
    if (req.constraint) this.json ??= new JsonVocabulary(this.tokenBytes!, vocab);
    const seq: Seq = {
      prompt: req.promptIds.slice(),
      slot: -1,
      len: 0,
      state: "prefill",
      next: -1,
      generated: 0,
      maxTokens: Math.max(0, Math.min(req.maxTokens, this.opts.maxContext - n)),
      stopIds: new Set(req.stopIds),
      sampler: new Sampler(req.sampling, req.promptIds, vocab, req.stopIds),
      json: req.constraint ? new JsonConstraint(this.json!, req.constraint) : undefined,
      channel: new Channel<TokenChunk>(() => this.cancel(seq)),
      cancelled: false,
      unlisten: () => {},
    };
    if (req.signal) {
      if (req.signal.aborted) seq.cancelled = true;
      const onAbort = () => this.cancel(seq);
      req.signal.addEventListener("abort", onAbort, { once: true });
      seq.unlisten = () => req.signal!.removeEventListener("abort", onAbort);
    }
    if (seq.maxTokens === 0 || seq.cancelled) {
      this.finish(seq, seq.cancelled ? "abort" : "length");
      return seq.channel;
    }
    this.waiting.push(seq);
    this.wake();
    return seq.channel;
  }

  /** Called after every scheduling step (the worker forwards stats to the main thread). */
  onStep?: () => void;

  stats(): EmbeddedStats {
    const live = this.active.filter((s) => s.state !== "done");
    return {
      running: live.length,
      waiting: this.waiting.length,
      kvUsedTokens: live.reduce((a, s) => a + s.len, 0),
      kvCapacityTokens: this.opts.maxBatch * this.opts.maxContext,
      maxContext: this.opts.maxContext,
      kvBytesPerToken: this.session.kvBytesPerToken,
      kvCapacityBytes: this.opts.maxBatch * this.opts.maxContext * this.session.kvBytesPerToken,
    };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.waiting, ...this.active]) this.finish(s, "abort");
    this.waiting = [];
    this.wake();
    await this.loop;
    await this.session.close();
  }

  private wake(): void {
    const w = this.wakeLoop;
    this.wakeLoop = undefined;
    w?.();
  }

  /** Cancellation: a waiting request leaves at once; a running one at the end of the current step. */
  private cancel(seq: Seq): void {
    if (seq.state === "done") return;
    seq.cancelled = true;
    const i = this.waiting.indexOf(seq);
    if (i >= 0) {
      this.waiting.splice(i, 1);
      this.finish(seq, "abort");
    }
    this.wake();
  }

  private finish(seq: Seq, reason: TokenChunk["finish"], extra: Partial<TokenChunk> = {}): void {
    if (seq.state === "done") return;
    seq.state = "done";
    seq.unlisten();
    seq.channel.push({ ids: [], ...extra, finish: reason });
    seq.channel.end();
  }

  /** Drops finished/cancelled sequences and re-packs slots (decoders in [0, d), the prefiller at d). */
  private compact(): void {
    for (const s of this.active) if (s.cancelled) this.finish(s, "abort");
    this.active = this.active.filter((s) => s.state !== "done");
    const dec = this.active.filter((s) => s.state === "decode");
    const pre = this.active.find((s) => s.state === "prefill");
    const nd = dec.length;
    const used = new Set(dec.filter((s) => s.slot < nd).map((s) => s.slot));
    const holes: number[] = [];
    for (let i = 0; i < nd; i++) if (!used.has(i)) holes.push(i);
    for (const s of dec.filter((x) => x.slot >= nd)) {
      const to = holes.shift()!;
      this.session.moveSlot(s.slot, to, s.len);
      s.slot = to;
    }
    if (pre && pre.slot !== nd) {
      this.session.moveSlot(pre.slot, nd, pre.len);
      pre.slot = nd;
    }
  }

  private admit(): void {
    if (this.active.some((s) => s.state === "prefill")) return;
    const next = this.waiting.shift();
    if (!next || this.active.length >= this.opts.maxBatch) {
      if (next) this.waiting.unshift(next);
      return;
    }
    next.slot = this.active.length;
    this.active.push(next);
  }

  /**
   * Samples from one row of logits and emits the token (or the stop / length finish). A constrained
   * sequence ends with "stop" on the token that completes its JSON value (nothing else may follow, so
   * EOS would be forced anyway; this also ends it under ignore_eos).
   */
  private emit(seq: Seq, logits: Float32Array): void {
    if (seq.cancelled) return;
    const json = seq.json;
    let sampled: ReturnType<Sampler["sample"]>;
    try {
      sampled = seq.sampler.sample(logits, json?.active ? json : undefined);
    } catch (e) {
      this.fail([seq], e); // a constraint dead end fails this sequence, not the batch
      return;
    }
    const { id, logprob } = sampled;
    if (seq.stopIds.has(id)) {
      this.finish(seq, "stop", { stopId: id });
      return;
    }
    seq.sampler.accept(id);
    json?.accept(id);
    seq.generated++;
    seq.next = id;
    const chunk: TokenChunk = { ids: [id], ...(logprob ? { logprobs: [logprob] } : {}) };
    const end = json?.done ? "stop" : seq.generated >= seq.maxTokens ? "length" : undefined;
    if (end) {
      chunk.finish = end;
      seq.state = "done";
      seq.unlisten();
      seq.channel.push(chunk);
      seq.channel.end();
      return;
    }
    seq.channel.push(chunk);
  }

  private fail(seqs: Seq[], e: unknown): void {
    const err = e instanceof DsrError ? e : new DsrError("DSR_ENGINE_FAILED", `onnxruntime step failed: ${(e as Error).message?.split("\n")[0]}`, { hint: "report this with --verbose output", cause: e });
    for (const s of seqs) {
      if (s.state === "done") continue;
      s.state = "done";
      s.unlisten();
      s.channel.fail(err);
    }
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      this.compact();
      this.admit();
      if (this.active.length === 0) {
        if (this.waiting.length === 0) await new Promise<void>((r) => (this.wakeLoop = r));
        continue;
      }
      const pre = this.active.find((s) => s.state === "prefill");
      const decoding = this.active.filter((s) => s.state === "decode").sort((a, b) => a.slot - b.slot);
      const chunk = decoding.length ? this.opts.prefillChunk : this.opts.prefillChunkIdle;
      const lens = new Array<number>(this.active.length).fill(0);
      let longest = 0;
      for (const s of this.active) {
        lens[s.slot] = s.len;
        longest = Math.max(longest, s === pre ? Math.min(s.prompt.length, s.len + chunk) : s.len + 1);
      }
      this.session.fit(longest, lens);
      if (pre) {
        const toks = pre.prompt.slice(pre.len, pre.len + chunk);
        const t0 = performance.now();
        try {
          const logits = await this.session.run(pre.slot, [toks], [pre.len]);
          pre.len += toks.length;
          this.counters.prefillTokens += toks.length;
          if (pre.len === pre.prompt.length) {
            pre.state = "decode";
            this.emit(pre, logits);
          }
        } catch (e) {
          this.fail([pre], e);
        }
        this.counters.prefillMs += performance.now() - t0;
      }
      const dec = decoding.filter((s) => s.state === "decode" && !s.cancelled);
      if (dec.length === 0) {
        this.onStep?.();
        continue;
      }
      if (dec.some((s, i) => s.slot !== i)) continue; // a cancellation left a hole: re-pack first
      const t0 = performance.now();
      try {
        const logits = await this.session.run(0, dec.map((s) => [s.next]), dec.map((s) => s.len));
        const V = this.session.vocab;
        dec.forEach((s, i) => {
          s.len += 1;
          this.emit(s, logits.subarray(i * V, (i + 1) * V));
        });
        this.counters.decodeTokens += dec.length;
        this.counters.decodeSteps++;
      } catch (e) {
        this.fail(dec, e);
      }
      this.counters.decodeMs += performance.now() - t0;
      this.onStep?.();
    }
  }
}
