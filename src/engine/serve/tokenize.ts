/**
 * POST /tokenize and /detokenize in vLLM's shapes (facts §1.1): a prompt or chat messages in, the
 * ids the server would feed the model out (`count`, `max_model_len`, `tokens`, `token_strs`); ids
 * in, text out (`prompt`). `vllm bench serve` and other clients count prompt tokens this way, so the
 * ids are exactly the generation endpoints' (same template, same R1 advice, same special tokens).
 * Token engines answer here; proxies forward to an instance (proxy.ts).
 */
import { z } from "zod";
import type { TextModel } from "../text/index.js";
import { HttpError } from "./http-error.js";
import { chatPromptIds, type PromptOptions } from "./prompt.js";
import { chatMessage, invalid } from "./schemas.js";

export type TokensOp = "tokenize" | "detokenize";

const model = z.string().min(1).optional();
const common = { model, add_special_tokens: z.boolean().nullish(), return_token_strs: z.boolean().nullish() };
const completionForm = z.looseObject({ ...common, prompt: z.string() });
const chatForm = z.looseObject({
  ...common,
  messages: z.array(chatMessage).min(1),
  add_generation_prompt: z.boolean().nullish(),
  continue_final_message: z.boolean().nullish(),
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
});
export const detokenizeRequest = z.looseObject({ model, tokens: z.array(z.number().int().nonnegative()) });

type CompletionForm = z.infer<typeof completionForm>;
type ChatForm = z.infer<typeof chatForm>;
export type TokenizeRequest = CompletionForm | ChatForm;
export type DetokenizeRequest = z.infer<typeof detokenizeRequest>;

/** The validated body of either endpoint; 400 naming the field otherwise. */
export function parseTokensRequest(op: TokensOp, body: unknown): TokenizeRequest | DetokenizeRequest {
  if (body === null || typeof body !== "object" || Array.isArray(body)) throw new HttpError(400, "request body must be a JSON object", { code: "invalid_body" });
  if (op === "tokenize" && !("prompt" in body) && !("messages" in body)) {
    throw new HttpError(400, "invalid request: give `prompt` (text) or `messages` (chat)", { param: "prompt", code: "invalid_parameter" });
  }
  const schema = op === "detokenize" ? detokenizeRequest : "messages" in body ? chatForm : completionForm;
  const r = schema.safeParse(body);
  if (!r.success) throw invalid(r.error);
  return r.data;
}

/** What a token engine's gateway answers, computed from the model's own tokenizer and template. */
export function tokensLocally(text: TextModel, op: TokensOp, req: TokenizeRequest | DetokenizeRequest, o: PromptOptions & { maxModelLen: number }): unknown {
  if (op === "detokenize") {
    const ids = (req as DetokenizeRequest).tokens;
    const spelt = text.tokenStrings(ids);
    const bad = spelt.findIndex((t) => t === undefined);
    if (bad >= 0) throw new HttpError(400, `token id ${ids[bad]} (tokens[${bad}]) is not in the model's vocabulary`, { param: "tokens", code: "invalid_parameter" });
    return { prompt: text.decode(ids, { keepSpecialTokens: true }) };
  }
  const t = req as TokenizeRequest;
  let ids: number[];
  if (Array.isArray(t.messages)) {
    const chat = t as ChatForm;
    if (chat.continue_final_message) throw new HttpError(400, "`continue_final_message` is not supported", { param: "continue_final_message", code: "unsupported_parameter" });
    ids = chatPromptIds(text, chat, o, chat.add_generation_prompt ?? true);
  } else {
    ids = text.encode((t as CompletionForm).prompt, { addSpecialTokens: t.add_special_tokens ?? true });
  }
  return { count: ids.length, max_model_len: o.maxModelLen, tokens: ids, token_strs: t.return_token_strs ? text.tokenStrings(ids) : null };
}
