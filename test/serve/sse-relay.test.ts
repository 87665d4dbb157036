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
    // the gateway's upstream reads land in one buffer per connection, overwritten by the next read
    // (h1-pool): nothing the relay keeps may be a view of it
    read.fill(0x7a);
    prev = c;
  }
  const rest = r.flush();
  if (rest) out += rest.toString();
  return { out, stats: r.stats };
}

/** The data of `b`, which must be exactly one HTTP/1.1 chunk (lower-case hex size, CRLF, data, CRLF). */
function dechunk(b: Buffer): string {
  const s = b.toString("latin1");
  const m = /^([0-9a-f]+)\r\n/.exec(s);
  expect(m, `not a chunk: ${JSON.stringify(s.slice(0, 40))}`).not.toBeNull();
  const size = parseInt(m![1], 16);
  expect(b.length).toBe(m![0].length + size + 2);
  expect(s.endsWith("\r\n")).toBe(true);
  return b.subarray(m![0].length, m![0].length + size).toString();
}

/** Feeds chunk-framed bytes to a relay read by read, cut at `cuts`, as the upstream client does. */
function relayFramed(bytes: Buffer, cuts: number[], chunked: boolean, o: ConstructorParameters<typeof SseRelay>[0]) {
  const r = new SseRelay(o);
  const dec = new ChunkedDecoder();
  const ranges = new Ranges();
  let out = "";
  let passed = 0;
  let prev = 0;
  for (const c of [...cuts, bytes.length]) {
    const read = Buffer.from(bytes.subarray(prev, c));
    ranges.clear();
    dec.feed(read, 0, ranges);
    if (ranges.n > 0 && r.push(read, ranges, chunked)) {
      out += chunked ? dechunk(r.out) : r.out.toString();
      if (r.passedThrough) passed++;
    }
    prev = c;
  }
  const rest = r.flush();
  if (rest) out += rest.toString();
  return { out, stats: r.stats, passed };
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


    it("count every event of a chunk that holds several, whatever byte starts the next one", () => {
      const tok = (t: string) => ev({ choices: [{ index: 0, delta: { content: t }, finish_reason: null }] });
      for (const second of [tok("b"), "\r" + tok("b"), ": comment\n\n" + tok("b")]) {
        const pieces = [tok("a"), tok("x") + second, tok("c")];
        const bytes = framed(pieces, () => 1);
        const reference = relayAll(pieces.join(""), [], { ...opts, fields: [...opts.fields] });
        const got = relayFramed(bytes, [], false, opts);
        expect(got.out).toBe(reference.out);
        expect(got.stats.events).toBe(reference.stats.events);
        expect(got.stats.events).toBe(4);
      }
    });

    it("give the same bytes and counts as the unframed relay for any chunking, extensions and TCP cuts, framed as one chunk when asked", () => {
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
        const { out, stats } = relayFramed(bytes, cuts, k % 2 === 1, opts);
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
      const { out, stats, passed } = relayFramed(bytes, cuts.slice(0, -1), false, opts);
      expect(out).toBe(plain.join(""));
      expect(passed).toBe(plain.length);
      expect(stats).toMatchObject({ events: 39, finishReason: "length" });
    });
  });
});

describe("SSE relay: a stream's reasoning events, rewritten from a learnt template", () => {
  const head = { id: "chatcmpl-1", object: "chat.completion.chunk", created: 1732312345, model: "r1" };
  type Fields = ("reasoning_content" | "reasoning")[];
  const reasoningEv = (key: string, text: string, extra: Record<string, unknown> = {}) => ev({ ...head, choices: [{ index: 0, delta: { [key]: text, ...extra }, logprobs: null, finish_reason: null }] });
  /** What the JSON path makes of one event: the oracle the byte path must agree with. */
  function oracle(event: string, fields: Fields): unknown {
    const o = JSON.parse(event.slice(6));
    for (const c of o.choices ?? []) {
      const d = c.delta;
      const r = d.reasoning !== undefined ? d.reasoning : d.reasoning_content;
      if (r === undefined || fields.length === 0) continue;
      delete d.reasoning;
      delete d.reasoning_content;
      for (const f of fields) d[f] = r;
    }
    return o;
  }
  const parsedEvents = (out: string) => out.split("\n\n").filter((e) => e.startsWith("data: {")).map((e) => JSON.parse(e.slice(6)));
  const rand = seededRandom(5);
  const pieces = ["think", " ", "é", "中", "\"reasoning\":\"x", "\\", "\n", "\t", "\u0001", "\u2028", "😀", "\"", "/", "}", "]},{"];
  const randomText = () => Array.from({ length: Math.floor(rand() * 6) }, () => pieces[Math.floor(rand() * pieces.length)]).join("");

  for (const key of ["reasoning", "reasoning_content"]) {
    for (const fields of [["reasoning_content", "reasoning"], ["reasoning"], ["reasoning_content"]] as Fields[]) {
      it(`upstream ${key} → ${fields.join(" + ")}: every event as the JSON path would make it, counted once, for any chunking`, () => {
        const events = [
          ev({ ...head, choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }] }),
          // the first is learnt from (a text that spells a key is not), the rest take the template when they fit
          reasoningEv(key, "Okay"),
          ...Array.from({ length: 59 }, () => reasoningEv(key, randomText())),
          // same prefix, other structure: a second key, a finish reason, an error, content
          reasoningEv(key, "a", { content: null }),
          ev({ ...head, choices: [{ index: 0, delta: { [key]: "b" }, logprobs: null, finish_reason: "stop" }] }),
          reasoningEv(key, "c"),
          // the template's length, another byte before or after the string
          reasoningEv(key, "d").replace('"created":1732312345', '"created":1732312346'),
          reasoningEv(key, "e").replace('"logprobs":null', '"logprobs":9999'),
          ev({ ...head, choices: [{ index: 0, delta: { content: "42" }, logprobs: null, finish_reason: null }] }),
          "data: [DONE]\n\n",
        ];
        const input = events.join("");
        const expected = events.filter((e) => e.startsWith("data: {")).map((e) => oracle(e, fields));
        const bytes = Buffer.byteLength(input);
        for (let k = 0; k < 40; k++) {
          const cuts = k === 0 ? [] : Array.from({ length: 1 + (k % 9) }, () => Math.floor(rand() * bytes)).sort((a, b) => a - b);
          const { out, stats } = relayAll(input, cuts, { fields, dropUsageChunk: true });
          expect(parsedEvents(out)).toEqual(expected);
          expect(out.endsWith("data: [DONE]\n\n")).toBe(true);
          expect(stats).toMatchObject({ events: 66, finishReason: "stop" });
        }
        // as the upstream client gives it: one event per chunk, read by read, the output framed
        const framedBytes = Buffer.from(events.map((e) => `${Buffer.byteLength(e).toString(16)}\r\n${e}\r\n`).join("") + "0\r\n\r\n");
        const cuts: number[] = [];
        for (let at = 0, i = 0; i < events.length - 1; i++) cuts.push((at += Buffer.byteLength(`${Buffer.byteLength(events[i]).toString(16)}\r\n${events[i]}\r\n`)));
        for (const c of [cuts, cuts.filter((_, i) => i % 3 === 0)]) {
          const got = relayFramed(framedBytes, c, true, { fields, dropUsageChunk: true });
          expect(parsedEvents(got.out)).toEqual(expected);
          expect(got.stats).toMatchObject({ events: 66, finishReason: "stop" });
        }
      });
    }
  }

  for (const key of ["reasoning_content", "reasoning"]) {
    it(`DeepSeek's API shape (the absent part named, null; key ${key}): both phases as the JSON path would make them, for any chunking`, () => {
      const delta = (d: Record<string, unknown>) => ev({ ...head, system_fingerprint: "fp_1", choices: [{ index: 0, delta: d, logprobs: null, finish_reason: null }] });
      const events = [
        delta({ role: "assistant", content: null, [key]: "" }),
        ...Array.from({ length: 30 }, (_, i) => delta({ content: null, [key]: i === 0 ? "Okay" : randomText() })),
        ...Array.from({ length: 30 }, (_, i) => delta({ content: i === 0 ? "The" : randomText(), [key]: null })),
        // the answer's shape with something else changed: a second null key, a finish reason
        delta({ content: "x", [key]: null, tool_calls: null }),
        delta({ content: "y", [key]: null }), // the template again, found by the scan this time
        ev({ ...head, system_fingerprint: "fp_1", choices: [{ index: 0, delta: { content: "!", [key]: null }, logprobs: null, finish_reason: "stop" }] }),
        "data: [DONE]\n\n",
      ];
      const input = events.join("");
      const bytes = Buffer.byteLength(input);
      for (const fields of [["reasoning_content", "reasoning"], ["reasoning"], ["reasoning_content"]] as Fields[]) {
        const expected = events.filter((e) => e.startsWith("data: {")).map((e) => oracle(e, fields));
        for (let k = 0; k < 20; k++) {
          const cuts = k === 0 ? [] : Array.from({ length: 1 + (k % 9) }, () => Math.floor(rand() * bytes)).sort((a, b) => a - b);
          const { out, stats } = relayAll(input, cuts, { fields, dropUsageChunk: true });
          expect(parsedEvents(out)).toEqual(expected);
          expect(stats).toMatchObject({ events: 63, finishReason: "stop" });
        }
        const framedBytes = Buffer.from(events.map((e) => `${Buffer.byteLength(e).toString(16)}\r\n${e}\r\n`).join("") + "0\r\n\r\n");
        const cuts: number[] = [];
        for (let at = 0, i = 0; i < events.length - 1; i++) cuts.push((at += Buffer.byteLength(`${Buffer.byteLength(events[i]).toString(16)}\r\n${events[i]}\r\n`)));
        const got = relayFramed(framedBytes, cuts, true, { fields, dropUsageChunk: true });
        expect(parsedEvents(got.out)).toEqual(expected);
        // each phase's first token teaches a template (not the opening chunk, whose empty text has the
        // role beside it: a template learnt from it fit no token after it), and its other tokens take it
        const relay = new SseRelay({ fields, dropUsageChunk: true });
        events.forEach((e, i) => {
          relay.push(Buffer.from(e));
          if ((i >= 2 && i <= 30) || (i >= 32 && i <= 60)) expect(relay.simple, `event ${i}`).toBe(true);
        });
      }
    });
  }

  it("SGLang's shape (every key named, null when absent, `usage: null` in every chunk): renamed as the JSON path would, `usage: null` kept, plain events untouched", () => {
    const chunk = (d: Record<string, unknown>, finish: string | null = null) =>
      ev({ ...head, choices: [{ index: 0, delta: { role: null, content: null, reasoning_content: null, tool_calls: null, ...d }, logprobs: null, finish_reason: finish, matched_stop: null }], usage: null });
    const events = [
      chunk({ role: "assistant", content: "" }),
      ...Array.from({ length: 20 }, (_, i) => chunk({ reasoning_content: i === 0 ? "Hmm" : randomText() })),
      ...Array.from({ length: 20 }, (_, i) => chunk({ content: i === 0 ? "So" : randomText() })),
      chunk({ content: "" }, "stop"),
      ev({ ...head, choices: [], usage: { prompt_tokens: 4, completion_tokens: 41, total_tokens: 45 } }),
      "data: [DONE]\n\n",
    ];
    const input = events.join("");
    const bytes = Buffer.byteLength(input);
    for (const fields of [["reasoning_content", "reasoning"], ["reasoning"], ["reasoning_content"]] as Fields[]) {
      // the injected usage chunk is dropped; `usage: null` is no usage and stays
      const expected = events.filter((e) => e.startsWith("data: {") && !e.includes('"choices":[]')).map((e) => oracle(e, fields));
      for (let k = 0; k < 20; k++) {
        const cuts = k === 0 ? [] : Array.from({ length: 1 + (k % 9) }, () => Math.floor(rand() * bytes)).sort((a, b) => a - b);
        const { out, stats } = relayAll(input, cuts, { fields, dropUsageChunk: true });
        expect(parsedEvents(out)).toEqual(expected);
        expect(stats).toMatchObject({ events: 41, finishReason: "stop", promptTokens: 4, completionTokens: 41 });
      }
    }
    // nothing to rename: every event but the injected usage chunk goes as it came
    const { out } = relayAll(input, [], { fields: [], dropUsageChunk: true });
    expect(out).toBe(events.filter((e) => !e.includes('"choices":[]')).join(""));
  });

  it("keeps the upstream's bytes around the text (no re-serialisation), and forwards events whose key is already the only name untouched", () => {
    // spaces and an escape that JSON.stringify would not write: the bytes show which path made them
    const spaced = (text: string) => reasoningEv("reasoning", text).replace('"index":0', '"index": 0');
    const e = spaced("x\\u00e9");
    const stream = spaced("first") + e;
    const both = relayAll(stream, [], { fields: ["reasoning_content", "reasoning"], dropUsageChunk: true }).out;
    expect(both.split("\n\n")[1]).toBe(e.trimEnd().replace('"reasoning":"x\\\\u00e9"', '"reasoning_content":"x\\\\u00e9","reasoning":"x\\\\u00e9"'));
    expect(relayAll(stream, [], { fields: ["reasoning"], dropUsageChunk: true }).out).toBe(stream);
  });

  it("an event that differs from the template only in bytes that are not a valid string body goes the JSON path", () => {
    const stream = reasoningEv("reasoning", "ok") + reasoningEv("reasoning", "ok").replace('"ok"', '"a\\x"') + reasoningEv("reasoning", "ok").replace('"ok"', '"a"b"');
    const { out } = relayAll(stream, [], { fields: ["reasoning_content"], dropUsageChunk: true });
    const [first, bad1, bad2] = out.split("\n\n");
    expect(JSON.parse(first.slice(6)).choices[0].delta).toEqual({ reasoning_content: "ok" });
    // not JSON: the JSON path forwards them as they came
    expect(bad1 + "\n\n").toBe(reasoningEv("reasoning", "ok").replace('"ok"', '"a\\x"'));
    expect(bad2 + "\n\n").toBe(reasoningEv("reasoning", "ok").replace('"ok"', '"a"b"'));
  });
});
