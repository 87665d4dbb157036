import { describe, expect, it } from "vitest";
import { SseRelay } from "../../src/engine/serve/sse-relay.js";

const ev = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`;

function relayAll(input: string, cuts: number[], opts: ConstructorParameters<typeof SseRelay>[0]) {
  const r = new SseRelay(opts);
  const buf = Buffer.from(input);
  let out = "";
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    // reads arrive whole or as parts (the data of several HTTP chunks)
    const read = Buffer.from(buf.subarray(prev, c));
    const k = Math.floor(read.length / 2);
    if (r.push(prev % 2 ? [read.subarray(0, k), read.subarray(k)] : read)) out += r.out.toString();
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
});
