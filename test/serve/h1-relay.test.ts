/**
 * The proxied streaming path over h1-pool.ts: `dsr serve --upstream` (the built CLI, a real child
 * process) in front of (a) the stand-in upstream and (b) a scripted upstream on a raw TCP socket that
 * writes exact bytes — chunk sizes, splits across reads, trailers, early closes — so the test can
 * check what reaches a raw client byte for byte, and count the upstream's connections.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import OpenAI from "openai";
import { readFile } from "node:fs/promises";
import { connect, createServer, type Server, type Socket } from "node:net";
import type { AddressInfo } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { selfSignedCert, startServe, type ServeProc } from "./helpers.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const ev = (text: string, finish: string | null = null) =>
  `data: {"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":${JSON.stringify(text)},"logprobs":null,"finish_reason":${finish ? `"${finish}"` : "null"}}]}\n\n`;
const chunk = (s: string) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`;
const SSE_HEAD = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nkeep-alive: timeout=30\r\n\r\n";

interface Scripted {
  url: string;
  /** Connections that carried a generation request (probes and /v1/models are not counted). */
  connections: number;
  /** Generation requests received, with their bodies. */
  requests: string[];
  /** Scripts that could not finish writing because the connection was gone. */
  cut: number;
  close(): Promise<void>;
}

/**
 * A raw HTTP/1.1 upstream: answers /health and /v1/models itself and hands each POST to `script`,
 * which writes whatever bytes it likes (head included) and resolves when the response is complete.
 * Keep-alive: requests on one connection are served in turn.
 */
async function scripted(script: (s: Socket, n: number) => Promise<void>): Promise<Scripted> {
  const st: Scripted = { url: "", connections: 0, requests: [], cut: 0, close: async () => undefined };
  const sockets = new Set<Socket>();
  const used = new WeakSet<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
    s.on("error", () => undefined);
    let buf = Buffer.alloc(0);
    let busy = false;
    const next = async () => {
      if (busy || s.destroyed) return;
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) return;
      const head = buf.toString("latin1", 0, end);
      const len = Number(/content-length: *(\d+)/i.exec(head)?.[1] ?? 0);
      if (buf.length < end + 4 + len) return;
      const body = buf.toString("utf8", end + 4, end + 4 + len);
      buf = buf.subarray(end + 4 + len);
      const [method, path] = head.split(" ");
      busy = true;
      if (method === "GET") {
        const j = path === "/v1/models" ? JSON.stringify({ object: "list", data: [{ id: "m", object: "model" }] }) : "{}";
        s.write(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${j.length}\r\n\r\n${j}`);
      } else {
        st.requests.push(body);
        if (!used.has(s)) st.connections++;
        used.add(s);
        await script(s, st.requests.length).catch(() => st.cut++);
      }
      busy = false;
      void next();
    };
    s.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      void next();
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  st.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  st.close = () =>
    new Promise<void>((r) => {
      for (const s of sockets) s.destroy();
      server.close(() => r());
    });
  return st;
}

/** Writes `parts` with a pause between them so each arrives as its own read. */
async function writeApart(s: Socket, parts: string[], gapMs = 15): Promise<void> {
  for (const p of parts) {
    if (s.destroyed) throw new Error("client gone");
    s.write(p);
    await sleep(gapMs);
  }
}

/** A raw client: sends one request, returns the response head and the body bytes exactly as received. */
async function rawPost(url: string, body: unknown, opts: { abortAfterBytes?: number; stallMs?: number; ca?: Buffer } = {}): Promise<{ head: string; body: Buffer }> {
  const u = new URL(url);
  const s = u.protocol === "https:" ? tlsConnect({ port: Number(u.port), host: u.hostname, ca: opts.ca }) : connect(Number(u.port), u.hostname);
  if (opts.stallMs) {
    // a slow client: nothing is read for a while, so the gateway must hold the upstream back
    s.pause();
    setTimeout(() => s.resume(), opts.stallMs);
  }
  const payload = JSON.stringify(body);
  s.write(`POST /v1/completions HTTP/1.1\r\nhost: ${u.host}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(payload)}\r\n\r\n${payload}`);
  let all = Buffer.alloc(0);
  return new Promise((resolve, reject) => {
    s.on("data", (d: Buffer) => {
      all = Buffer.concat([all, d]);
      const end = all.indexOf("\r\n\r\n");
      if (opts.abortAfterBytes !== undefined && end >= 0 && all.length - end - 4 >= opts.abortAfterBytes) {
        s.destroy();
        return resolve({ head: all.toString("latin1", 0, end), body: all.subarray(end + 4) });
      }
      // a complete chunked body ends with the zero-size chunk
      if (end >= 0 && all.subarray(end).indexOf("\r\n0\r\n\r\n") >= 0) {
        s.end();
        resolve({ head: all.toString("latin1", 0, end), body: all.subarray(end + 4) });
      }
    });
    s.on("error", reject);
    s.on("close", () => reject(new Error(`connection closed; got ${all.toString()}`)));
  });
}

/** Decodes a chunked body (strictly) into its payload. */
function dechunk(b: Buffer): string {
  let out = "";
  let pos = 0;
  for (;;) {
    const lf = b.indexOf("\r\n", pos);
    const n = parseInt(b.toString("latin1", pos, lf), 16);
    if (n === 0) return out;
    out += b.toString("utf8", lf + 2, lf + 2 + n);
    expect(b.toString("latin1", lf + 2 + n, lf + 4 + n)).toBe("\r\n");
    pos = lf + 4 + n;
  }
}

describe("proxied streams over the raw HTTP/1.1 relay", () => {
  let standin: Standin;
  let gw: ServeProc;

  beforeAll(async () => {
    standin = await startStandin({ tokens: 64, paceMs: 1, reasoningTokens: 8, model: "m" });
    gw = await startServe(["--upstream", standin.url]);
  });

  afterAll(async () => {
    await gw?.stop();
    await standin?.close();
  });

  it("the openai SDK sees every token once, in order, for 30 concurrent coalescing streams (chat and completions)", async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
    const want = Array.from({ length: 64 }, (_, k) => ` t${k}`);
    await Promise.all(
      Array.from({ length: 30 }, async (_, i) => {
        if (i % 2) {
          const s = await client.completions.create({ model: "m", prompt: "x", stream: true });
          let text = "";
          for await (const ch of s) text += ch.choices[0]?.text ?? "";
          expect(text).toBe(want.join(""));
        } else {
          const s = await client.chat.completions.create({ model: "m", messages: [{ role: "user", content: "x" }], stream: true });
          let reasoning = "";
          let content = "";
          for await (const ch of s) {
            const d = ch.choices[0]?.delta as Record<string, string> | undefined;
            reasoning += d?.reasoning_content ?? "";
            content += d?.content ?? "";
          }
          expect(reasoning).toBe(want.slice(0, 8).join(""));
          expect(content).toBe(want.slice(8).join(""));
        }
      }),
    );
  });

  it("DeepSeek's API shape (the absent part null in every delta) through both relays: 30 concurrent coalescing streams, every token once, in order", async () => {
    // reads that merge several events end in a connection's read buffer that the next read
    // overwrites: a template that kept a view of it garbled the answer's later events (session 16)
    const ds = await startStandin({ tokens: 64, paceMs: 1, reasoningTokens: 8, reasoningField: "reasoning_content", deepseekShape: true, model: "m" });
    const pair = [await startServe(["--upstream", ds.url]), await startServe(["--upstream", ds.url], { env: { DSR_RELAY: "js" } })];
    const want = Array.from({ length: 64 }, (_, k) => ` t${k}`);
    try {
      for (const g of pair) {
        const client = new OpenAI({ baseURL: `${g.url}/v1`, apiKey: "none", maxRetries: 0 });
        await Promise.all(
          Array.from({ length: 30 }, async () => {
            const s = await client.chat.completions.create({ model: "m", messages: [{ role: "user", content: "x" }], stream: true });
            let reasoning = "";
            let content = "";
            for await (const ch of s) {
              const d = ch.choices[0]?.delta as Record<string, string | null> | undefined;
              expect(d?.reasoning ?? null).toBe(d?.reasoning_content ?? null); // both names, as the JSON path writes them
              reasoning += d?.reasoning_content ?? "";
              content += d?.content ?? "";
            }
            expect(reasoning).toBe(want.slice(0, 8).join(""));
            expect(content).toBe(want.slice(8).join(""));
          }),
        );
      }
    } finally {
      for (const g of pair) await g.stop();
      await ds.close();
    }
  });

  it("forwards the client's x-request-id to the upstream byte for byte, a non-ASCII byte included", async () => {
    const u = new URL(gw.url);
    const payload = JSON.stringify({ model: "m", prompt: "x", stream: true, max_tokens: 2 });
    const s = connect(Number(u.port), u.hostname);
    // 0xE9 as one raw byte (latin1), as a client may send it: not re-encoded as UTF-8 on the way up
    s.write(Buffer.from(`POST /v1/completions HTTP/1.1\r\nhost: ${u.host}\r\nx-request-id: r-\u00e9-1\r\ncontent-type: application/json\r\ncontent-length: ${payload.length}\r\n\r\n${payload}`, "latin1"));
    let all = Buffer.alloc(0);
    await new Promise<void>((resolve, reject) => {
      s.on("data", (d: Buffer) => {
        all = Buffer.concat([all, d]);
        if (all.indexOf("\r\n0\r\n\r\n") >= 0) resolve();
      });
      s.on("error", reject);
    });
    s.destroy();
    expect(all.toString("latin1")).toContain("x-request-id: r-\u00e9-1\r\n");
    // node:http (the stand-in) reads header values as latin1: one byte 0xE9 arrives as "é"
    expect(standin.requests.map((r) => r.id)).toContain("r-\u00e9-1");
  });

  it("keeps the upstream's keep-alive connections: sequential streams reuse one", async () => {
    let conns = 0;
    const count = () => conns++;
    standin.server.on("connection", count);
    try {
      for (let i = 0; i < 8; i++) {
        const r = await fetch(`${gw.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "x", stream: true, max_tokens: 4 }) });
        await r.text();
      }
      expect(conns).toBeLessThanOrEqual(1);
    } finally {
      standin.server.off("connection", count);
    }
  });
});

describe("the raw relay against a scripted upstream", () => {
  const upstreams: Scripted[] = [];
  const gateways: ServeProc[] = [];
  afterAll(async () => {
    for (const g of gateways) await g.stop();
    for (const u of upstreams) await u.close();
  });
  const setup = async (script: (s: Socket, n: number) => Promise<void>, more: string[] = []) => {
    const up = await scripted(script);
    upstreams.push(up);
    const gw = await startServe(["--upstream", up.url, ...more]);
    gateways.push(gw);
    return { up, gw };
  };

  it("forwards the upstream's chunks byte for byte (framing included) when nothing needs a change", async () => {
    const events = [ev(" a"), ev(" b"), ev(" c"), ev(" d", "length"), 'data: {"id":"cmpl-1","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":4,"total_tokens":5}}\n\n', "data: [DONE]\n\n"];
    const framed = events.map(chunk);
    const { gw } = await setup(async (s) => writeApart(s, [SSE_HEAD, ...framed, "0\r\n\r\n"]));
    // the client asks for usage itself, so the gateway has nothing to drop or rename
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true, stream_options: { include_usage: true } });
    expect(r.head).toMatch(/^HTTP\/1\.1 200/);
    expect(r.head.toLowerCase()).toContain("transfer-encoding: chunked");
    expect(r.body.toString()).toBe(framed.join("") + "0\r\n\r\n");
  });

  it("splits across reads anywhere (size line, data, CRLF), extensions and trailers: the client gets exactly the payload", async () => {
    const events = [ev(" a"), ev(" b"), ev(" c", "stop"), "data: [DONE]\n\n"];
    const c1 = chunk(events[0]);
    const c2 = chunk(events[1]);
    const c3 = `${Buffer.byteLength(events[2]).toString(16)};ext=1\r\n${events[2]}\r\n`;
    const c4 = chunk(events[3]);
    const wire = SSE_HEAD + c1 + c2 + c3 + c4 + "0\r\nx-trailer: 1\r\n\r\n";
    const b0 = SSE_HEAD.length;
    const cuts = [
      b0 + 1, // inside the first size line
      b0 + 60, // inside the first chunk's data
      b0 + c1.length + c2.length - 1, // between the CR and LF after the second chunk
      b0 + c1.length + c2.length + 4, // inside a size line with an extension
      b0 + c1.length + c2.length + c3.length + c4.length + 1, // inside the zero-size line
      wire.length - 3, // inside the trailers
    ];
    const parts = [0, ...cuts].map((c, i, a) => wire.slice(c, a[i + 1] ?? wire.length));
    const { gw, up } = await setup(async (s) => writeApart(s, parts, 20));
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true });
    expect(dechunk(r.body)).toBe(events.join(""));
    // the gateway asked for usage (the client did not), spliced into the body as sent
    expect(JSON.parse(up.requests[0])).toEqual({ stream_options: { include_usage: true }, model: "m", prompt: "x", stream: true });
    const m = await (await fetch(`${gw.url}/metrics`)).text();
    expect(m).toMatch(/dsr:request_success_total\{finished_reason="stop",model_name="m"\} 1/);
    expect(m).toMatch(/dsr:generation_tokens_total\{model_name="m"\} 3/);
  });

  it("an upstream that closes mid-chunk: complete events reach the client, then an in-band error; no partial event", async () => {
    const { gw, up } = await setup(async (s) => {
      await writeApart(s, [SSE_HEAD, chunk(ev(" a")), chunk(ev(" b")), chunk(ev(" c")).slice(0, 30)]);
      s.destroy();
    });
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true });
    const payload = dechunk(r.body);
    expect(payload.startsWith(ev(" a") + ev(" b") + "data: {")).toBe(true);
    const tail = payload.slice((ev(" a") + ev(" b")).length).split("\n\n").filter(Boolean);
    expect(JSON.parse(tail[0].slice(6)).error.code).toBe("upstream_error");
    expect(tail[1]).toBe("data: [DONE]");
    expect(up.requests.length).toBe(1); // never replayed after bytes were sent
  });

  it("retries before the first byte: a reset on a kept-alive socket goes to a fresh connection; a dead first instance to the next", async () => {
    // the upstream answers, then drops the connection without saying so (no `connection: close`)
    const { gw, up } = await setup(async (s) => {
      await writeApart(s, [SSE_HEAD, chunk(ev(" a", "stop")), chunk("data: [DONE]\n\n"), "0\r\n\r\n"], 5);
      await sleep(300); // long enough for the gateway to reuse the socket for its next request
      s.destroy();
    });
    for (let i = 0; i < 3; i++) {
      const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true });
      expect(dechunk(r.body)).toBe(ev(" a", "stop") + "data: [DONE]\n\n");
    }
    expect(up.requests.length).toBe(3);
    expect(up.connections).toBe(3);

    // two instances, the first accepts the request and closes without answering
    const dead = await scripted(async (s) => void s.destroy());
    upstreams.push(dead);
    const live = await scripted(async (s) => writeApart(s, [SSE_HEAD, chunk(ev(" z", "stop")), "0\r\n\r\n"], 5));
    upstreams.push(live);
    const gw2 = await startServe(["--upstream", dead.url, live.url]);
    gateways.push(gw2);
    // ties between the two idle instances are broken at random: go on until the dead one was tried
    // (each request reaches it with p = 1/2 until it fails), and every answer must be the live one's
    let sent = 0;
    for (; sent < 4 || (dead.requests.length === 0 && sent < 30); sent++) {
      const r = await rawPost(gw2.url, { model: "m", prompt: "x", stream: true });
      expect(dechunk(r.body)).toBe(ev(" z", "stop"));
    }
    expect(live.requests.length).toBe(sent);
    expect(dead.requests.length).toBeGreaterThanOrEqual(1);
  });

  it("a slow client holds the upstream back (nothing lost), and the paused connection is reused afterwards", async () => {
    const filler = "x".repeat(1000);
    const events = Array.from({ length: 3000 }, (_, k) => ev(`${k}${filler}`));
    const { gw, up } = await setup(async (s) => {
      s.write(SSE_HEAD);
      // 3 MB as fast as the socket takes it, far more than the kernel buffers between here and the client
      for (const e of events) if (!s.write(chunk(e))) await new Promise((r) => s.once("drain", r));
      s.write(chunk("data: [DONE]\n\n") + "0\r\n\r\n");
    });
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true }, { stallMs: 700 });
    expect(dechunk(r.body)).toBe(events.join("") + "data: [DONE]\n\n");
    const again = await rawPost(gw.url, { model: "m", prompt: "x", stream: true });
    expect(dechunk(again.body)).toBe(events.join("") + "data: [DONE]\n\n");
    expect(up.connections).toBe(1);
  });

  it("a slow client and reads forwarded as received: bytes queued for the client are never overwritten by the next read", async () => {
    // each event arrives as its own read of whole chunks, so the gateway forwards the read's own
    // bytes; while the client stalls they wait in the client's queue, and the upstream socket's
    // next read must not land in the same memory
    const events = Array.from({ length: 800 }, (_, k) => ev(`${k}:${String(k % 10).repeat(8000)}`));
    const { gw } = await setup(async (s) => {
      s.write(SSE_HEAD);
      for (const e of events) {
        if (!s.write(chunk(e))) await new Promise((r) => s.once("drain", r));
        await sleep(1);
      }
      s.write(chunk("data: [DONE]\n\n") + "0\r\n\r\n");
    });
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true }, { stallMs: 800 });
    expect(dechunk(r.body)).toBe(events.join("") + "data: [DONE]\n\n");
  });

  it("over HTTPS too: a stalled client's queued bytes are never overwritten by the next read", async () => {
    // a TLS socket counts a write as pending until a later turn, so the gateway copies what it
    // forwards as received instead of giving up its read buffer on every read
    const certs = selfSignedCert(await tempDir(), "relay");
    // more than the kernel buffers to the stalled client hold, in small events: once TLS writes
    // wait on the socket, many reads' worth queue below the high-water mark, where a write that is
    // not copied would still point into the read buffer
    const events = Array.from({ length: 2500 }, (_, k) => ev(`${k}:${String(k % 10).repeat(4000)}`));
    const { gw } = await setup(async (s) => {
      s.write(SSE_HEAD);
      for (const e of events) {
        if (!s.write(chunk(e))) await new Promise((r) => s.once("drain", r));
        await sleep(1); // one read per event
      }
      s.write(chunk("data: [DONE]\n\n") + "0\r\n\r\n");
    }, ["--ssl-keyfile", certs.key, "--ssl-certfile", certs.cert]);
    expect(gw.url).toMatch(/^https:/);
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true }, { stallMs: 2500, ca: await readFile(certs.cert) });
    expect(dechunk(r.body)).toBe(events.join("") + "data: [DONE]\n\n");
  });

  it("a non-stream answer that arrives in several reads is gathered whole (each read's bytes outlive the read)", async () => {
    const text = Array.from({ length: 50 }, (_, k) => `${k}`.repeat(200)).join("|");
    const body = JSON.stringify({ id: "cmpl-1", object: "text_completion", model: "m", choices: [{ index: 0, text, finish_reason: "length" }], usage: { prompt_tokens: 1, completion_tokens: 50, total_tokens: 51 } });
    const third = Math.floor(body.length / 3);
    const parts = [body.slice(0, third), body.slice(third, 2 * third), body.slice(2 * third)];
    const { gw } = await setup(async (s) =>
      writeApart(s, [`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n`, ...parts]),
    );
    const r = await fetch(`${gw.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "m", prompt: "x" }) });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { choices: { text: string }[] }).choices[0].text).toBe(text);
  });

  it("a client that disconnects mid-stream closes the upstream connection at once", async () => {
    let closedAt = 0;
    const { up, gw } = await setup(async (s) => {
      s.once("close", () => (closedAt = performance.now()));
      await writeApart(s, [SSE_HEAD, ...Array.from({ length: 200 }, (_, k) => chunk(ev(` t${k}`)))], 10);
    });
    const t = performance.now();
    const r = await rawPost(gw.url, { model: "m", prompt: "x", stream: true }, { abortAfterBytes: 1 });
    expect(r.head).toMatch(/^HTTP\/1\.1 200/);
    await expect.poll(() => closedAt, { timeout: 2000 }).toBeGreaterThan(0);
    expect(closedAt - t).toBeLessThan(1000); // 200 events at 10 ms would take 2 s
    await expect.poll(() => up.cut, { timeout: 2000 }).toBe(1);
  });
});
