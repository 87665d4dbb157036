/**
 * CORS (`--allowed-origins`, vLLM's flags): off by default; for the origins named, every answer
 * (streams and errors included) carries Access-Control-Allow-Origin and preflights are answered before
 * auth; other origins get no CORS headers and a 403 on preflight. Raw fetch, so the headers are seen
 * as sent (Node's fetch enforces no CORS itself).
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runDsr } from "../support/cli.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { startServe, type ServeProc } from "./helpers.js";

let up: Standin;
const started: ServeProc[] = [];
beforeAll(async () => {
  up = await startStandin({ tokens: 4, paceMs: 1, model: "r1" });
});
afterAll(async () => {
  for (const g of started) await g.stop();
  await up?.close();
});
const serve = async (args: string[]) => {
  const g = await startServe(["--upstream", up.url, ...args]);
  started.push(g);
  return g;
};
const APP = "https://app.example";
const stream = (url: string, headers: Record<string, string>) =>
  fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json", ...headers }, body: JSON.stringify({ model: "r1", prompt: "x", stream: true }) });
const preflight = (url: string, origin: string, headers = "authorization, content-type") =>
  fetch(`${url}/v1/chat/completions`, { method: "OPTIONS", headers: { origin, "access-control-request-method": "POST", "access-control-request-headers": headers } });

describe("CORS", () => {
  it("is off by default: no Access-Control headers, whatever the origin", async () => {
    const g = await serve([]);
    const r = await stream(g.url, { origin: APP });
    expect(r.status).toBe(200);
    await r.text();
    expect([...r.headers.keys()].filter((k) => k.startsWith("access-control"))).toEqual([]);
    expect((await preflight(g.url, APP)).headers.get("access-control-allow-origin")).toBeNull();
  });

  it("--allowed-origins: that origin's streams, errors and preflights carry the headers (before auth); another origin gets none and a 403 preflight", async () => {
    const g = await serve(["--allowed-origins", `${APP},https://admin.example`, "--api-key", "k1"]);
    const ok = await stream(g.url, { origin: APP, authorization: "Bearer k1" });
    expect(ok.status).toBe(200);
    expect(await ok.text()).toContain("data: [DONE]");
    expect(ok.headers.get("access-control-allow-origin")).toBe(APP);
    expect(ok.headers.get("vary")).toBe("origin");
    expect(ok.headers.get("access-control-expose-headers")).toContain("x-request-id");
    const denied = await stream(g.url, { origin: APP }); // no key: the page can still read the 401
    expect(denied.status).toBe(401);
    expect(denied.headers.get("access-control-allow-origin")).toBe(APP);
    const pre = await preflight(g.url, "https://admin.example");
    expect(pre.status).toBe(204);
    expect(pre.headers.get("access-control-allow-origin")).toBe("https://admin.example");
    expect(pre.headers.get("access-control-allow-methods")).toBe("POST");
    expect(pre.headers.get("access-control-allow-headers")).toBe("authorization, content-type");
    const other = await stream(g.url, { origin: "https://evil.example", authorization: "Bearer k1" });
    await other.text();
    expect(other.headers.get("access-control-allow-origin")).toBeNull();
    const otherPre = await preflight(g.url, "https://evil.example");
    expect(otherPre.status).toBe(403);
    expect((await otherPre.json()).error.message).toContain("origin https://evil.example is not allowed");
  });

  it("vLLM's JSON list form, * for any origin, credentials (the origin echoed) and fixed methods and headers", async () => {
    const any = await serve(["--allowed-origins", '["*"]']);
    const r = await fetch(`${any.url}/v1/models`, { headers: { origin: APP } });
    expect(r.headers.get("access-control-allow-origin")).toBe("*");
    const cred = await serve(["--allowed-origins", "*", "--allow-credentials", "--allowed-methods", "GET,POST", "--allowed-headers", '["authorization","content-type"]']);
    const pre = await preflight(cred.url, APP, "x-custom");
    expect(pre.headers.get("access-control-allow-origin")).toBe(APP);
    expect(pre.headers.get("access-control-allow-credentials")).toBe("true");
    expect(pre.headers.get("access-control-allow-methods")).toBe("GET, POST");
    expect(pre.headers.get("access-control-allow-headers")).toBe("authorization, content-type");
  });

  it("bad flags are usage errors", async () => {
    const lone = await runDsr(["serve", "--upstream", up.url, "--allow-credentials"]);
    expect(lone.exitCode).toBe(2);
    expect(lone.stderr).toContain("--allow-credentials needs --allowed-origins");
    const json = await runDsr(["serve", "--upstream", up.url, "--allowed-origins", '["https://a.example"']);
    expect(json.exitCode).toBe(2);
    expect(json.stderr).toContain("--allowed-origins");
    expect(json.stderr).toContain("not a JSON list");
  });
});
