/**
 * Where the gateway puts R1 reasoning: `reasoning_content` (DeepSeek's and SGLang's name) and/or
 * `reasoning` (vLLM's current name). The split itself is src/engine/text/reasoning.ts.
 */
export type ReasoningField = "reasoning_content" | "reasoning";
export const REASONING_FIELDS: readonly ReasoningField[] = ["reasoning_content", "reasoning"];

export { ReasoningSplitter, splitReasoning } from "../text/reasoning.js";

/** Puts reasoning text on an object under each configured field name. */
export function setReasoning(target: Record<string, unknown>, fields: readonly ReasoningField[], text: string | null): void {
  for (const f of fields) target[f] = text;
}
