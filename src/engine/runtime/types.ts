/**
 * The token-engine interface (../shared/DESIGN.md "Two kinds of upstream"): the gateway owns text
 * (tokenizer, chat template, stop strings, reasoning split) and asks a token engine only for ids.
 * The embedded onnxruntime engine and the torch worker implement it; continuous batching lives
 * behind it.
 */
export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  topP: number;
  topK: number;
  minP: number;
  seed?: number;
  presencePenalty: number;
  frequencyPenalty: number;
  repetitionPenalty: number;
  /** OpenAI's logit_bias: [token id, bias] pairs added to the logits after the penalties. */
  logitBias?: [number, number][];
  /** vLLM's min_tokens: the request's stop ids (EOS included) cannot be drawn before this many tokens. */
  minTokens?: number;
  /** Number of top alternatives to return with each token (0 = none; undefined = no logprobs). */
  logprobs?: number;
}

export interface SubmitRequest {
  promptIds: number[];
  sampling: SamplingParams;
  maxTokens: number;
  stopIds: number[];
  signal?: AbortSignal;
  /**
   * Constrained decoding (response_format json_object / json_schema): from the token after
   * `startAfterId` (R1's `</think>`; from the first token when absent) the output is one JSON object
   * (json_object) or one JSON value the schema accepts (json_schema: the subset in
   * runtime/embedded/json-schema.ts), and the sequence ends with finish "stop" when it is complete.
   * Plain data, so it crosses to the engine worker as is.
   */
  constraint?: { kind: "json_object"; startAfterId?: number } | { kind: "json_schema"; schema: unknown; startAfterId?: number };
}

export interface TokenLogprob {
  id: number;
  logprob: number;
  top: { id: number; logprob: number }[];
}

export type FinishReason = "stop" | "length" | "abort" | "error";

export interface TokenChunk {
  ids: number[];
  logprobs?: TokenLogprob[];
  finish?: FinishReason;
  /** Set when finish = "stop" because of a stop id. */
  stopId?: number;
}

export interface EngineStats {
  running: number;
  waiting: number;
  /** KV cache tokens in use / available, when the engine budgets KV memory. */
  kvUsedTokens?: number;
  kvCapacityTokens?: number;
  maxContext: number;
}

export interface TokenEngine {
  submit(req: SubmitRequest): AsyncIterable<TokenChunk>;
  /** False while the engine cannot take requests (a worker restarting); absent = always ready. */
  ready?(): boolean;
  stats(): EngineStats;
  close(): Promise<void>;
}
