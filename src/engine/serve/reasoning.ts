/**
 * The R1 reasoning split: text inside `<think>…</think>` goes to `reasoning_content` (DeepSeek's and
 * SGLang's name) and/or `reasoning` (vLLM's current name), the rest to `content` (facts §1.4).
 *
 * Rules, as vLLM's deepseek_r1 parser: a leading `<think>` is dropped; text is reasoning until
 * `</think>` whether or not the opening tag was seen (R1 templates open it in the prompt); an output
 * that never closes it is all reasoning and has null content. Whitespace around the tags is trimmed,
 * and the streaming splitter holds back partial tags and trailing whitespace so the concatenated
 * deltas equal the non-streaming split exactly.
 */
export type ReasoningField = "reasoning_content" | "reasoning";
export const REASONING_FIELDS: readonly ReasoningField[] = ["reasoning_content", "reasoning"];

const START = "<think>";
const END = "</think>";

export interface SplitPiece {
  reasoning: string;
  content: string;
}

type State = "lead" | "reasoning" | "content";

export class ReasoningSplitter {
  private state: State = "lead";
  private held = ""; // text not yet classified: a possible partial tag at the end of the last push
  private reasoningStarted = false;
  private pendingWs = ""; // trailing reasoning whitespace, emitted only if more reasoning follows
  private contentStarted = false;

  push(text: string): SplitPiece {
    const out: SplitPiece = { reasoning: "", content: "" };
    let s = this.held + text;
    this.held = "";
    while (s.length > 0) {
      if (this.state === "lead") {
        const trimmed = s.replace(/^\s+/, "");
        if (trimmed.length === 0) return out; // only whitespace so far: nothing to decide yet
        if (trimmed.startsWith(START)) {
          s = trimmed.slice(START.length);
          this.state = "reasoning";
          continue;
        }
        if (START.startsWith(trimmed)) {
          this.held = trimmed; // maybe a split "<thi" + "nk>"
          return out;
        }
        this.state = "reasoning";
        s = trimmed;
        continue;
      }
      if (this.state === "reasoning") {
        const at = s.indexOf(END);
        if (at >= 0) {
          this.addReasoning(out, s.slice(0, at));
          this.pendingWs = "";
          this.state = "content";
          s = s.slice(at + END.length);
          continue;
        }
        const keep = partialSuffix(s, END);
        this.addReasoning(out, s.slice(0, s.length - keep));
        this.held = s.slice(s.length - keep);
        return out;
      }
      // content
      if (!this.contentStarted) {
        s = s.replace(/^\s+/, "");
        if (s.length === 0) return out;
        this.contentStarted = true;
      }
      out.content += s;
      return out;
    }
    return out;
  }

  /** End of output: a held partial tag is plain text; trailing reasoning whitespace is dropped. */
  flush(): SplitPiece {
    const rest = this.held;
    this.held = "";
    const out: SplitPiece = { reasoning: "", content: "" };
    if (!rest) return out;
    if (this.state === "content") {
      const s = this.contentStarted ? rest : rest.replace(/^\s+/, "");
      out.content = s;
      if (s) this.contentStarted = true;
    } else {
      this.state = "reasoning";
      this.addReasoning(out, rest);
    }
    return out;
  }

  /** True once `</think>` was seen. */
  get closed(): boolean {
    return this.state === "content";
  }

  private addReasoning(out: SplitPiece, text: string): void {
    if (!this.reasoningStarted) {
      text = text.replace(/^\s+/, "");
      if (!text) return;
      this.reasoningStarted = true;
    }
    const m = /\s+$/.exec(text);
    const body = m ? text.slice(0, m.index) : text;
    if (body) {
      out.reasoning += this.pendingWs + body;
      this.pendingWs = m ? m[0] : "";
    } else {
      this.pendingWs += text;
    }
  }
}

/** Length of the longest suffix of `s` that is a proper prefix of `tag`. */
function partialSuffix(s: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, s.length); n > 0; n--) {
    if (s.endsWith(tag.slice(0, n))) return n;
  }
  return 0;
}

/** Non-streaming split: content is null when the output never closes `</think>` or has nothing after it. */
export function splitReasoning(text: string): { reasoning: string | null; content: string | null } {
  const sp = new ReasoningSplitter();
  const a = sp.push(text);
  const b = sp.flush();
  const reasoning = a.reasoning + b.reasoning;
  const content = a.content + b.content;
  return { reasoning: reasoning || null, content: content || null };
}

/** Puts reasoning text on an object under each configured field name. */
export function setReasoning(target: Record<string, unknown>, fields: readonly ReasoningField[], text: string | null): void {
  for (const f of fields) target[f] = text;
}
