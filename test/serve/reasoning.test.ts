import { describe, expect, it } from "vitest";
import { ReasoningSplitter, splitReasoning } from "../../src/engine/serve/reasoning.js";

/** Feeds `text` in random pieces and returns the concatenated split. */
function streamed(text: string, rnd: () => number): { reasoning: string; content: string } {
  const sp = new ReasoningSplitter();
  let r = "";
  let c = "";
  let i = 0;
  while (i < text.length) {
    const n = 1 + Math.floor(rnd() * 9);
    const p = sp.push(text.slice(i, i + n));
    r += p.reasoning;
    c += p.content;
    i += n;
  }
  const f = sp.flush();
  return { reasoning: r + f.reasoning, content: c + f.content };
}

function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

describe("reasoning split (vLLM deepseek_r1 rules)", () => {
  it("template opened <think>: text up to </think> is reasoning, the rest content, whitespace trimmed", () => {
    expect(splitReasoning("\nFirst, 12 + 30 = 42.\n</think>\n\nThe answer is \\boxed{42}.")).toEqual({
      reasoning: "First, 12 + 30 = 42.",
      content: "The answer is \\boxed{42}.",
    });
  });

  it("a model that emits <think> itself (R1-0528) gets the tag dropped", () => {
    expect(splitReasoning("<think>\nhmm\n</think>\n\nok")).toEqual({ reasoning: "hmm", content: "ok" });
  });

  it("an output that never closes </think> is all reasoning with null content", () => {
    expect(splitReasoning("\nstep one, step two")).toEqual({ reasoning: "step one, step two", content: null });
  });

  it("nothing after </think> gives null content; a partial tag at the end is plain text", () => {
    expect(splitReasoning("r</think>  ")).toEqual({ reasoning: "r", content: null });
    expect(splitReasoning("abc </thi")).toEqual({ reasoning: "abc </thi", content: null });
  });

  it("streamed deltas concatenate to exactly the non-streaming split, for any chunking (fuzz)", () => {
    const rnd = lcg(7);
    const alphabet = ["<think>", "</think>", "<", "/", "think", ">", "\n", " ", "a", "b", "42", "</th", "<thi", "\\boxed{7}"];
    for (let k = 0; k < 3000; k++) {
      let text = "";
      const len = Math.floor(rnd() * 20);
      for (let j = 0; j < len; j++) text += alphabet[Math.floor(rnd() * alphabet.length)];
      const whole = splitReasoning(text);
      const s = streamed(text, rnd);
      expect({ reasoning: s.reasoning || null, content: s.content || null }, JSON.stringify(text)).toEqual(whole);
    }
  });

  it("never loses text: reasoning + content + tags + trimmed whitespace account for the input", () => {
    const rnd = lcg(11);
    for (let k = 0; k < 500; k++) {
      const words = Array.from({ length: 1 + Math.floor(rnd() * 8) }, () => Math.floor(rnd() * 1000).toString(36));
      const at = Math.floor(rnd() * words.length);
      const text = words.slice(0, at).join(" ") + "</think>" + words.slice(at).join(" ");
      const s = splitReasoning(text);
      expect((s.reasoning ?? "") + (s.content ?? "")).toBe(words.slice(0, at).join(" ") + words.slice(at).join(" "));
    }
  });
});
