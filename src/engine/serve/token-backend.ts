/**
 * The backend for token engines (embedded onnxruntime, the torch worker): the gateway owns
 * the text side — chat template, tokenization, incremental detokenization, stop strings, logprobs
 * formatting and the reasoning split — and asks the engine only for token ids (DESIGN.md "Two kinds
 * of upstream"). Each of the `n` choices (× each prompt of a batched completion) is one engine
 * submission; a stop string aborts its submission at once.
 */
import type { SubmitRequest, TokenChunk, TokenEngine, TokenLogprob } from "../runtime/types.js";
import type { TextModel } from "../text/index.js";
import { createStopMatcher } from "../text/index.js";
import { compileJsonSchema, SchemaError } from "../runtime/embedded/json-schema.js";
import { DsrError } from "../errors.js";
import { HttpError } from "./http-error.js";
import type { GatewayMetrics } from "./metrics.js";
import { chatPromptIds, completionPrompts, samplingFor, tokenBudget } from "./prompt.js";
import { ReasoningSplitter, setReasoning, type ReasoningField } from "./reasoning.js";
import { stopList, type ChatRequest, type CompletionRequest } from "./schemas.js";
import { tokensLocally, type DetokenizeRequest, type TokenizeRequest, type TokensOp } from "./tokenize.js";
import type { Backend, GenerationRequest, ModelCard } from "./types.js";

export interface TokenBackendOptions {
  engine: TokenEngine;
  text: TextModel;
  servedNames: string[];
  /** The model path, shown as `root` in /v1/models. */
  root: string;
  reasoningFields: readonly ReasoningField[];
  r1Advice: boolean;
  metrics: GatewayMetrics;
  instanceName?: string;
}

interface Choice {
  index: number;
  promptIds: number[];
  promptText: string;
  reasoning: string;
  content: string;
  tokens: number;
  finish: string | null;
  logprobs: TokenLogprob[];
  pendingLogprobs: TokenLogprob[];
}

export class TokenBackend implements Backend {
  private readonly created = Math.floor(Date.now() / 1000);
  private readonly instance: string;

  constructor(private readonly o: TokenBackendOptions) {
    this.instance = o.instanceName ?? "embedded";
  }

  modelIds(): readonly string[] {
    return this.o.servedNames;
  }

  models(): ModelCard[] {
    return this.o.servedNames.map((id) => ({ id, object: "model" as const, created: this.created, owned_by: "dsr", root: this.o.root, max_model_len: this.o.text.contextLength }));
  }

  ready(): boolean {
    return this.o.engine.ready?.() ?? true;
  }

  describe(): Record<string, unknown> {
    const s = this.o.engine.stats();
    if (s.kvCapacityTokens) this.o.metrics.kvUsage.set({ instance: this.instance }, (s.kvUsedTokens ?? 0) / s.kvCapacityTokens);
    return { engine: { running: s.running, waiting: s.waiting, kv_used_tokens: s.kvUsedTokens, kv_capacity_tokens: s.kvCapacityTokens, max_context: s.maxContext } };
  }

  async close(): Promise<void> {
    await this.o.engine.close();
  }

  /** The longest prompt + completion: the model's context, or less where the engine was opened with less. */
  private contextLimit(): number {
    return Math.min(this.o.text.contextLength, this.o.engine.stats().maxContext || Infinity);
  }

  async tokens(op: TokensOp, req: TokenizeRequest | DetokenizeRequest): Promise<{ status: number; body: unknown }> {
    return { status: 200, body: tokensLocally(this.o.text, op, req, { r1Advice: this.o.r1Advice, maxModelLen: this.contextLimit() }) };
  }

  async handle(g: GenerationRequest): Promise<void> {
    const chat = g.endpoint === "chat";
    const req = g.req;
    refuseUnsupported(req);
    const text = this.o.text;
    const bad = (req.stop_token_ids ?? []).find((t) => text.tokenStrings([t])[0] === undefined);
    if (bad !== undefined) throw new HttpError(400, `stop_token_ids: ${bad} is not in the model's vocabulary`, { param: "stop_token_ids", code: "invalid_parameter" });
    const split = chat && this.o.reasoningFields.length > 0 && text.promptOpensThink;
    const constraint = chat ? this.constraintFor(req as ChatRequest, split) : undefined;
    const prompts = chat ? [{ ids: chatPromptIds(text, req as ChatRequest, this.o), text: "" }] : completionPrompts(text, req as CompletionRequest);
    const n = req.n ?? 1;
    const budgets = prompts.map((p) => tokenBudget(req, p.ids.length, this.contextLimit()));
    const logprobs = chat ? ((req as ChatRequest).logprobs ? (req as ChatRequest).top_logprobs ?? 0 : undefined) : ((req as CompletionRequest).logprobs ?? undefined);
    const stops = stopList(req.stop);
    const stopIds = [...(req.ignore_eos ? [] : text.eosTokenIds), ...(req.stop_token_ids ?? [])];
    const id = `${chat ? "chatcmpl" : "cmpl"}-${g.id.replace(/[^A-Za-z0-9-]/g, "").slice(0, 40)}`;
    const created = Math.floor(Date.now() / 1000);
    const ins = this.o.metrics.instrument(this.instance, g.model);
    g.record.instance = this.instance;
    g.record.promptTokens = prompts.reduce((a, p) => a + p.ids.length, 0);

    const choices: Choice[] = [];
    prompts.forEach((p, pi) => {
      for (let k = 0; k < n; k++) choices.push({ index: pi * n + k, promptIds: p.ids, promptText: p.text, reasoning: "", content: "", tokens: 0, finish: null, logprobs: [], pendingLogprobs: [] });
    });

    // vLLM's continuous usage: every chunk carries the usage of its choice so far
    const continuous = req.stream_options?.include_usage === true && req.stream_options.continuous_usage_stats === true;
    const usageOf = (c: Choice) => ({ prompt_tokens: c.promptIds.length, completion_tokens: c.tokens, total_tokens: c.promptIds.length + c.tokens });
    const head = (x: Choice, c: Record<string, unknown>) =>
      `data: ${JSON.stringify({ id, object: chat ? "chat.completion.chunk" : "text_completion", created, model: g.model, choices: [c], ...(continuous ? { usage: usageOf(x) } : {}) })}\n\n`;
    let lastEventAt = 0;
    const emit = async (c: Choice, reasoning: string, content: string, finish: string | null): Promise<void> => {
      if (!g.stream) return;
      if (!reasoning && !content && !finish && c.pendingLogprobs.length === 0) return;
      if (!g.sink.started) {
        g.sink.startStream();
        if (chat) for (const x of choices) await g.sink.write(head(x, { index: x.index, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }));
      }
      const lp = c.pendingLogprobs.length ? this.formatLogprobs(chat, c.pendingLogprobs, logprobs!) : null;
      c.pendingLogprobs = [];
      let ev: Record<string, unknown>;
      if (chat) {
        const delta: Record<string, unknown> = {};
        if (reasoning) setReasoning(delta, this.o.reasoningFields, reasoning);
        if (content || (!reasoning && !finish)) delta.content = content;
        ev = { index: c.index, delta, logprobs: lp, finish_reason: finish };
      } else {
        ev = { index: c.index, text: content, logprobs: lp, finish_reason: finish };
      }
      const now = performance.now();
      if (lastEventAt) ins.itl((now - lastEventAt) / 1000);
      lastEventAt = now;
      const w = g.sink.write(head(c, ev));
      if (w) await w;
    };

    // one failing choice stops its siblings' engine work too
    const all = new AbortController();
    const run = async (c: Choice, budget: number): Promise<void> => {
      const ac = new AbortController();
      const cancelListener = { onCancel: () => ac.abort(g.cancel.reason) };
      g.cancel.listen(cancelListener);
      const onSibling = () => ac.abort(all.signal.reason);
      all.signal.addEventListener("abort", onSibling, { once: true });
      const decoder = text.createDecoder(); // never emits BOS/EOS/pad
      const stop = createStopMatcher(stops, { includeStop: (req as { include_stop_str_in_output?: unknown }).include_stop_str_in_output === true });
      const splitter = split ? new ReasoningSplitter() : undefined;
      let stopped = false;
      if (!chat && (req as CompletionRequest).echo) {
        c.content += c.promptText;
        await emit(c, "", c.promptText, null);
      }
      const take = async (s: string, final: boolean) => {
        let out = s;
        // vLLM checks stop strings only from min_tokens on
        if (!stopped && c.tokens >= (req.min_tokens ?? 0)) {
          const r = stop.push(s);
          out = r.emit;
          if (r.stopped) {
            stopped = true;
            ac.abort(); // a stop string ends this choice: free the engine's slot now
          }
        }
        if (final && !stopped) out += stop.flush();
        const piece = splitter ? splitter.push(out) : { reasoning: "", content: out };
        if (final && splitter) {
          const tail = splitter.flush();
          piece.reasoning += tail.reasoning;
          piece.content += tail.content;
        }
        c.reasoning += piece.reasoning;
        c.content += piece.content;
        await emit(c, piece.reasoning, piece.content, null);
      };
      try {
        const sub = this.submit({ promptIds: c.promptIds, sampling: samplingFor(text, req, this.o, logprobs, c.index), maxTokens: budget, stopIds, signal: ac.signal, constraint });
        for await (const chunk of sub as AsyncIterable<TokenChunk>) {
          if (chunk.ids.length > 0 && g.record.ttftMs === undefined) {
            g.record.ttftMs = performance.now() - g.t0;
            ins.ttft(g.record.ttftMs / 1000);
          }
          if (stopped) break;
          c.tokens += chunk.ids.length;
          if (chunk.logprobs && logprobs !== undefined) {
            c.logprobs.push(...chunk.logprobs);
            c.pendingLogprobs.push(...chunk.logprobs);
          }
          if (chunk.ids.length) await take(decoder.push(chunk.ids), false);
          if (chunk.finish) {
            if (chunk.finish === "error") throw new HttpError(500, "the engine failed while generating", { code: "engine_error" });
            if (chunk.finish !== "abort") c.finish = chunk.finish;
            break;
          }
        }
      } catch (e) {
        if (!(stopped && ac.signal.aborted && !g.cancel.aborted)) throw e;
      } finally {
        g.cancel.unlisten(cancelListener);
        all.signal.removeEventListener("abort", onSibling);
      }
      if (g.cancel.aborted) throw g.cancel.reason ?? new HttpError(499, "client disconnected", { code: "client_closed" });
      if (all.signal.aborted) throw all.signal.reason;
      await take(decoder.flush(), true);
      if (stopped) c.finish = "stop";
      c.finish ??= "length";
      await emit(c, "", "", c.finish);
    };

    await Promise.all(
      choices.map((c) =>
        run(c, budgets[Math.floor(c.index / n)]).catch((e) => {
          all.abort(e);
          throw e;
        }),
      ),
    );

    const completionTokens = choices.reduce((a, c) => a + c.tokens, 0);
    g.record.completionTokens = completionTokens;
    g.record.finishReason = choices[0].finish;
    const usage = { prompt_tokens: g.record.promptTokens, completion_tokens: completionTokens, total_tokens: g.record.promptTokens + completionTokens };
    if (g.stream) {
      if (!g.sink.started) g.sink.startStream();
      if (req.stream_options?.include_usage) await g.sink.write(`data: ${JSON.stringify({ id, object: chat ? "chat.completion.chunk" : "text_completion", created, model: g.model, choices: [], usage })}\n\n`);
      await g.sink.write("data: [DONE]\n\n");
      g.sink.end();
      return;
    }
    const out = choices.map((c) => {
      const lp = logprobs !== undefined ? this.formatLogprobs(chat, c.logprobs, logprobs) : null;
      if (!chat) return { index: c.index, text: c.content, logprobs: lp, finish_reason: c.finish };
      const message: Record<string, unknown> = { role: "assistant", content: split ? c.content || null : c.content };
      if (split) setReasoning(message, this.o.reasoningFields, c.reasoning || null);
      return { index: c.index, message, logprobs: lp, finish_reason: c.finish };
    });
    g.sink.json(200, { id, object: chat ? "chat.completion" : "text_completion", created, model: g.model, choices: out, usage });
  }

  /**
   * response_format → the engine's constraint: json_object, or json_schema for the subset
   * json-schema.ts compiles (checked here, so a schema outside it is a 400 naming the keyword's path;
   * json_schema without a schema is json_object, as OpenAI). With the reasoning split on it starts
   * after `</think>`, as vLLM's structured outputs with a reasoning parser, so reasoning stays free
   * text; without it the whole output is the JSON value.
   */
  private constraintFor(req: ChatRequest, split: boolean): SubmitRequest["constraint"] {
    const rf = req.response_format;
    if (!rf || rf.type === "text") return undefined;
    const no = (why: string) => new HttpError(400, why, { param: "response_format", code: "unsupported_parameter" });
    const schema = rf.type === "json_schema" ? rf.json_schema.schema : undefined;
    if (schema != null) {
      try {
        compileJsonSchema(schema, "response_format.json_schema.schema");
      } catch (e) {
        if (!(e instanceof SchemaError)) throw e;
        throw new HttpError(400, e.message, { param: e.path, code: e.unsupported ? "unsupported_parameter" : "invalid_parameter" });
      }
    }
    if (!this.o.text.tokenBytes()) throw no(`response_format ${rf.type} needs a byte-level BPE tokenizer, and this model's is not one; use --engine vllm or --upstream`);
    const kind = schema != null ? { kind: "json_schema" as const, schema } : { kind: "json_object" as const };
    if (!split) return kind;
    const startAfterId = this.o.text.thinkEndId;
    if (startAfterId === undefined) throw no(`response_format ${rf.type} with the reasoning split needs \`</think>\` to be one token, and in this model's tokenizer it is not; use --engine vllm or --upstream`);
    return { ...kind, startAfterId };
  }

  /** The engine's submit, with "engine restarting" as a 503 the client may retry. */
  private submit(req: SubmitRequest): AsyncIterable<TokenChunk> {
    try {
      return this.o.engine.submit(req);
    } catch (e) {
      if (e instanceof DsrError && e.code === "DSR_ENGINE_UNAVAILABLE") throw new HttpError(503, e.message, { code: "engine_unavailable", headers: { "retry-after": "5" } });
      throw e;
    }
  }

  /** OpenAI logprobs: chat `{content:[{token,logprob,bytes,top_logprobs}]}`, completions `{tokens,token_logprobs,top_logprobs,text_offset}`. */
  private formatLogprobs(chat: boolean, lps: TokenLogprob[], top: number): unknown {
    const tok = (id: number) => this.o.text.decode([id]);
    if (chat) {
      return {
        content: lps.map((l) => {
          const t = tok(l.id);
          return {
            token: t,
            logprob: l.logprob,
            bytes: [...Buffer.from(t)],
            top_logprobs: l.top.slice(0, top).map((x) => {
              const s = tok(x.id);
              return { token: s, logprob: x.logprob, bytes: [...Buffer.from(s)] };
            }),
          };
        }),
      };
    }
    let offset = 0;
    const tokens: string[] = [];
    const offsets: number[] = [];
    for (const l of lps) {
      const t = tok(l.id);
      tokens.push(t);
      offsets.push(offset);
      offset += t.length;
    }
    return {
      tokens,
      token_logprobs: lps.map((l) => l.logprob),
      top_logprobs: lps.map((l) => Object.fromEntries(l.top.slice(0, top).map((x) => [tok(x.id), x.logprob]))),
      text_offset: offsets,
    };
  }
}

/**
 * Request fields the token engines do not implement, refused with a 400 naming them rather than
 * ignored: each would change what the client gets (a tool call, a grammar, logprobs of the prompt)
 * and a silent answer without it looks like the model's fault. vLLM and SGLang upstreams take them
 * as they are (the proxy forwards the body).
 */
const UNSUPPORTED: [field: string, active: (v: unknown) => boolean, instead: string][] = [
  ["tools", (v) => Array.isArray(v) && v.length > 0, "serve with --engine vllm and its tool parser, or --upstream"],
  ["tool_choice", (v) => v != null && v !== "none", "serve with --engine vllm and its tool parser, or --upstream"],
  ["functions", (v) => Array.isArray(v) && v.length > 0, "serve with --engine vllm, or --upstream"],
  ["best_of", (v) => typeof v === "number" && v > 1, "ask for n choices instead"],
  ["prompt_logprobs", (v) => v != null, "serve with --engine vllm, or --upstream"],
  ["guided_json", (v) => v != null, "use response_format json_schema"],
  ["guided_regex", (v) => v != null, "serve with --engine vllm, or --upstream"],
  ["guided_choice", (v) => v != null, "serve with --engine vllm, or --upstream"],
  ["guided_grammar", (v) => v != null, "serve with --engine vllm, or --upstream"],
  ["structured_outputs", (v) => v != null, "use response_format json_schema"],
  ["add_generation_prompt", (v) => v === false, "send the turn to continue as a completions prompt"],
  ["continue_final_message", (v) => v === true, "send the text to continue as a completions prompt"],
];

function refuseUnsupported(req: ChatRequest | CompletionRequest): void {
  const body = req as Record<string, unknown>;
  for (const [field, active, instead] of UNSUPPORTED) {
    if (active(body[field])) throw new HttpError(400, `\`${field}\` is not supported by the embedded and torch engines: ${instead}`, { param: field, code: "unsupported_parameter" });
  }
}
