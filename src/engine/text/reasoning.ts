/**
 * Splits an R1 completion stream into reasoning (inside <think>…</think>) and answer. When the
 * rendered prompt already opened <think> (R1 templates do), the stream starts in reasoning; otherwise
 * a leading <think> opens it. A tag split across chunks is held back until it is complete.
 */
export interface ReasoningSplitter {
  push(text: string): { reasoning: string; answer: string };
  flush(): { reasoning: string; answer: string };
}

const OPEN = "<think>";
const CLOSE = "</think>";

export function createReasoningSplitter(promptOpensThink: boolean): ReasoningSplitter {
  let state: "start" | "think" | "answer" = promptOpensThink ? "think" : "start";
  let held = "";
  let answerStarted = false;
  const step = (final: boolean) => {
    let reasoning = "";
    let answer = "";
    for (;;) {
      if (state === "start") {
        const t = held.trimStart();
        if (t.startsWith(OPEN)) {
          held = t.slice(OPEN.length);
          state = "think";
          continue;
        }
        if (!final && OPEN.startsWith(t)) return { reasoning, answer }; // maybe the start of <think>
        state = "answer";
        continue;
      }
      if (state === "think") {
        const i = held.indexOf(CLOSE);
        if (i >= 0) {
          reasoning += held.slice(0, i);
          held = held.slice(i + CLOSE.length);
          state = "answer";
          continue;
        }
        let keep = 0;
        if (!final) for (let k = Math.min(CLOSE.length - 1, held.length); k > 0; k--) if (held.endsWith(CLOSE.slice(0, k))) { keep = k; break; }
        reasoning += held.slice(0, held.length - keep);
        held = held.slice(held.length - keep);
        return { reasoning, answer };
      }
      // The answer's leading blank lines (after </think>) are layout, not content.
      if (!answerStarted) held = held.replace(/^\s+/, "");
      if (held) answerStarted = true;
      answer += held;
      held = "";
      return { reasoning, answer };
    }
  };
  return {
    push(text) {
      held += text;
      return step(false);
    },
    flush() {
      return step(true);
    },
  };
}
