import { describe, expect, it } from "vitest";
import { seededRandom } from "../../src/engine/runtime/embedded/sampler.js";
import { ChunkedDecoder, Ranges } from "../../src/engine/serve/h1-chunked.js";
import { SseRelay } from "../../src/engine/serve/sse-relay.js";

const ev = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;

function relayAll(input: string, cuts: number[], opts: ConstructorParameters<typeof SseRelay>[0]) {
  const r = new SseRelay(opts);
  const buf = Buffer.from(input);
  let out = "";
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    // reads arrive whole or in two ranges (the data of two HTTP chunks)
    const read = Buffer.from(buf.subarray(prev, c));
    const k = Math.floor(read.length / 2);
    if (r.push(read, prev % 2 ? Ranges.of(0, k, k, read.length) : undefined)) out += r.out.toString();
    prev = c;
  }
  const rest = r.flush();
  if (rest) out += rest.toString();
  return { out, stats: r.stats };
}

describe("SSE relay", () => {
  const stream =
    ev({ choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] }) +
    ev({ choices: [{ index: 0, delta: { reasoning: "think é" }, finish_reason: null }] }) +
    ev({ choices: [{ index: 0, delta: { content: "42" }, finish_reason: null }] }) +
    ": keep-alive comment\n\n" +
    ev({ choices: [{ index: 0, delta: { content: "!" }, finish_reason: "stop" }] }) +
    ev({ choices: [], usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 } }) +
    "data: [DONE]\n\n";

  it("renames reasoning to both fields, drops an injected usage chunk, counts tokens and finish, for any TCP chunking", () => {
    const expected = relayAll(stream, [], { fields: ["reasoning_content", "reasoning"], dropUsageChunk: true }).out;
    expect(expected).toContain('"reasoning_content":"think é","reasoning":"think é"');
    expect(expected).not.toContain("usage");
    expect(expected).toContain("data: [DONE]");
    const b = Buffer.from(stream).length;
    for (let k = 0; k < 3000; k++) {
      const cuts = Array.from({ length: 1 + (k % 7) }, () => Math.floor(Math.random() * b)).sort((x, y) => x - y);
      const { out, stats } = relayAll(stream, cuts, { fields: ["reasoning_content", "reasoning"], dropUsageChunk: true });
      expect(out).toBe(expected);
      expect(stats).toMatchObject({ events: 3, promptTokens: 5, completionTokens: 3, finishReason: "stop" });
    }
  });

  it("forwards events untouched when nothing needs changing (byte-identical) and keeps a client-requested usage chunk", () => {
    const { out } = relayAll(stream.replace('"reasoning"', '"other"'), [10, 200], { fields: ["reasoning"], dropUsageChunk: false });
    expect(out).toBe(stream.replace('"reasoning"', '"other"'));
  });

  it("maps reasoning_content to reasoning only, and CRLF framing works", () => {
    const s = ev({ choices: [{ index: 0, delta: { reasoning_content: "r" } }] }).replace("\n\n", "\r\n\r\n");
    const { out } = relayAll(s, [3], { fields: ["reasoning"], dropUsageChunk: false });
    expect(JSON.parse(out.slice(6))).toEqual({ choices: [{ index: 0, delta: { reasoning: "r" } }] });
  });

  it("a read mixing a CRLF event and LF events is split at both (the usage chunk alone is dropped)", () => {
    const usage = ev({ id: "c", choices: [], usage: { prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 } }).replace("\n\n", "\r\n\r\n");
    const input = ev({ id: "c", choices: [{ index: 0, text: "a", finish_reason: "stop" }] }) + usage + "data: [DONE]\n\n";
    const { out, stats } = relayAll(input, [], { fields: [], dropUsageChunk: true });
    expect(out).toBe(input.replace(usage, ""));
    expect(stats).toMatchObject({ events: 1, promptTokens: 2, completionTokens: 1, finishReason: "stop" });
  });

  it("text that ends like a key (mirror, treasoning, a message key, vLLM's stop_reason) is forwarded untouched and not taken for one", () => {
    const events =
      ev({ id: "c", choices: [{ index: 0, text: "mirror", logprobs: null, finish_reason: null, stop_reason: null }] }) +
      ev({ id: "c", choices: [{ index: 0, text: "treasoning", logprobs: null, finish_reason: null }], meta: { message: "a" } }) +
      ev({ id: "c", choices: [{ index: 0, text: "x", logprobs: null, finish_reason: "stop", stop_reason: "</answer>" }] }) +
      "data: [DONE]\n\n";
    for (const cuts of [[], [40], [150, 300]]) {
      const { out, stats } = relayAll(events, cuts, { fields: ["reasoning_content"], dropUsageChunk: true });
      expect(out).toBe(events);
      expect(stats).toMatchObject({ events: 3, finishReason: "stop" });
    }
  });

  describe("chunk-framed reads, as the upstream client gives them (offsets into the read)", () => {
    const content = (k: number, finish: string | null = null) => ev({ id: "c", choices: [{ index: 0, text: `t${k}`, logprobs: null, finish_reason: finish }] });
    const usage = ev({ id: "c", choices: [], usage: { prompt_tokens: 7, completion_tokens: 40, total_tokens: 47 } });
    const events = [
      ev({ choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }] }),
      ...Array.from({ length: 38 }, (_, k) => content(k)),
      ": keep-alive\n\n",
      // keys right after the part every event of a stream shares
      ev({ id: "c", choices: [{ index: 0, delta: { reasoning: "r" }, finish_reason: null }] }),
      ev({ id: "c", choices: [{ index: 0, text: "u", logprobs: null, finish_reason: null }], usage: { prompt_tokens: 7, completion_tokens: 39, total_tokens: 46 } }),
      ev({ id: "c", choices: [{ index: 0, finish_reason: "length", text: "t39", logprobs: null }] }),
      usage,
      "data: [DONE]\n\n",
    ];
    const opts = { fields: ["reasoning_content", "reasoning"] as const, dropUsageChunk: true };

    /** Frames `pieces` as chunks (some with an extension that mentions usage), then cuts the bytes into reads. */
    function framed(pieces: string[], rand: () => number): Buffer {
      const parts = pieces.map((p) => {
        const ext = rand() < 0.1 ? ';note="usage" ' : "";
        return `${Buffer.byteLength(p).toString(16)}${ext}\r\n${p}\r\n`;
      });
      return Buffer.from(parts.join("") + "0\r\n\r\n");
    }

    function relayFramed(bytes: Buffer, cuts: number[]) {
      const r = new SseRelay(opts);
      const dec = new ChunkedDecoder();
      const ranges = new Ranges();
      let out = "";
      let passed = 0;
      let prev = 0;
      for (const c of [...cuts, bytes.length]) {
        const read = Buffer.from(bytes.subarray(prev, c));
        ranges.clear();
        dec.feed(read, 0, ranges);
        if (ranges.n > 0 && r.push(read, ranges)) {
          out += r.out.toString();
          if (r.passedThrough) passed++;
        }
        prev = c;
      }
      const rest = r.flush();
      if (rest) out += rest.toString();
      return { out, stats: r.stats, passed };
    }

    it("count every event of a chunk that holds several, whatever byte starts the next one", () => {
      const tok = (t: string) => ev({ choices: [{ index: 0, delta: { content: t }, finish_reason: null }] });
      for (const second of [tok("b"), "\r" + tok("b"), ": comment\n\n" + tok("b")]) {
        const pieces = [tok("a"), tok("x") + second, tok("c")];
        const bytes = framed(pieces, () => 1);
        const reference = relayAll(pieces.join(""), [], { ...opts, fields: [...opts.fields] });
        const got = relayFramed(bytes, []);
        expect(got.out).toBe(reference.out);
        expect(got.stats.events).toBe(reference.stats.events);
        expect(got.stats.events).toBe(4);
      }
    });

    it("give the same bytes and counts as the unframed relay for any chunking, extensions and TCP cuts", () => {
      const reference = relayAll(events.join(""), [], { ...opts, fields: [...opts.fields] });
      expect(reference.stats).toMatchObject({ events: 41, promptTokens: 7, completionTokens: 40, finishReason: "length" });
      expect(reference.out).not.toContain("usage");
      expect(reference.out).toContain('"reasoning_content":"r","reasoning":"r"');
      const rand = seededRandom(11);
      for (let k = 0; k < 1500; k++) {
        // chunks: mostly one event each; sometimes an event split over two chunks, or two events in one
        const pieces: string[] = [];
        for (let i = 0; i < events.length; i++) {
          const e = events[i];
          const x = rand();
          if (x < 0.15 && e.length > 4) {
            const at = 1 + Math.floor(rand() * (e.length - 2));
            pieces.push(e.slice(0, at), e.slice(at));
          } else if (x < 0.25 && i + 1 < events.length) pieces.push(e + events[++i]);
          else pieces.push(e);
        }
        const bytes = framed(pieces, rand);
        const cuts = Array.from({ length: 1 + Math.floor(rand() * 12) }, () => Math.floor(rand() * bytes.length)).sort((a, b) => a - b);
        const { out, stats } = relayFramed(bytes, cuts);
        expect(out).toBe(reference.out);
        expect(stats).toEqual(reference.stats.firstEventAt === undefined ? reference.stats : { ...reference.stats, firstEventAt: stats.firstEventAt, lastEventAt: stats.lastEventAt });
      }
    });

    it("reads of whole one-event chunks pass through as they are", () => {
      const plain = events.filter((e) => !e.includes("reasoning") && !e.includes("usage"));
      const bytes = framed(plain, () => 1);
      // cut at every chunk boundary: each read is whole chunks
      const cuts: number[] = [];
      let at = 0;
      for (const p of plain) cuts.push((at += `${Buffer.byteLength(p).toString(16)}\r\n${p}\r\n`.length));
      const { out, stats, passed } = relayFramed(bytes, cuts.slice(0, -1));
      expect(out).toBe(plain.join(""));
      expect(passed).toBe(plain.length);
      expect(stats).toMatchObject({ events: 39, finishReason: "length" });
    });
  });
});
