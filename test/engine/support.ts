/** Shared helpers for the embedded-engine tests: tiny-r1 built to ONNX in a temp dir, arithmetic prompts. */
import { join } from "node:path";
import { TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { convertToOnnx } from "../../src/engine/onnx/build.js";
import type { WeightFormat } from "../../src/engine/onnx/layers.js";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";
import type { SamplingParams, TokenEngine } from "../../src/engine/runtime/types.js";
import type { TokenByteTable } from "../../src/engine/text/token-bytes.js";

export { TINY_R1 };

export async function buildTiny(weights: WeightFormat, blockSize?: number): Promise<string> {
  const dir = join(await tempDir("dsr-onnx-"), `tiny-${weights}`);
  await convertToOnnx(TINY_R1, dir, { weights, blockSize });
  return dir;
}

/** tiny-r1's arithmetic question, and a schema for its answer (the engines' response_format tests). */
export const ADDITION_QUESTION = "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}.";
export const ANSWER_SCHEMA = {
  type: "object",
  properties: { answer: { type: "integer" }, op: { enum: ["plus", "minus"] }, checked: { type: "boolean" }, note: { anyOf: [{ type: "null" }, { type: "string" }] } },
  required: ["answer", "op", "checked"],
  additionalProperties: false,
};

/**
 * A token byte table of `size` tokens in which only `id` spells anything (`bytes`): under
 * response_format, a state that needs any other text has no token to continue with (a dead end).
 */
export function onlyToken(size: number, id: number, bytes: Uint8Array): TokenByteTable {
  return { offsets: new Uint32Array(size).map((_, i) => (i > id ? bytes.length : 0)), bytes };
}

export const GREEDY: SamplingParams = { temperature: 0, topP: 1, topK: 0, minP: 0, presencePenalty: 0, frequencyPenalty: 0, repetitionPenalty: 1 };

/**
 * Held-out questions in tiny-r1's format. The model was trained on operands of equal digit count
 * (2–4) and non-negative differences: e.g. its greedy answer to 4821 + 377 drops a digit in PyTorch
 * too (reference.json case 0), so only in-distribution pairs measure the engine.
 */
export function arithmeticProblems(n: number, seed: number): { question: string; answer: number }[] {
  const rnd = seededRandom(seed);
  const int = (lo: number, hi: number) => lo + Math.floor(rnd() * (hi - lo + 1));
  return Array.from({ length: n }, () => {
    const d = int(2, 4);
    let a = int(10 ** (d - 1), 10 ** d - 1);
    let b = int(10 ** (d - 1), 10 ** d - 1);
    const minus = rnd() < 0.5;
    if (minus && a < b) [a, b] = [b, a];
    return {
      question: `What is ${a} ${minus ? "-" : "+"} ${b}? Please reason step by step, and put your final answer within \\boxed{}.`,
      answer: minus ? a - b : a + b,
    };
  });
}

export async function collect(engine: TokenEngine, promptIds: number[], maxTokens: number, stopIds: number[], sampling = GREEDY, signal?: AbortSignal) {
  const ids: number[] = [];
  let finish: string | undefined;
  let stopId: number | undefined;
  for await (const c of engine.submit({ promptIds, sampling, maxTokens, stopIds, signal })) {
    ids.push(...c.ids);
    if (c.finish) (finish = c.finish), (stopId = c.stopId);
  }
  return { ids, finish, stopId };
}

export function boxed(text: string): number | undefined {
  const m = /\\boxed\{(-?\d+)\}/.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** One random edit of `orig` — replace, insert or delete a byte from `alphabet` — for fuzzing byte-level recognisers; `at` is where it happened. */
export function mutateOnce(orig: number[], r: () => number, alphabet: number[]): { bytes: Uint8Array; at: number } {
  const mutated = orig.slice();
  const at = Math.floor(r() * mutated.length);
  const c = alphabet[Math.floor(r() * alphabet.length)]!;
  const op = r();
  if (op < 0.4) mutated[at] = c;
  else if (op < 0.8) mutated.splice(at, 0, c);
  else mutated.splice(at, 1);
  return { bytes: Uint8Array.from(mutated), at };
}
