/**
 * OpenAI-shaped HTTP errors: `{"error": {"message", "type", "param", "code"}}` with the right status.
 * We follow OpenAI's spelling (type "invalid_request_error", string codes) rather than vLLM's
 * (type "BadRequestError", integer code): the official SDKs read `error.message` and the status, and
 * both shapes are accepted by clients that know vLLM (facts §1.6). Upstream errors in either vLLM
 * shape are normalised into this one by `normaliseErrorBody`.
 */
export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "rate_limit_error"
  | "server_error"
  | "timeout_error"
  | "service_unavailable";

export class HttpError extends Error {
  readonly status: number;
  readonly type: ErrorType;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(
    status: number,
    message: string,
    opts: { type?: ErrorType; param?: string | null; code?: string | null; headers?: Record<string, string> } = {},
  ) {
    // no stack trace: an HttpError is an answer, not a fault to debug, and capturing one walks (and
    // deoptimises) every frame — under overload the 429s cost more than the requests they shed
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    super(message);
    Error.stackTraceLimit = limit;
    this.status = status;
    this.type = opts.type ?? defaultType(status);
    this.param = opts.param ?? null;
    this.code = opts.code ?? null;
    this.headers = opts.headers ?? {};
  }

  body(): ErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

export interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | number | null };
}

function defaultType(status: number): ErrorType {
  if (status === 401 || status === 403) return "authentication_error";
  if (status === 404) return "not_found_error";
  if (status === 429) return "rate_limit_error";
  if (status === 408 || status === 504) return "timeout_error";
  if (status === 503) return "service_unavailable";
  if (status >= 500) return "server_error";
  return "invalid_request_error";
}

export const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new HttpError(400, message, { param, code });

/**
 * Turns any upstream error body (OpenAI's, vLLM ≥0.10.1 nested, vLLM <0.10.1 flat `{"object":"error"}`,
 * vLLM's auth `{"error":"Unauthorized"}`, Ollama's `{"error":"..."}`, plain text) into our shape.
 */
export function normaliseErrorBody(status: number, raw: string): ErrorBody {
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch {
    parsed = undefined;
  }
  const fallback = raw.trim().slice(0, 500) || `upstream answered HTTP ${status}`;
  const pick = (o: Record<string, unknown>): ErrorBody => ({
    error: {
      message: typeof o.message === "string" ? o.message : fallback,
      type: typeof o.type === "string" ? o.type : defaultType(status),
      param: typeof o.param === "string" ? o.param : null,
      code: typeof o.code === "string" || typeof o.code === "number" ? o.code : null,
    },
  });
  if (parsed && typeof parsed === "object") {
    const o = parsed as Record<string, unknown>;
    if (o.error && typeof o.error === "object") return pick(o.error as Record<string, unknown>);
    if (typeof o.error === "string") return { error: { message: o.error, type: defaultType(status), param: null, code: null } };
    if (typeof o.message === "string") return pick(o);
    if (typeof o.detail === "string") return { error: { message: o.detail, type: defaultType(status), param: null, code: null } };
  }
  return { error: { message: fallback, type: defaultType(status), param: null, code: null } };
}
