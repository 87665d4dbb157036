/**
 * Mutual TLS: `--ssl-ca-certs` with `--ssl-cert-reqs 2` (vLLM's flags) lets in only clients whose
 * certificate a CA of that file signed; `1` also lets in clients that send none. The verified
 * certificate's CN goes to the request log as `client_cert`. Bad values are usage errors naming the
 * flag or file. Certificates are made with openssl for each run.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import OpenAI from "openai";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runDsr } from "../support/cli.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { clientCert, makeCa, selfSignedCert, startServe } from "./helpers.js";

let dir: string;
let up: Standin;
let serverCert: Buffer;
let ca: { key: string; cert: string };
let alice: { key: Buffer; cert: Buffer };
let stranger: { key: Buffer; cert: Buffer };

const read = async (c: { key: string; cert: string }) => ({ key: await readFile(c.key), cert: await readFile(c.cert) });

beforeAll(async () => {
  dir = await tempDir();
  up = await startStandin({ tokens: 3, paceMs: 1, model: "r1" });
  serverCert = await readFile(selfSignedCert(dir, "gw").cert);
  ca = makeCa(dir, "clients-ca");
  alice = await read(clientCert(dir, "alice", ca));
  stranger = await read(clientCert(dir, "mallory", makeCa(dir, "other-ca"))); // signed by a CA the gateway does not trust
});
afterAll(async () => up?.close());

/** GET /v1/models over HTTPS with this client certificate (or none): the status, or the connection's error. */
async function models(url: string, who?: { key: Buffer; cert: Buffer }): Promise<number | string> {
  const dispatcher = new Agent({ connect: { ca: serverCert, ...who } });
  try {
    return (await undiciFetch(`${url}/v1/models`, { dispatcher })).status;
  } catch (e) {
    return `failed: ${((e as Error).cause as Error | undefined)?.message ?? (e as Error).message}`;
  } finally {
    await dispatcher.close();
  }
}

const tlsArgs = (reqs: string) => ["--upstream", up.url, "--ssl-keyfile", join(dir, "gw.key"), "--ssl-certfile", join(dir, "gw.crt"), "--ssl-ca-certs", ca.cert, "--ssl-cert-reqs", reqs];

describe("dsr serve with client certificates", () => {
  for (const workers of [1, 2]) {
    it(`--ssl-cert-reqs 2, --workers ${workers}: a certificate the CA signed gets in and is logged by CN; none, or another CA's, fails the handshake`, async () => {
      const log = join(dir, `mtls-${workers}.jsonl`);
      const gw = await startServe([...tlsArgs("2"), "--workers", String(workers), "--log-file", log]);
      try {
        const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0, fetch: ((u: string, init: object) => undiciFetch(u, { ...init, dispatcher: new Agent({ connect: { ca: serverCert, ...alice } }) })) as unknown as typeof fetch });
        const done = await sdk.completions.create({ model: "r1", prompt: "hi", max_tokens: 3 });
        expect(done.choices[0]!.text).toBe(" t0 t1 t2");
        expect(await models(gw.url, alice)).toBe(200);
        expect(await models(gw.url)).toMatch(/^failed/);
        expect(await models(gw.url, stranger)).toMatch(/^failed/);
      } finally {
        expect(await gw.stop()).toBe(0);
      }
      const files = workers === 1 ? [log] : [`${log}.w0`, `${log}.w1`];
      const lines = (await Promise.all(files.map((f) => readFile(f, "utf8").catch(() => "")))).join("").trim().split("\n").map((l) => JSON.parse(l) as { path: string; client_cert?: string });
      const gen = lines.filter((l) => l.path === "/v1/completions");
      expect(gen).toHaveLength(1);
      expect(gen[0]!.client_cert).toBe("alice");
    }, 60_000);
  }

  it("--ssl-cert-reqs 1: a client without a certificate gets in; one the CA did not sign is cut", async () => {
    const gw = await startServe(tlsArgs("optional"));
    try {
      expect(await models(gw.url)).toBe(200);
      expect(await models(gw.url, alice)).toBe(200);
      expect(await models(gw.url, stranger)).toMatch(/^failed/);
    } finally {
      expect(await gw.stop()).toBe(0);
    }
  }, 60_000);

  it("bad values are usage errors naming the flag or file", async () => {
    const run = (args: string[]) => runDsr(["serve", "--upstream", up.url, "--port", "0", ...args]);
    const server = ["--ssl-keyfile", join(dir, "gw.key"), "--ssl-certfile", join(dir, "gw.crt")];
    const noCa = await run([...server, "--ssl-cert-reqs", "2"]);
    expect(noCa.exitCode).toBe(2);
    expect(noCa.stderr).toContain("--ssl-cert-reqs 2 needs --ssl-ca-certs");
    const badValue = await run([...server, "--ssl-ca-certs", ca.cert, "--ssl-cert-reqs", "3"]);
    expect(badValue.exitCode).toBe(2);
    expect(badValue.stderr).toContain("--ssl-cert-reqs 3: expected 0 (none), 1 (optional) or 2 (required)");
    const junk = join(dir, "junk.pem");
    await writeFile(junk, "not a certificate\n");
    const badCa = await run([...server, "--ssl-ca-certs", junk, "--ssl-cert-reqs", "2"]);
    expect(badCa.exitCode).toBe(2);
    expect(badCa.stderr).toContain(`--ssl-ca-certs ${junk}: no PEM certificate in it`);
    const plain = await run(["--ssl-ca-certs", ca.cert, "--ssl-cert-reqs", "2"]);
    expect(plain.exitCode).toBe(2);
    expect(plain.stderr).toContain("--ssl-ca-certs needs --ssl-keyfile and --ssl-certfile");
  }, 60_000);
});
