/**
 * Request → prompt token ids for token engines, where the gateway owns the text side: chat template,
 * the seed guides' R1 advice (no system turn: fold it into the first user message), sampling defaults
 * from generation_config.json (R1: temperature 0.6), and the context-length check (400 with the
 * numbers, worded like vLLM's so clients that parse it keep working).
 */
import type { SamplingParams } from "../runtime/types.js";
import type { ChatMessage as TemplateMessage, TextModel } from "../text/index.js";
import { HttpError } from "./http-error.js";
import { messageText, requestedMaxTokens, type ChatRequest, type CompletionRequest } from "./schemas.js";

export interface PromptOptions {
  /** Fold system prompts into the first user turn and default temperature to generation_config's (0.6 for R1). */
  r1Advice: boolean;
}

/**
 * A chat request's prompt ids. `add_special_tokens` defaults to false, as in vLLM: the template
 * writes the BOS itself. `chat_template_kwargs` become template variables (Qwen3's `enable_thinking`…). /tokenize may leave the generation prompt out (`addGenerationPrompt`).
 */
export function chatPromptIds(text: TextModel, req: Pick<ChatRequest, "messages" | "add_special_tokens" | "chat_template_kwargs">, o: PromptOptions, addGenerationPrompt = true): number[] {
  let msgs: TemplateMessage[] = req.messages.map((m) => ({ role: m.role === "developer" ? "system" : m.role, content: messageText(m) }));
  if (o.r1Advice) msgs = foldSystem(msgs);
  const kwargs = req.chat_template_kwargs ?? undefined;
  return text.encode(text.applyChatTemplate(msgs, { addGenerationPrompt, kwargs }), { addSpecialTokens: req.add_special_tokens ?? false });
}

/** DeepSeek's R1 usage advice: "avoid adding a system prompt; all instructions should be contained within the user prompt". */
export function foldSystem(msgs: TemplateMessage[]): TemplateMessage[] {
  const system = msgs.filter((m) => m.role === "system").map((m) => m.content).filter((c) => c.length > 0);
  const rest = msgs.filter((m) => m.role !== "system");
  if (system.length === 0) return rest;
  const i = rest.findIndex((m) => m.role === "user");
  const prefix = system.join("\n\n");
  if (i < 0) return [{ role: "user", content: prefix }, ...rest];
  return rest.map((m, k) => (k === i ? { ...m, content: `${prefix}\n\n${m.content}` } : m));
}

/**
 * Completions prompts: text, token ids, or a batch of either (each becomes its own choice). Text is
 * encoded with the tokenizer's special tokens unless `add_special_tokens` is false, as vLLM does.
 */
export function completionPrompts(text: TextModel, req: CompletionRequest): { ids: number[]; text: string }[] {
  const p = req.prompt;
  const opts = { addSpecialTokens: req.add_special_tokens ?? true };
  if (typeof p === "string") return [{ ids: text.encode(p, opts), text: p }];
  if (p.length > 0 && typeof p[0] === "number") return [{ ids: p as number[], text: text.decode(p as number[]) }];
  if (p.length > 0 && Array.isArray(p[0])) return (p as number[][]).map((ids) => ({ ids, text: text.decode(ids) }));
  return (p as string[]).map((s) => ({ ids: text.encode(s, opts), text: s }));
}

/** The generation budget, checked against the context window. */
export function tokenBudget(req: ChatRequest | CompletionRequest, promptLen: number, contextLength: number): number {
  const asked = requestedMaxTokens(req);
  if (req.min_tokens && asked !== undefined && req.min_tokens > asked) {
    throw new HttpError(400, `min_tokens (${req.min_tokens}) is more than the ${asked} tokens asked for`, { param: "min_tokens", code: "invalid_parameter" });
  }
  const field = (req as ChatRequest).max_completion_tokens != null ? "max_completion_tokens" : "max_tokens";
  if (asked !== undefined && promptLen + asked > contextLength) {
    throw new HttpError(
      400,
      `This model's maximum context length is ${contextLength} tokens. However, you requested ${promptLen + asked} tokens (${promptLen} in the messages, ${asked} in the completion). Please reduce the length of the messages or completion.`,
      { param: field, code: "context_length_exceeded" },
    );
  }
  if (promptLen >= contextLength) {
    throw new HttpError(
      400,
      `This model's maximum context length is ${contextLength} tokens. However, your messages resulted in ${promptLen} tokens. Please reduce the length of the messages.`,
      { param: "messages", code: "context_length_exceeded" },
    );
  }
  return asked ?? contextLength - promptLen;
}

export function samplingFor(text: TextModel, req: ChatRequest | CompletionRequest, o: PromptOptions, logprobs: number | undefined, index: number): SamplingParams {
  const d = text.generationDefaults;
  const temperature = req.temperature ?? (o.r1Advice ? d.temperature ?? 0.6 : 1);
  return {
    temperature,
    topP: req.top_p ?? (o.r1Advice ? d.topP ?? 1 : 1),
    topK: req.top_k != null && req.top_k > 0 ? req.top_k : o.r1Advice ? d.topK ?? 0 : 0,
    minP: req.min_p ?? 0,
    // n > 1 with a seed: distinct but reproducible streams
    seed: req.seed != null ? req.seed + index : undefined,
    presencePenalty: req.presence_penalty ?? 0,
    frequencyPenalty: req.frequency_penalty ?? 0,
    repetitionPenalty: req.repetition_penalty ?? (o.r1Advice ? d.repetitionPenalty ?? 1 : 1),
    logitBias: logitBias(text, req.logit_bias),
    minTokens: req.min_tokens ?? undefined,
    logprobs,
  };
}

/** OpenAI's logit_bias (token id → bias in [-100, 100]) as [id, bias] pairs; a 400 naming a key that is not a token of the model. */
function logitBias(text: TextModel, bias: Record<string, number> | null | undefined): [number, number][] | undefined {
  if (!bias) return undefined;
  const pairs = Object.entries(bias).map(([k, v]): [number, number] => {
    const id = /^\d+$/.test(k) ? Number(k) : NaN;
    if (!Number.isSafeInteger(id) || text.tokenStrings([id])[0] === undefined) throw new HttpError(400, `logit_bias: "${k.slice(0, 40)}" is not a token id of the model`, { param: "logit_bias", code: "invalid_parameter" });
    return [id, v];
  });
  return pairs.length ? pairs : undefined;
}
