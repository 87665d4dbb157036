/**
 * The generation books of an OpenAI Responses API answer (`POST /v1/responses`): text deltas are
 * tokens (vLLM serves this API for reasoning models too; its reasoning deltas count, as reasoning does
 * in chat streams), and the terminal event's response (or the whole JSON answer) gives the usage's
 * input and output tokens and, from its status, the finish reason.
 */
import { AnswerBooks, count } from "./answer-books.js";

/** Streamed events that carry generated text: each counts as one token event (TTFT, inter-token gaps). */
const TEXT_DELTA = /^response\.(?:output_text|reasoning_text|reasoning_summary_text|refusal)\.delta$/;
/** The events that end a response, with it (its status and usage) in `response`. */
const TERMINAL = new Set(["response.completed", "response.incomplete", "response.failed"]);

interface ResponseObject {
  status?: string;
  incomplete_details?: { reason?: string } | null;
  usage?: { input_tokens?: number; output_tokens?: number } | null;
}

/** The finish reason vLLM's metrics would give a response of this status (length for a token budget that ran out). */
function finishOf(r: ResponseObject): string {
  if (r.status === "incomplete") {
    const why = r.incomplete_details?.reason;
    return why === "max_output_tokens" ? "length" : why ?? "length";
  }
  return r.status === "failed" ? "error" : "stop";
}

export class ResponsesBooks extends AnswerBooks {
  protected event(type: string, ev: string, now: number): void {
    if (TEXT_DELTA.test(type)) return this.delta(now);
    if (!TERMINAL.has(type)) return;
    const response = AnswerBooks.data(ev)?.response;
    if (response !== null && typeof response === "object") this.settle(response);
  }

  protected settle(body: unknown): void {
    const r = body as ResponseObject;
    const usage = r.usage ?? undefined;
    this.record.finishReason = finishOf(r);
    this.record.promptTokens = count(usage?.input_tokens);
    this.record.completionTokens = count(usage?.output_tokens) ?? (this.stream ? this.deltas : undefined);
  }
}
