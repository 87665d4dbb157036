/**
 * The routes other fronts expect besides OpenAI's: SageMaker's `GET|POST /ping` and `POST
 * /invocations` (a chat request when the body has `messages`, completions when it has `prompt`), and
 * vLLM's `GET /load`, through `dsr serve --upstream` over the stand-in upstream.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { startServe, type ServeProc } from "./helpers.js";

let up: Standin;
let gw: ServeProc;
const auth = { authorization: "Bearer sk-sm" };

beforeAll(async () => {
  up = await startStandin({ tokens: 3, paceMs: 50, model: "r1" }); // a stream lasts ~150 ms: /load sees it
  const keys = join(await tempDir(), "keys.txt");
  await writeFile(keys, "sk-sm sagemaker\n");
  gw = await startServe(["--upstream", up.url, "--api-key-file", keys]);
});
afterAll(async () => {
  await gw?.stop();
  await up?.close();
});

const invoke = (body: unknown, headers: Record<string, string> = auth) => fetch(`${gw.url}/invocations`, { method: "POST", headers, body: JSON.stringify(body) });

describe("SageMaker and vLLM extra routes", () => {
  it("/invocations: messages → a chat completion, prompt → a completion, streamed too; anything else a 400 naming the field", async () => {
    const chat = (await (await invoke({ messages: [{ role: "user", content: "hi" }], max_tokens: 3 })).json()) as { object: string; choices: { message: { content: string } }[] };
    expect(chat.object).toBe("chat.completion");
    expect(chat.choices[0]!.message.content).toBe(" t0 t1 t2");
    const done = (await (await invoke({ prompt: "hi", max_tokens: 3 })).json()) as { object: string; choices: { text: string }[] };
    expect(done.object).toBe("text_completion");
    expect(done.choices[0]!.text).toBe(" t0 t1 t2");
    const stream = await invoke({ prompt: "hi", max_tokens: 3, stream: true });
    expect(stream.headers.get("content-type")).toContain("text/event-stream");
    expect(await stream.text()).toContain("data: [DONE]");
    const neither = await invoke({ input: "hi" });
    expect(neither.status).toBe(400);
    expect(((await neither.json()) as { error: { param: string } }).error.param).toBe("messages");
    expect((await fetch(`${gw.url}/invocations`, { method: "POST", headers: auth, body: "{nope" })).status).toBe(400);
    expect((await fetch(`${gw.url}/invocations`, { headers: auth })).status).toBe(405);
  });

  it("/invocations needs the API key like /v1/* (checked before the body is read); /ping and /load are open", async () => {
    expect((await invoke({ prompt: "hi" }, {})).status).toBe(401);
    expect((await fetch(`${gw.url}/invocations`, { method: "POST", body: "{nope" })).status).toBe(401);
    expect((await fetch(`${gw.url}/ping`)).status).toBe(200);
    expect((await fetch(`${gw.url}/ping`, { method: "POST" })).status).toBe(200);
    expect(await (await fetch(`${gw.url}/load`)).json()).toEqual({ server_load: 0 });
  });

  it("/load counts the requests in flight", async () => {
    const running = await fetch(`${gw.url}/v1/completions`, { method: "POST", headers: auth, body: JSON.stringify({ model: "r1", prompt: "x", max_tokens: 3, stream: true }) });
    const load = (await (await fetch(`${gw.url}/load`)).json()) as { server_load: number };
    await running.text();
    expect(load.server_load).toBe(1);
  });
});
