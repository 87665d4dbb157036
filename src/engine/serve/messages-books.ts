/**
 * The generation books of an Anthropic Messages API answer (`POST /v1/messages`, which vLLM serves
 * beside the OpenAI routes). Streamed: every `content_block_delta` is a token event (text, thinking
 * and tool-input deltas alike; not the thinking block's closing signature), `message_start` carries
 * the input tokens, and `message_delta` the stop reason and the output tokens so far; an `error`
 * event ends it as an error. Not streamed: the message's `stop_reason` and `usage`.
 */
import { AnswerBooks, count } from "./answer-books.js";

interface Usage {
  input_tokens?: number;
  output_tokens?: number;
}

/** Anthropic's stop reasons as the finish reasons of the gateway's metrics (OpenAI's names). */
function finishOf(stop: unknown): string | undefined {
  switch (stop) {
    case "end_turn":
    case "stop_sequence":
    case "pause_turn":
      return "stop";
    case "max_tokens":
    case "model_context_window_exceeded":
      return "length";
    case "tool_use":
      return "tool_calls";
    case "refusal":
      return "content_filter";
    default:
      return typeof stop === "string" ? stop : undefined;
  }
}

export class MessagesBooks extends AnswerBooks {
  protected event(type: string, ev: string, now: number): void {
    switch (type) {
      case "content_block_delta":
        if (!ev.includes('"signature_delta"')) this.delta(now);
        return;
      case "message_start": {
        const message = AnswerBooks.data(ev)?.message as { usage?: Usage } | undefined;
        this.record.promptTokens = count(message?.usage?.input_tokens) ?? this.record.promptTokens;
        return;
      }
      case "message_delta": {
        const d = AnswerBooks.data(ev) as { delta?: { stop_reason?: unknown }; usage?: Usage } | undefined;
        this.record.finishReason = finishOf(d?.delta?.stop_reason) ?? this.record.finishReason;
        // the usage here is cumulative; newer servers repeat the input tokens in it too
        this.record.promptTokens = count(d?.usage?.input_tokens) ?? this.record.promptTokens;
        this.record.completionTokens = count(d?.usage?.output_tokens) ?? this.deltas;
        return;
      }
      case "error":
        this.record.finishReason = "error";
        return;
    }
  }

  protected settle(body: unknown): void {
    const m = body as { type?: unknown; stop_reason?: unknown; usage?: Usage | null };
    if (m.type !== "message") return;
    this.record.finishReason = finishOf(m.stop_reason) ?? "stop";
    this.record.promptTokens = count(m.usage?.input_tokens);
    this.record.completionTokens = count(m.usage?.output_tokens);
  }
}
