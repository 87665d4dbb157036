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
  /** vLLM's: apply the tokenizer's post-processor (BOS) to the prompt; default true for completions, false for chat (the template has it). */
  add_special_tokens: z.boolean().nullish(),
  /** OpenAI's: token id (as a string) → bias added to its logit, -100 to 100. */
  logit_bias: z.record(z.string(), z.number().min(-100).max(100)).refine((o) => Object.keys(o).length <= 1024, "at most 1024 entries").nullish(),
  /** vLLM's: no stop (EOS, stop_token_ids, stop strings) before this many tokens. */
  min_tokens: nonNeg.nullish(),
  /** vLLM's: token ids that end a choice like EOS (finish "stop"). */
  stop_token_ids: z.array(nonNeg).max(64).nullish(),
};

export const chatRequest = z.looseObject({
  ...common,
  messages: z.array(chatMessage).min(1),
  max_completion_tokens: nonNeg.min(1).nullish(),
  /** vLLM's: extra variables for the chat template (token engines render it; upstreams get the body as sent). */
  chat_template_kwargs: z.record(z.string(), z.unknown()).nullish(),
  logprobs: z.boolean().nullish(),
  top_logprobs: z.number().int().min(0).max(20).nullish(),
  // OpenAI's shapes (vLLM's too): json_schema needs `json_schema.name`; `schema` is optional.
  response_format: z
    .discriminatedUnion("type", [
      z.looseObject({ type: z.literal("text") }),
      z.looseObject({ type: z.literal("json_object") }),
      z.looseObject({
        type: z.literal("json_schema"),
        json_schema: z.looseObject({
          name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, "must be 1 to 64 characters from a-z, A-Z, 0-9, _ and -"),
          description: z.string().nullish(),
          schema: z.record(z.string(), z.unknown()).nullish(),
          strict: z.boolean().nullish(),
        }),
      }),
    ])
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
  if (fastValid(endpoint, body as Record<string, unknown>)) return body as ChatRequest | CompletionRequest;
  const schema = endpoint === "chat" ? chatRequest : completionRequest;
  const r = schema.safeParse(body);
  if (r.success) {
    if (endpoint === "completions" && (r.data as CompletionRequest).suffix) {
      throw new HttpError(400, "`suffix` is not supported", { param: "suffix", code: "unsupported_parameter" });
    }
    return r.data;
  }
  throw invalid(r.error);
}

/** A zod failure as one OpenAI 400 naming the first field at fault. */
export function invalid(error: z.ZodError): HttpError {
  const issue = error.issues[0];
  const param = issue.path.map(String).join(".") || null;
  return new HttpError(400, `invalid request: ${param ? `\`${param}\`: ` : ""}${issue.message}`, {
    param,
    code: "invalid_parameter",
  });
}

/*
 * A fast accept for the common request shapes, checked before zod: every field it knows is checked
 * as strictly as (or more strictly than) the schemas above, and anything it is unsure about — a
 * field that fails, a rarer field (response_format, content parts, token-id prompts) — goes to zod,
 * which then decides and words the error. So results and error messages are zod's; only the cost of
 * an ordinary valid body drops (zod's safeParse was ~2% of the gateway's CPU per proxied stream).
 * The schemas define no transforms or defaults, so a body that passes is already what zod returns.
 */
type Check = (v: unknown) => boolean;
const nullish = (v: unknown) => v === null || v === undefined;
const bool: Check = (v) => nullish(v) || typeof v === "boolean";
const str: Check = (v) => nullish(v) || typeof v === "string";
const num = (lo: number, hi: number, o: { int?: boolean; gtLo?: boolean } = {}): Check => (v) =>
  nullish(v) || (typeof v === "number" && (o.int ? Number.isSafeInteger(v) : Number.isFinite(v)) && (o.gtLo ? v > lo : v >= lo) && v <= hi);
const plain = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const ROLES = new Set(["system", "developer", "user", "assistant", "tool"]);
const message: Check = (m) =>
  plain(m) && typeof m.role === "string" && ROLES.has(m.role) && str(m.content) && (m.name === undefined || typeof m.name === "string") && str(m.reasoning_content) && str(m.reasoning);
const COMMON: Record<string, Check> = {
  model: (v) => v === undefined || (typeof v === "string" && v.length > 0),
  stream: bool,
  stream_options: (v) => nullish(v) || (plain(v) && bool(v.include_usage) && bool(v.continuous_usage_stats)),
  n: num(1, 16, { int: true }),
  stop: (v) => str(v) || (Array.isArray(v) && v.length <= 16 && v.every((x) => typeof x === "string")),
  max_tokens: num(1, Infinity, { int: true }),
  temperature: num(0, 2),
  top_p: num(0, 1, { gtLo: true }),
  top_k: num(-1, Infinity, { int: true }),
  min_p: num(0, 1),
  seed: num(-Infinity, Infinity, { int: true }),
  presence_penalty: num(-2, 2),
  frequency_penalty: num(-2, 2),
  repetition_penalty: num(0, 10, { gtLo: true }),
  ignore_eos: bool,
  user: str,
  add_special_tokens: bool,
  min_tokens: num(0, Infinity, { int: true }),
  stop_token_ids: (v) => nullish(v) || (Array.isArray(v) && v.length <= 64 && v.every((x) => Number.isSafeInteger(x) && (x as number) >= 0)),
};
const FAST: Record<Endpoint, { known: Set<string>; checks: Record<string, Check>; required: string }> = {
  chat: {
    known: new Set(Object.keys(chatRequest.shape)),
    checks: { ...COMMON, messages: (v) => Array.isArray(v) && v.length > 0 && v.every(message), max_completion_tokens: COMMON.max_tokens, logprobs: bool, top_logprobs: num(0, 20, { int: true }) },
    required: "messages",
  },
  completions: {
    known: new Set(Object.keys(completionRequest.shape)),
    checks: { ...COMMON, prompt: (v) => typeof v === "string" || (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === "string")), echo: bool, logprobs: num(0, 5, { int: true }), suffix: nullish },
    required: "prompt",
  },
};

function fastValid(endpoint: Endpoint, body: Record<string, unknown>): boolean {
  const f = FAST[endpoint];
  if (body[f.required] === undefined) return false;
  for (const k in body) {
    if (!Object.hasOwn(body, k) || !f.known.has(k)) continue; // unknown fields pass through, as in the loose schemas
    const check = f.checks[k];
    if (!check || !check(body[k])) return false;
  }
  return true;
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
