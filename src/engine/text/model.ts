/**
 * A model's text side, loaded from its own files: tokenizer.json (+ tokenizer_config.json) through
 * @huggingface/tokenizers, the chat template through @huggingface/jinja, and sampling defaults from
 * generation_config.json. The gateway and `dsr chat` own text; engines see only token ids.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { DsrError, integrityError } from "../errors.js";
import { createIncrementalDecoder, type IncrementalDecoder } from "./decoder.js";
import { tokenByteTable, type TokenByteTable } from "./token-bytes.js";

export interface ChatMessage {
  role: string;
  content: string;
}

export interface GenerationDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  repetitionPenalty?: number;
  maxNewTokens?: number;
}

export interface TextModel {
  /** Token ids of `text`; `addSpecialTokens` applies the tokenizer's post-processor (BOS for Llama-style tokenizers), as transformers' default does. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`, BOS/EOS/pad left out unless `keepSpecialTokens`. */
  decode(ids: number[], opts?: { keepSpecialTokens?: boolean }): string;
  /** The vocabulary's spelling of each id (byte-level BPE: `Ġ` for a space…), undefined for an id it does not have. */
  tokenStrings(ids: number[]): (string | undefined)[];
  createDecoder(): IncrementalDecoder;
  /** The prompt for `messages`; `kwargs` are extra template variables (a request's `chat_template_kwargs`). */
  applyChatTemplate(messages: ChatMessage[], opts?: { addGenerationPrompt?: boolean; kwargs?: Record<string, unknown> }): string;
  readonly promptOpensThink: boolean;
  /** The same model with another chat template (`--chat-template`): `source` names it in errors. */
  withChatTemplate(template: string, source: string): TextModel;
  /** The id of `</think>` when it is one token (constrained decoding starts after it). */
  readonly thinkEndId?: number;
  /** Token id → bytes, for engines that constrain output (undefined unless the tokenizer is byte-level BPE); built on first call. */
  tokenBytes(): TokenByteTable | undefined;
  readonly eosTokenIds: number[];
  readonly bosTokenId?: number;
  readonly generationDefaults: GenerationDefaults;
  readonly contextLength: number;
}

type Json = Record<string, unknown>;

async function readJson(path: string, required: boolean): Promise<Json | undefined> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if (!required && (e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new DsrError("DSR_MODEL_FILE_MISSING", `${path}: cannot read (${(e as Error).message})`, {
      hint: "the model directory needs tokenizer.json, tokenizer_config.json and config.json",
      details: { file: path },
    });
  }
  try {
    const v = JSON.parse(text) as unknown;
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Json;
  } catch (e) {
    throw integrityError("DSR_MODEL_FILE_INVALID", `${path}: invalid JSON (${(e as Error).message})`, {
      hint: "re-download the model's tokenizer and config files",
      details: { file: path },
    });
  }
}

/** tokenizer_config special tokens are either strings or {content: "..."} objects. */
function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as Json).content === "string") return (v as Json).content as string;
  return undefined;
}

async function findChatTemplate(dir: string, tc: Json): Promise<string | undefined> {
  try {
    return await readFile(join(dir, "chat_template.jinja"), "utf8");
  } catch {
    /* fall through to the other places templates live */
  }
  const fromJson = await readJson(join(dir, "chat_template.json"), false);
  const raw = fromJson?.chat_template ?? tc.chat_template;
  if (typeof raw === "string") return raw;
  if (Array.isArray(raw)) {
    const named = raw as { name?: string; template?: string }[];
    return (named.find((t) => t.name === "default") ?? named[0])?.template;
  }
  return undefined;
}

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined);
const ids = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => typeof x === "number") : typeof v === "number" ? [v] : []);

export async function loadTextModel(modelDir: string): Promise<TextModel> {
  const tj = await readJson(join(modelDir, "tokenizer.json"), true);
  const tc = (await readJson(join(modelDir, "tokenizer_config.json"), false)) ?? {};
  const cfg = (await readJson(join(modelDir, "config.json"), false)) ?? {};
  const gen = (await readJson(join(modelDir, "generation_config.json"), false)) ?? {};
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tj!, tc);
  } catch (e) {
    throw integrityError("DSR_TOKENIZER_INVALID", `${join(modelDir, "tokenizer.json")}: cannot build the tokenizer (${(e as Error).message})`, {
      hint: "re-download tokenizer.json",
    });
  }
  const templateText = await findChatTemplate(modelDir, tc);
  const bosText = tokenText(tc.bos_token);
  const eosText = tokenText(tc.eos_token);
  const bosTokenId = num(gen.bos_token_id) ?? num(cfg.bos_token_id) ?? (bosText ? tok.token_to_id(bosText) : undefined);
  const eosSet = new Set<number>([...ids(gen.eos_token_id), ...ids(cfg.eos_token_id)]);
  if (eosSet.size === 0 && eosText) {
    const id = tok.token_to_id(eosText);
    if (id !== undefined) eosSet.add(id);
  }
  const eosTokenIds = [...eosSet];
  const padText = tokenText(tc.pad_token);
  const padId = num(gen.pad_token_id) ?? num(cfg.pad_token_id) ?? (padText ? tok.token_to_id(padText) : undefined);
  // Never print BOS/EOS/pad; keep other special tokens (<think>, </think>) because the reasoning split reads them.
  const skip = new Set<number>(eosTokenIds);
  if (bosTokenId !== undefined) skip.add(bosTokenId);
  if (padId !== undefined) skip.add(padId);

  // (the tokenizer rejects an empty id list)
  const decode = (xs: number[]): string => (xs.length ? tok.decode(xs, { skip_special_tokens: false, clean_up_tokenization_spaces: false }) : "");
  const specials = { bos_token: bosText ?? "", eos_token: eosText ?? "", pad_token: padText ?? "" };
  const templating = (templateText: string | undefined, source: string) => chatTemplating(templateText, source, modelDir, specials);
  const maxPos = num(cfg.max_position_embeddings) ?? num((cfg.text_config as Json | undefined)?.max_position_embeddings);
  const tokMax = num(tc.model_max_length);
  const contextLength = maxPos ?? (tokMax !== undefined && tokMax < 1e7 ? tokMax : 4096);
  const generationDefaults: GenerationDefaults = {
    temperature: gen.do_sample === false ? 0 : num(gen.temperature),
    topP: num(gen.top_p),
    topK: num(gen.top_k),
    repetitionPenalty: num(gen.repetition_penalty),
    maxNewTokens: num(gen.max_new_tokens),
  };
  let table: { value: TokenByteTable | undefined } | undefined;
  const model = (t: ReturnType<typeof templating>): TextModel => ({
    encode: (text, opts) => tok.encode(text, { add_special_tokens: opts?.addSpecialTokens ?? false }).ids,
    decode: (xs, opts) => decode(opts?.keepSpecialTokens ? xs : xs.filter((x) => !skip.has(x))),
    tokenStrings: (xs) => xs.map((x) => tok.id_to_token(x)),
    createDecoder: () => createIncrementalDecoder(decode, skip),
    ...t,
    withChatTemplate: (text, source) => model(templating(text, source)),
    thinkEndId: tok.token_to_id("</think>"),
    tokenBytes: () => (table ??= { value: tokenByteTable(tj!) }).value,
    eosTokenIds,
    bosTokenId,
    generationDefaults,
    contextLength,
  });
  return model(templating(templateText, modelDir));
}

/**
 * A chat template's render function, and whether the prompt it makes ends inside `<think>` (R1's
 * templates open the block themselves). `source` names the template in errors.
 */
function chatTemplating(templateText: string | undefined, source: string, modelDir: string, specials: Record<string, string>): Pick<TextModel, "applyChatTemplate" | "promptOpensThink"> {
  let template: Template | undefined;
  try {
    template = templateText ? new Template(templateText) : undefined;
  } catch (e) {
    throw new DsrError("DSR_CHAT_TEMPLATE_INVALID", `${source}: the chat template does not parse (${(e as Error).message})`, { hint: "fix the Jinja template, or leave --chat-template out to use the model's own" });
  }
  const applyChatTemplate: TextModel["applyChatTemplate"] = (messages, opts = {}) => {
    if (!template) {
      throw new DsrError("DSR_NO_CHAT_TEMPLATE", `${modelDir}: the model has no chat template`, {
        hint: "add chat_template to tokenizer_config.json (or a chat_template.jinja file), give one with --chat-template, or send a raw prompt",
      });
    }
    try {
      // the request's variables first: they may not replace the messages or the special tokens
      return template.render({ ...opts.kwargs, messages, add_generation_prompt: opts.addGenerationPrompt ?? true, ...specials });
    } catch (e) {
      throw new DsrError("DSR_CHAT_TEMPLATE_FAILED", `${source}: chat template failed to render (${(e as Error).message})`, {
        hint: "check the messages (roles user/assistant/system) or the template",
      });
    }
  };
  return { applyChatTemplate, promptOpensThink: template ? /<think>\s*$/.test(applyChatTemplate([{ role: "user", content: "x" }], { addGenerationPrompt: true })) : false };
}
