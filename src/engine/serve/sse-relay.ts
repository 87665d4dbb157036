/**
 * Relays an upstream SSE byte stream to the client event by event. Events are framed on the blank
 * line (`\n\n` or `\r\n\r\n`) and forwarded as the same bytes unless they need a change: JSON is
 * parsed only for events that mention reasoning (field renaming), usage (token counts, and dropping
 * the usage chunk the gateway itself asked for) or an error. Everything else is a byte slice, which
 * keeps the proxy's added latency in the microseconds.
 */
import type { ReasoningField } from "./reasoning.js";

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
  onEvent?: (now: number) => void;
}

const NN = Buffer.from("\n\n");
const RN = Buffer.from("\r\n\r\n");
const DONE = Buffer.from("data: [DONE]");
const REASONING = Buffer.from('"reasoning');
const USAGE = Buffer.from('"usage"');
const ERROR = Buffer.from('"error"');
const FINISH = Buffer.from('"finish_reason":"');
const ROLE = Buffer.from('"role"');
const COMMENT = Buffer.from("\n\n:");

function countOf(buf: Buffer, needle: Buffer, end: number): number {
  let n = 0;
  for (let i = buf.indexOf(needle); i >= 0 && i < end; i = buf.indexOf(needle, i + needle.length)) n++;
  return n;
}
const EMPTY_CONTENT = Buffer.from('"content":""');

export class SseRelay {
  readonly stats: RelayStats = { events: 0 };
  private pending: Buffer | undefined;

  constructor(private readonly o: RelayOptions) {}

  /** Returns the bytes to forward now (complete events), or undefined when there are none yet. */
  push(chunk: Buffer): Buffer | undefined {
    const buf = this.pending ? Buffer.concat([this.pending, chunk]) : chunk;
    this.pending = undefined;
    if (buf.indexOf(USAGE) < 0 && buf.indexOf(ERROR) < 0 && buf.indexOf(0x0d) < 0 && (this.o.fields.length === 0 || buf.indexOf(REASONING) < 0)) {
      return this.fast(buf);
    }
    const out: Buffer[] = [];
    let start = 0; // start of the current run of unchanged bytes
    let pos = 0;
    for (;;) {
      let end = buf.indexOf(NN, pos);
      let sepLen = 2;
      const rn = buf.indexOf(RN, pos);
      if (rn >= 0 && (end < 0 || rn < end)) {
        end = rn;
        sepLen = 4;
      }
      if (end < 0) break;
      const ev = buf.subarray(pos, end);
      const replacement = this.event(ev);
      if (replacement !== undefined) {
        if (pos > start) out.push(buf.subarray(start, pos));
        if (replacement.length > 0) out.push(replacement);
        start = end + sepLen;
      }
      pos = end + sepLen;
    }
    if (pos < buf.length) this.pending = Buffer.from(buf.subarray(pos)); // copy: chunk buffers get reused
    if (pos > start) out.push(buf.subarray(start, pos));
    if (out.length === 0) return undefined;
    return out.length === 1 ? out[0] : Buffer.concat(out);
  }

  /**
   * The common case — no event in this chunk needs a change: forward every complete event as the
   * same bytes, count the token-bearing ones, and time the chunk once, without framing each event.
   */
  private fast(buf: Buffer): Buffer | undefined {
    const last = buf.lastIndexOf(NN);
    if (last < 0) {
      this.pending = Buffer.from(buf);
      return undefined;
    }
    const end = last + 2;
    let tokens = 0;
    // JSON escapes newlines, so each blank line ends exactly one event
    for (let i = buf.indexOf(NN); i >= 0 && i < end; i = buf.indexOf(NN, i + 2)) tokens++;
    const done = buf.indexOf(DONE);
    if (done >= 0 && done < end) tokens--;
    // `:` comment events (keep-alives) that are complete before `end` carry no token
    if (buf[0] === 0x3a || buf.indexOf(COMMENT) >= 0) tokens = Math.max(0, tokens - countOf(buf, COMMENT, end - 2) - (buf[0] === 0x3a ? 1 : 0));
    // vLLM's role-only first chunk carries no token: counting it would under-report TTFT (facts §1.3)
    if (tokens > 0 && this.stats.events === 0 && buf.indexOf(ROLE) >= 0 && buf.indexOf(EMPTY_CONTENT) >= 0) tokens--;
    if (tokens > 0) {
      const now = performance.now();
      this.stats.events += tokens - 1;
      this.countToken(now);
      const f = buf.lastIndexOf(FINISH, end);
      if (f >= 0) {
        const s = f + FINISH.length;
        this.stats.finishReason = buf.toString("latin1", s, buf.indexOf(0x22, s));
      }
    }
    if (end < buf.length) this.pending = Buffer.from(buf.subarray(end)); // copy: chunk buffers get reused
    return end === buf.length ? buf : buf.subarray(0, end);
  }

  /** Bytes left over when the upstream ended mid-event (forwarded as they are). */
  flush(): Buffer | undefined {
    const p = this.pending;
    this.pending = undefined;
    return p;
  }

  /** Inspects one event; returns replacement bytes (with separator; empty = drop) or undefined = forward as is. */
  private event(ev: Buffer): Buffer | undefined {
    if (ev.length === 0 || ev[0] === 0x3a /* ':' comment */ || ev.indexOf(DONE) === 0) return undefined;
    const now = performance.now();
    const hasUsage = ev.indexOf(USAGE) >= 0;
    const hasReasoning = this.o.fields.length > 0 && ev.indexOf(REASONING) >= 0;
    const hasError = ev.indexOf(ERROR) >= 0;
    if (!hasUsage && !hasReasoning && !hasError) {
      // vLLM's role-only first chunk carries no token: counting it would under-report TTFT (facts §1.3)
      const roleOnly = ev.indexOf(ROLE) >= 0 && ev.indexOf(EMPTY_CONTENT) >= 0;
      if (!roleOnly) this.countToken(now);
      const f = ev.indexOf(FINISH);
      if (f >= 0) {
        const s = f + FINISH.length;
        this.stats.finishReason = ev.toString("latin1", s, ev.indexOf(0x22, s));
      }
      return undefined;
    }
    const text = ev.toString("utf8");
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
    if (hasUsage && obj.usage) {
      const u = obj.usage as { prompt_tokens?: number; completion_tokens?: number };
      this.stats.promptTokens = u.prompt_tokens;
      this.stats.completionTokens = u.completion_tokens;
    }
    if (choices.length === 0) {
      return hasUsage && this.o.dropUsageChunk ? Buffer.alloc(0) : undefined;
    }
    this.countToken(now);
    for (const c of choices) if (typeof c.finish_reason === "string") this.stats.finishReason = c.finish_reason;
    if (!hasReasoning && !(hasUsage && this.o.dropUsageChunk)) return undefined;
    if (hasUsage && this.o.dropUsageChunk) delete obj.usage; // continuous usage the client did not ask for
    normaliseReasoning(choices, this.o.fields);
    return Buffer.from(`data: ${JSON.stringify(obj)}\n\n`);
  }

  private countToken(now: number): void {
    this.stats.events++;
    this.stats.firstEventAt ??= now;
    this.stats.lastEventAt = now;
    this.o.onEvent?.(now);
  }
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
