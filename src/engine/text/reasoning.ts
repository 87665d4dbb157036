/**
 * The R1 reasoning split, shared by `dsr chat` and the gateway: text inside `<think>…</think>` is
 * reasoning, the rest is content (vLLM's deepseek_r1 parser rules, facts/serving.md §1.4).
 *
 * A leading `<think>` is dropped; with `implicitOpen` (the default, for templates that open
 * `<think>` in the prompt) text is reasoning until `</think>` whether or not the tag was seen; an
 * output that never closes it is all reasoning. Whitespace around the tags is trimmed, and the
 * streaming splitter holds back partial tags and trailing whitespace so the concatenated deltas
 * equal the non-streaming split exactly.
 */
const START = "<think>";
const END = "</think>";

export interface SplitPiece {
  reasoning: string;
  content: string;
}

type State = "lead" | "reasoning" | "content";

export interface ReasoningSplitterOptions {
  /**
   * Text before any tag is reasoning (vLLM's deepseek_r1 rule, for templates that open `<think>` in
   * the prompt, as R1's do). When false, only an explicit leading `<think>` opens reasoning and any
   * other output is all content (models whose template does not open it).
   */
  implicitOpen?: boolean;
}

export class ReasoningSplitter {
  private state: State = "lead";
  private readonly implicitOpen: boolean;
  private held = ""; // text not yet classified: a possible partial tag at the end of the last push
  private reasoningStarted = false;
  private pendingWs = ""; // trailing reasoning whitespace, emitted only if more reasoning follows
  private contentStarted = false;

  constructor(opts: ReasoningSplitterOptions = {}) {
    this.implicitOpen = opts.implicitOpen ?? true;
  }

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
        this.state = this.implicitOpen ? "reasoning" : "content";
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
    } else if (this.state === "lead" && !this.implicitOpen) {
      this.state = "content"; // a held "<thi" that never became a tag is plain text
      out.content = rest.replace(/^\s+/, "");
      if (out.content) this.contentStarted = true;
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
export function splitReasoning(text: string, opts: ReasoningSplitterOptions = {}): { reasoning: string | null; content: string | null } {
  const sp = new ReasoningSplitter(opts);
  const a = sp.push(text);
  const b = sp.flush();
  const reasoning = a.reasoning + b.reasoning;
  const content = a.content + b.content;
  return { reasoning: reasoning || null, content: content || null };
}

