/**
 * `dsr serve tiny-r1 --engine torch` end to end, as real processes (the built CLI, the python worker
 * on the CPU) with the official openai SDK as client: the same greedy answer as the embedded engine,
 * the <think> split, streaming that adds up to the non-stream answer with usage, engine stats on
 * /ready, response_format json_object, a killed worker, and a clean SIGTERM.
 */
import { readdirSync, readFileSync } from "node:fs";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { startServe, type ServeProc } from "../serve/helpers.js";
import { TORCH_PYTHON } from "./python.js";

/** Processes whose parent is `ppid` (from /proc). */
function childPids(ppid: number): number[] {
  return readdirSync("/proc")
    .filter((d) => /^\d+$/.test(d))
    .filter((d) => {
      try {
        return Number(readFileSync(`/proc/${d}/stat`, "utf8").replace(/^.*\) /s, "").split(" ")[1]) === ppid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

const Q = "What is 345 + 278? Please reason step by step, and put your final answer within \\boxed{}.";

describe.skipIf(!TORCH_PYTHON)("dsr serve --engine torch (CPU)", () => {
  let gw: ServeProc;
  const client = () => new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
  let answer: { reasoning: string; content: string };

  beforeAll(async () => {
    gw = await startServe([TINY_R1, "--engine", "torch", "--python", TORCH_PYTHON!, "--device", "cpu", "--max-num-seqs", "4", "--max-model-len", "512", "--max-num-batched-tokens", "16", "--threads", "2"], { timeoutMs: 60_000 });
  }, 90_000);
  afterAll(async () => {
    if (gw?.proc.exitCode === null) await gw.stop();
  });

  it("says which engine and what it loaded", () => {
    expect(gw.log()).toContain("engine: torch (--engine torch)");
    expect(gw.log()).toMatch(/torch worker: cpu \(cpu\), float32, 0\.02 GiB of weights in [\d.]+ s, batch ≤ 4, context 512, 16 prompt tokens per step/);
  });

  it("answers like the embedded engine: same greedy reasoning and content, split out of <think>", async () => {
    const r = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0 });
    const m = r.choices[0]!.message as unknown as { content: string; reasoning: string; reasoning_content: string };
    expect(m.reasoning_content).toBe(m.reasoning);
    expect(m.reasoning).not.toContain("think>");
    expect(m.content).toMatch(/\\boxed\{\d+\}/);
    expect(r.choices[0]!.finish_reason).toBe("stop");
    answer = { reasoning: m.reasoning, content: m.content };

    const cacheHome = await tempDir();
    const embedded = await startServe([TINY_R1, "--engine", "embedded", "--threads", "1"], { env: { XDG_CACHE_HOME: cacheHome }, timeoutMs: 60_000 });
    try {
      const e = await new OpenAI({ baseURL: `${embedded.url}/v1`, apiKey: "none", maxRetries: 0 }).chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0 });
      const em = e.choices[0]!.message as unknown as { content: string; reasoning: string };
      expect({ reasoning: em.reasoning, content: em.content }).toEqual(answer);
      expect(e.usage).toEqual(r.usage);
    } finally {
      await embedded.stop();
    }
  }, 90_000);

  it("streams the same answer in deltas, with usage at the end", async () => {
    const stream = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0, stream: true, stream_options: { include_usage: true } });
    let reasoning = "";
    let content = "";
    let usage: unknown;
    let finish: string | null | undefined;
    for await (const c of stream) {
      const d = c.choices[0]?.delta as { content?: string | null; reasoning_content?: string } | undefined;
      reasoning += d?.reasoning_content ?? "";
      content += d?.content ?? "";
      finish = c.choices[0]?.finish_reason ?? finish;
      if (c.usage) usage = c.usage;
    }
    expect({ reasoning, content }).toEqual(answer);
    expect(finish).toBe("stop");
    expect(usage).toMatchObject({ completion_tokens: expect.any(Number), prompt_tokens: expect.any(Number) });
  }, 30_000);

  it("reports the worker's load on /ready", async () => {
    const ready = await (await fetch(`${gw.url}/ready`)).json();
    expect(ready).toMatchObject({ ready: true, engine: { running: 0, waiting: 0, kv_capacity_tokens: 4 * 512, max_context: 512 } });
  });

  it("response_format json_object: free reasoning, then content that parses as an object (stream and non-stream agree)", async () => {
    const body = { model: "tiny-r1", messages: [{ role: "user" as const, content: Q }], temperature: 0, response_format: { type: "json_object" as const } };
    const r = await client().chat.completions.create(body);
    const m = r.choices[0]!.message as unknown as { content: string; reasoning_content: string };
    expect(r.choices[0]!.finish_reason).toBe("stop");
    expect(m.reasoning_content).toBe(answer.reasoning); // the constraint starts after </think>
    const v = JSON.parse(m.content) as unknown;
    expect(typeof v === "object" && v !== null && !Array.isArray(v)).toBe(true);
    let content = "";
    for await (const c of await client().chat.completions.create({ ...body, stream: true })) content += c.choices[0]?.delta.content ?? "";
    expect(content).toBe(m.content);
  }, 60_000);

  it("a killed worker: /ready turns 503 and requests get 503 with Retry-After until it is back", async () => {
    const [pid] = childPids(gw.proc.pid!);
    expect(pid).toBeDefined();
    process.kill(pid!, "SIGKILL");
    await expect.poll(async () => (await fetch(`${gw.url}/ready`)).status, { interval: 20 }).toBe(503);
    const r = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ model: "tiny-r1", prompt: "1 + 1 =", max_tokens: 3 }) });
    if (r.status === 503) expect(r.headers.get("retry-after")).toBe("5");
    else expect(r.status).toBe(200); // the restart was quicker than this request
    await expect.poll(async () => (await fetch(`${gw.url}/ready`)).status, { timeout: 30_000 }).toBe(200);
    expect(gw.log()).toMatch(/\[torch\] torch worker restarted/);
    const again = await client().chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0 });
    expect(again.choices[0]!.message.content).toBe(answer.content);
  }, 60_000);

  it("SIGTERM stops the gateway and its worker, exit 0", async () => {
    expect(await gw.stop()).toBe(0);
    expect(gw.log()).toContain("stopped cleanly");
  });
});

/** Whether `pid` is a running process (not gone, not a zombie). */
const running = (pid: number) => {
  try {
    return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
};

describe.skipIf(!TORCH_PYTHON)("dsr serve --engine torch, killed", () => {
  it("a gateway killed mid-generation (SIGKILL) leaves no worker behind: it sees the socket close and exits", async () => {
    const gw = await startServe([TINY_R1, "--engine", "torch", "--python", TORCH_PYTHON!, "--device", "cpu", "--max-num-seqs", "4", "--max-model-len", "1024", "--threads", "1"], { timeoutMs: 60_000 });
    const [pid] = childPids(gw.proc.pid!);
    expect(pid).toBeDefined();
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
    const body = { model: "tiny-r1", messages: [{ role: "user" as const, content: Q }], temperature: 0, max_tokens: 800, stream: true as const, response_format: { type: "json_object" as const } };
    const streams = [client.chat.completions.create(body), client.chat.completions.create(body)].map(async (p) => {
      try {
        for await (const _ of await p) void _;
      } catch {
        // the gateway is gone
      }
    });
    await new Promise((r) => setTimeout(r, 500));
    gw.proc.kill("SIGKILL");
    await Promise.all(streams);
    await expect.poll(() => running(pid!), { timeout: 15_000, interval: 100 }).toBe(false);
  }, 90_000);
});

describe.skipIf(!TORCH_PYTHON)("dsr serve --engine torch --instances 2 (CPU)", () => {
  it("runs two supervised children, each with its own worker, behind the router", async () => {
    const gw = await startServe([TINY_R1, "--engine", "torch", "--instances", "2", "--python", TORCH_PYTHON!, "--device", "cpu", "--max-num-seqs", "2", "--max-model-len", "256", "--threads", "1"], { timeoutMs: 90_000 });
    try {
      expect(gw.log()).toMatch(/\[i0\] .*torch worker: cpu \(cpu\), float32/);
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
      const rs = await Promise.all([0, 1, 2, 3].map(() => client.chat.completions.create({ model: "tiny-r1", messages: [{ role: "user", content: Q }], temperature: 0 })));
      for (const r of rs) expect(r.choices[0]!.message.content).toMatch(/\\boxed\{\d+\}/);
      expect(new Set(rs.map((r) => r.choices[0]!.message.content)).size).toBe(1);
      const ready = await (await fetch(`${gw.url}/ready`)).json();
      expect(ready.children.map((c: { state: string }) => c.state)).toEqual(["ready", "ready"]);
    } finally {
      expect(await gw.stop()).toBe(0);
    }
  }, 120_000);
});
