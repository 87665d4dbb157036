/**
 * The text side of tiny-r1: tokenizer ids match transformers (reference.json), the chat template renders
 * the exact reference prompt, the incremental detokenizer equals a full decode however ids are split
 * (including multi-byte characters split across tokens), and the stop matcher / reasoning splitter give
 * the same result for every way of cutting the stream into chunks (fuzzed with a seeded RNG).
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";
import { ReasoningSplitter, createStopMatcher, loadTextModel, type TextModel } from "../../src/engine/text/index.js";
import { TINY_R1 } from "../support/cli.js";
import { cp, writeFile } from "node:fs/promises";
import { tempDir } from "../support/tmp.js";

const ref = JSON.parse(readFileSync(join(TINY_R1, "reference.json"), "utf8")) as { cases: { prompt: string; input_ids: number[]; greedy_64: number[]; greedy_text: string }[] };
let text: TextModel;
beforeAll(async () => {
  text = await loadTextModel(TINY_R1);
});

/** Random cut points: splits `n` items into 1..n chunks. */
function randomChunks<T>(xs: T[], rnd: () => number): T[][] {
  const out: T[][] = [];
  let i = 0;
  while (i < xs.length) {
    const n = 1 + Math.floor(rnd() * 4);
    out.push(xs.slice(i, i + n));
    i += n;
  }
  return out;
}

describe("TextModel on tiny-r1", () => {
  it("encodes like transformers and renders the reference chat prompt", () => {
    for (const c of ref.cases) expect(text.encode(c.prompt)).toEqual(c.input_ids);
    const q = "What is 4821 + 377? Please reason step by step, and put your final answer within \\boxed{}.";
    expect(text.applyChatTemplate([{ role: "user", content: q }])).toBe(ref.cases[0]!.prompt);
    expect(text.promptOpensThink).toBe(true);
    expect(text.eosTokenIds).toEqual([2042]);
    expect(text.bosTokenId).toBe(2041);
    expect(text.contextLength).toBe(2048);
    expect(text.generationDefaults).toMatchObject({ temperature: 0.6, topP: 0.95 });
  });

  it("assistant turns drop their reasoning in the template (R1 rule)", () => {
    const s = text.applyChatTemplate([{ role: "user", content: "a" }, { role: "assistant", content: "<think>x</think>ok" }, { role: "user", content: "b" }]);
    expect(s).toContain("<｜Assistant｜>ok<｜end▁of▁sentence｜>");
    expect(s).not.toContain("<think>x");
  });

  it("incremental decoding equals the full decode for any chunking, also across multi-byte characters", () => {
    const rnd = seededRandom(42);
    const samples = [...ref.cases.map((c) => c.greedy_64), text.encode("naïve café — 数字 😀 done"), text.encode("é😀😀x")];
    for (const ids of samples) {
      const whole = text.decode(ids);
      for (let trial = 0; trial < 20; trial++) {
        const d = text.createDecoder();
        let s = "";
        for (const chunk of randomChunks(ids, rnd)) {
          const piece = d.push(chunk);
          expect(piece).not.toContain("\uFFFD");
          s += piece;
        }
        s += d.flush();
        expect(s).toBe(whole);
      }
    }
    expect(text.decode(ref.cases[0]!.greedy_64)).toBe(ref.cases[0]!.greedy_text);
  });

  it("the decoder never prints BOS/EOS/pad but keeps <think> tags", () => {
    const d = text.createDecoder();
    const ids = [2041, ...text.encode("<think>\nhi</think>ok"), 2042, 2043];
    expect(d.push(ids) + d.flush()).toBe("<think>\nhi</think>ok");
  });

  it("reads chat_template.jinja when present and reports a missing template clearly", async () => {
    const dir = await tempDir();
    await cp(TINY_R1, dir, { recursive: true });
    await writeFile(join(dir, "chat_template.jinja"), "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[bot]{% endif %}");
    const t = await loadTextModel(dir);
    expect(t.applyChatTemplate([{ role: "user", content: "x" }])).toBe("[user]x[bot]");
    expect(t.promptOpensThink).toBe(false);
    const tc = JSON.parse(readFileSync(join(TINY_R1, "tokenizer_config.json"), "utf8"));
    delete tc.chat_template;
    const dir2 = await tempDir();
    await cp(TINY_R1, dir2, { recursive: true });
    await writeFile(join(dir2, "tokenizer_config.json"), JSON.stringify(tc));
    const t2 = await loadTextModel(dir2);
    expect(() => t2.applyChatTemplate([{ role: "user", content: "x" }])).toThrow(/no chat template/);
  });
});

describe("stop strings", () => {
  const cases = [
    { text: "The answer is 42.\nUser: next", stops: ["\nUser:"], want: "The answer is 42.", stopped: true },
    { text: "abcabcabd", stops: ["abd"], want: "abcabc", stopped: true },
    { text: "no stop here", stops: ["zzz", "stop!"], want: "no stop here", stopped: false },
    { text: "early STOP and late END", stops: ["END", "STOP"], want: "early ", stopped: true },
    { text: "partial sto", stops: ["stop"], want: "partial sto", stopped: false },
    { text: "x", stops: [], want: "x", stopped: false },
  ];
  it("give the same emitted text for every chunking (fuzz)", () => {
    const rnd = seededRandom(7);
    for (const c of cases) {
      for (let trial = 0; trial < 50; trial++) {
        const m = createStopMatcher(c.stops);
        let out = "";
        let stopped = false;
        for (const chunk of randomChunks([...c.text], rnd)) {
          const r = m.push(chunk.join(""));
          out += r.emit;
          if (r.stopped) {
            stopped = true;
            break;
          }
        }
        if (!stopped) out += m.flush();
        expect(out).toBe(c.want);
        expect(stopped).toBe(c.stopped);
      }
    }
  });
  it("includeStop (vLLM's include_stop_str_in_output) keeps the stop string that ended the text", () => {
    const run = (stops: string[], chunks: string[]) => {
      const m = createStopMatcher(stops, { includeStop: true });
      let out = "";
      for (const c of chunks) {
        const r = m.push(c);
        out += r.emit;
        if (r.stopped) return out;
      }
      return out + m.flush();
    };
    expect(run(["\nUser:"], ["The answer is 42.\nUs", "er: next"])).toBe("The answer is 42.\nUser:");
    expect(run(["END", "STOP"], ["early STOP and late END"])).toBe("early STOP");
    expect(run(["ab", "abc"], ["xabcd"])).toBe("xabc"); // the longest at the earliest place
    expect(run(["zzz"], ["no stop"])).toBe("no stop");
  });
  it("hold back only what could start a stop string", () => {
    const m = createStopMatcher(["</answer>"]);
    expect(m.push("hello </ans").emit).toBe("hello ");
    expect(m.push("wer").emit).toBe("");
    expect(m.push("x").emit).toBe("</answerx");
  });
});

describe("reasoning split", () => {
  const stream = "1 + 2 = 3.\nSo 1 + 2 = 3.\n</think>\n\nThe answer is \\boxed{3}.";
  it("splits reasoning and answer for every chunking (fuzz)", () => {
    const rnd = seededRandom(9);
    for (let trial = 0; trial < 100; trial++) {
      for (const [opens, s] of [[true, stream], [false, `<think>\n${stream}`], [false, "plain answer"]] as const) {
        const sp = new ReasoningSplitter({ implicitOpen: opens });
        let r = "";
        let a = "";
        for (const chunk of randomChunks([...s], rnd)) {
          const o = sp.push(chunk.join(""));
          r += o.reasoning;
          a += o.content;
        }
        const o = sp.flush();
        r += o.reasoning;
        a += o.content;
        if (s === "plain answer") {
          expect([r, a]).toEqual(["", "plain answer"]);
        } else {
          expect(r).toBe("1 + 2 = 3.\nSo 1 + 2 = 3.");
          expect(a).toBe("The answer is \\boxed{3}.");
        }
      }
    }
  });
  it("without an implicit open, a partial tag that never completes is answer text", () => {
    const sp = new ReasoningSplitter({ implicitOpen: false });
    const o1 = sp.push(" <thi");
    const o2 = sp.flush();
    expect(o1.reasoning + o2.reasoning).toBe("");
    expect(o1.content + o2.content).toBe("<thi");
  });
  it("an unfinished think block is all reasoning", () => {
    const sp = new ReasoningSplitter({ implicitOpen: true });
    const o1 = sp.push("still thinking </thi");
    const o2 = sp.flush();
    expect(o1.reasoning + o2.reasoning).toBe("still thinking </thi");
    expect(o1.content + o2.content).toBe("");
  });
});
