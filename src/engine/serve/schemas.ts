/**
 * OpenAI request bodies for /v1/chat/completions and /v1/completions (zod). Unknown fields pass
 * through (vLLM accepts engine extras such as `top_k`, `ignore_eos`, `chat_template_kwargs`), so
 * proxied upstreams still see them. `parseRequest` turns zod issues into one OpenAI 400 naming the field.
 */
import { z } from "zod";
import { HttpError } from "./http-error.js";

const stop = z.union([z.string(), z.array(z.string()).max(16)]).nullish();
const nonNeg = z.number().int().nonnegative();

const textPart = z.looseObject({ type: z.literal("text"), text: z.string() });
const contentParts = z.array(z.union([textPart, z.looseObject({ type: z.string() })]));

export const chatMessage = z.looseObject({
  role: z.enum(["system", "developer", "user", "assistant", "tool"]),
  content: z.union([z.string(), contentParts]).nullish(),
  name: z.string().optional(),
  reasoning_content: z.string().nullish(),
  reasoning: z.string().nullish(),
});
export type ChatMessage = z.infer<typeof chatMessage>;

const common = {
  model: z.string().min(1).optional(),
  stream: z.boolean().nullish(),
  stream_options: z
    .looseObject({ include_usage: z.boolean().nullish(), continuous_usage_stats: z.boolean().nullish() })
    .nullish(),
  n: z.number().int().min(1).max(16).nullish(),
  stop,
  max_tokens: nonNeg.min(1).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().gt(0).max(1).nullish(),
  top_k: z.number().int().min(-1).nullish(),
  min_p: z.number().min(0).max(1).nullish(),
  seed: z.number().int().nullish(),
  presence_penalty: z.number().min(-2).max(2).nullish(),
  frequency_penalty: z.number().min(-2).max(2).nullish(),
  repetition_penalty: z.number().gt(0).max(10).nullish(),
  ignore_eos: z.boolean().nullish(),
  user: z.string().nullish(),
};

export const chatRequest = z.looseObject({
  ...common,
  messages: z.array(chatMessage).min(1),
  max_completion_tokens: nonNeg.min(1).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  response_format: z
    .looseObject({ type: z.enum(["text", "json_object", "json_schema"]) })
    .nullish(),
});
export type ChatRequest = z.infer<typeof chatRequest>;

export const completionRequest = z.looseObject({
  ...common,
  prompt: z.union([z.string(), z.array(z.string()).min(1), z.array(nonNeg).min(1), z.array(z.array(nonNeg).min(1)).min(1)]),
  echo: z.boolean().nullish(),
  logprobs: z.number().int().min(0).max(5).nullish(),
  suffix: z.string().nullish(),
});
export type CompletionRequest = z.infer<typeof completionRequest>;

export type Endpoint = "chat" | "completions";

export function parseRequest(endpoint: "chat", body: unknown): ChatRequest;
export function parseRequest(endpoint: "completions", body: unknown): CompletionRequest;
export function parseRequest(endpoint: Endpoint, body: unknown): ChatRequest | CompletionRequest;
export function parseRequest(endpoint: Endpoint, body: unknown): ChatRequest | CompletionRequest {
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new HttpError(400, "request body must be a JSON object", { code: "invalid_body" });
  }
  const schema = endpoint === "chat" ? chatRequest : completionRequest;
  const r = schema.safeParse(body);
  if (r.success) {
    if (endpoint === "completions" && (r.data as CompletionRequest).suffix) {
      throw new HttpError(400, "`suffix` is not supported", { param: "suffix", code: "unsupported_parameter" });
    }
    return r.data;
  }
  const issue = r.error.issues[0];
  const param = issue.path.map(String).join(".") || null;
  throw new HttpError(400, `invalid request: ${param ? `\`${param}\`: ` : ""}${issue.message}`, {
    param,
    code: "invalid_parameter",
  });
}

/** The generation budget the client asked for (chat prefers max_completion_tokens, as OpenAI does). */
export function requestedMaxTokens(req: ChatRequest | CompletionRequest): number | undefined {
  const m = (req as ChatRequest).max_completion_tokens ?? req.max_tokens;
  return m ?? undefined;
}

export function stopList(stop: string | string[] | null | undefined): string[] {
  if (stop == null) return [];
  return (Array.isArray(stop) ? stop : [stop]).filter((s) => s.length > 0);
}

/** Text of a message's content (string or text parts; other part types are rejected by the caller). */
export function messageText(m: ChatMessage): string {
  const c = m.content;
  if (c == null) return "";
  if (typeof c === "string") return c;
  return c.map((p) => {
    if (p.type !== "text") {
      throw new HttpError(400, `content part type "${p.type}" is not supported by this model`, {
        param: "messages.content",
        code: "unsupported_content",
      });
    }
    return (p as { text: string }).text;
  }).join("");
}
