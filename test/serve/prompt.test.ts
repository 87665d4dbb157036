/**
 * Prompt ids for token engines against vLLM's rules for special tokens: a completions prompt gets the
 * tokenizer's post-processor (BOS, for tokenizers that declare one, as the R1 family's do) unless
 * `add_special_tokens` is false; a chat prompt does not (the template writes the BOS), unless asked.
 * tiny-r1's tokenizer declares none, so a copy of its tokenizer files gets R1's TemplateProcessing.
 */
import { copyFile, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { chatPromptIds, completionPrompts } from "../../src/engine/serve/prompt.js";
import type { ChatRequest, CompletionRequest } from "../../src/engine/serve/schemas.js";
import { loadTextModel, type TextModel } from "../../src/engine/text/index.js";
import { TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";

const BOS = "<｜begin▁of▁sentence｜>";
let plain: TextModel;
let withBos: TextModel;
let bosId: number;

beforeAll(async () => {
  plain = await loadTextModel(TINY_R1);
  const dir = await tempDir();
  for (const f of ["config.json", "generation_config.json", "tokenizer_config.json"]) await copyFile(join(TINY_R1, f), join(dir, f));
  const tj = JSON.parse(await readFile(join(TINY_R1, "tokenizer.json"), "utf8"));
  bosId = (tj.added_tokens as { id: number; content: string }[]).find((t) => t.content === BOS)!.id;
  tj.post_processor = {
    type: "TemplateProcessing",
    single: [{ SpecialToken: { id: BOS, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }],
    pair: [{ SpecialToken: { id: BOS, type_id: 0 } }, { Sequence: { id: "A", type_id: 0 } }, { SpecialToken: { id: BOS, type_id: 1 } }, { Sequence: { id: "B", type_id: 1 } }],
    special_tokens: { [BOS]: { id: BOS, ids: [bosId], tokens: [BOS] } },
  };
  await writeFile(join(dir, "tokenizer.json"), JSON.stringify(tj));
  withBos = await loadTextModel(dir);
});

const completion = (extra: Partial<CompletionRequest> = {}) => ({ prompt: "What is 2 + 2?", ...extra }) as CompletionRequest;
const chat = (extra: Partial<ChatRequest> = {}) => ({ messages: [{ role: "user", content: "What is 2 + 2?" }], ...extra }) as ChatRequest;

describe("special tokens in prompts (vLLM's add_special_tokens)", () => {
  it("completions: the post-processor's BOS by default, none with add_special_tokens false; token-id prompts as given", () => {
    const bare = plain.encode("What is 2 + 2?");
    expect(completionPrompts(withBos, completion())[0]!.ids).toEqual([bosId, ...bare]);
    expect(completionPrompts(withBos, completion({ add_special_tokens: false }))[0]!.ids).toEqual(bare);
    expect(completionPrompts(withBos, completion({ prompt: ["a", "b"] })).map((p) => p.ids[0])).toEqual([bosId, bosId]);
    expect(completionPrompts(withBos, completion({ prompt: [5, 6] }))[0]!.ids).toEqual([5, 6]);
    expect(completionPrompts(plain, completion())[0]!.ids).toEqual(bare); // no post-processor, nothing added
  });

  it("chat: one BOS, the template's, unless add_special_tokens asks for the post-processor's too", () => {
    const ids = chatPromptIds(withBos, chat(), { r1Advice: true });
    expect(ids.filter((x) => x === bosId)).toHaveLength(1);
    expect(ids).toEqual(chatPromptIds(plain, chat(), { r1Advice: true }));
    expect(chatPromptIds(withBos, chat({ add_special_tokens: true }), { r1Advice: true })).toEqual([bosId, ...ids]);
  });
});
