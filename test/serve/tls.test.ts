/**
 * `dsr serve --ssl-keyfile --ssl-certfile`: HTTPS on the gateway's own server, with a certificate
 * openssl makes for 127.0.0.1. The openai SDK talks to it trusting that certificate; a client that
 * does not trust it, and a plain-HTTP client, get nowhere. Bad key/certificate flags are usage errors
 * naming the files. --workers 2 serves HTTPS too (each worker reads the files). SIGHUP re-reads the
 * key file and the certificate; a bad new certificate keeps the one in use.
 */
import { copyFile, readFile, writeFile } from "node:fs/promises";
import { connect as tlsConnect } from "node:tls";
import { join } from "node:path";
import OpenAI from "openai";
import { X509Certificate } from "node:crypto";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runDsr } from "../support/cli.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { tempDir } from "../support/tmp.js";
import { selfSignedCert, startServe } from "./helpers.js";

let dir: string;
let up: Standin;
let cert: Buffer;

const makeCert = (name: string) => selfSignedCert(dir, name);

beforeAll(async () => {
  dir = await tempDir();
  up = await startStandin({ tokens: 6, paceMs: 1, model: "r1" });
  cert = await readFile(makeCert("gw").cert);
});
afterAll(async () => up?.close());

/** The SDK over undici with `ca` trusted (or nothing beyond the system's store). */
const client = (url: string, ca?: Buffer) => {
  const dispatcher = new Agent({ connect: ca ? { ca } : {} });
  return new OpenAI({ baseURL: `${url}/v1`, apiKey: "none", maxRetries: 0, fetch: ((u: string, init: object) => undiciFetch(u, { ...init, dispatcher })) as unknown as typeof fetch });
};

describe("dsr serve over HTTPS", () => {
  for (const workers of [1, 2]) {
    it(`--workers ${workers}: the SDK streams and answers over TLS; untrusting and plain-HTTP clients fail`, async () => {
      const gw = await startServe(["--upstream", up.url, "--ssl-keyfile", join(dir, "gw.key"), "--ssl-certfile", join(dir, "gw.crt"), "--workers", String(workers)]);
      try {
        expect(gw.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
        const sdk = client(gw.url, cert);
        const done = await sdk.completions.create({ model: "r1", prompt: "hi", max_tokens: 6 });
        expect(done.choices[0]!.text).toBe(" t0 t1 t2 t3 t4 t5");
        let text = "";
        for await (const ch of await sdk.chat.completions.create({ model: "r1", messages: [{ role: "user", content: "hi" }], max_tokens: 6, stream: true })) text += ch.choices[0]?.delta.content ?? "";
        expect(text).toBe(" t0 t1 t2 t3 t4 t5");
        await expect(client(gw.url).models.list()).rejects.toThrow(); // self-signed: not trusted without `ca`
        await expect(fetch(gw.url.replace("https:", "http:") + "/health")).rejects.toThrow();
      } finally {
        expect(await gw.stop()).toBe(0);
      }
    }, 60_000);
  }

  for (const workers of [1, 2]) {
    it(`--workers ${workers}: SIGHUP reloads the API key file and the certificate; a bad new certificate keeps the one in use`, async () => {
      const [a, b] = [makeCert(`a${workers}`), makeCert(`b${workers}`)];
      const live = { key: join(dir, `live${workers}.key`), cert: join(dir, `live${workers}.crt`), keys: join(dir, `keys${workers}.txt`) };
      const use = async (c: { key: string; cert: string }) => (await copyFile(c.key, live.key), await copyFile(c.cert, live.cert));
      await use(a);
      await writeFile(live.keys, "sk-old\n");
      const gw = await startServe(["--upstream", up.url, "--ssl-keyfile", live.key, "--ssl-certfile", live.cert, "--api-key-file", live.keys, "--workers", String(workers)]);
      /** The certificate a new connection is given (its fingerprint), trusting `ca`. */
      const served = (ca: Buffer) =>
        new Promise<string>((resolve, reject) => {
          const s = tlsConnect({ host: "127.0.0.1", port: Number(new URL(gw.url).port), ca }, () => (resolve(s.getPeerCertificate().fingerprint256), s.end()));
          s.on("error", reject);
        });
      const status = async (ca: Buffer, key: string) => (await undiciFetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${key}` }, dispatcher: new Agent({ connect: { ca } }) })).status;
      const [caA, caB] = [await readFile(a.cert), await readFile(b.cert)];
      /** SIGHUP, then wait for `lines` more lines saying `done` (with workers the primary reads the files first, then each worker). */
      const hup = async (done: RegExp, lines: number) => {
        const count = () => (gw.log().match(new RegExp(done.source, "gm")) ?? []).length;
        const want = count() + lines;
        gw.proc.kill("SIGHUP");
        for (let i = 0; i < 100 && count() < want; i++) await new Promise((r) => setTimeout(r, 50));
        expect(count()).toBe(want);
      };
      try {
        expect(await status(caA, "sk-old")).toBe(200);
        expect(await status(caA, "sk-new")).toBe(401);
        await use(b);
        await writeFile(live.keys, "sk-new\n");
        await hup(/reloaded 1 API key\(s\) and the TLS certificate/, workers === 1 ? 1 : 1 + workers);
        for (let i = 0; i < 4; i++) {
          // several connections: with two workers each must have reloaded
          expect(await served(caB)).toBe(new X509Certificate(caB).fingerprint256);
          expect(await status(caB, "sk-new")).toBe(200);
          expect(await status(caB, "sk-old")).toBe(401);
        }
        await copyFile(a.key, live.key); // B's certificate with A's key: refused, B stays
        await hup(/kept the keys and certificate in use: .*key values mismatch/, 1); // with workers, the primary's check stops it there
        expect(await served(caB)).toBe(new X509Certificate(caB).fingerprint256);
        expect(await status(caB, "sk-new")).toBe(200);
      } finally {
        expect(await gw.stop()).toBe(0);
      }
    }, 60_000);
  }

  it("a lone key or certificate, a missing file and a key that is not the certificate's are usage errors naming them", async () => {
    const other = makeCert("other");
    const run = (args: string[]) => runDsr(["serve", "--upstream", up.url, "--port", "0", ...args]);
    const lone = await run(["--ssl-keyfile", join(dir, "gw.key")]);
    expect(lone.exitCode).toBe(2);
    expect(lone.stderr).toContain("--ssl-keyfile needs --ssl-certfile too");
    const missing = await run(["--ssl-keyfile", join(dir, "none.key"), "--ssl-certfile", join(dir, "gw.crt")]);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toContain(`--ssl-keyfile ${join(dir, "none.key")}: ENOENT`);
    const mismatched = await run(["--ssl-keyfile", other.key, "--ssl-certfile", join(dir, "gw.crt")]);
    expect(mismatched.exitCode).toBe(2);
    expect(mismatched.stderr).toMatch(new RegExp(`--ssl-keyfile ${other.key} / --ssl-certfile ${join(dir, "gw.crt")}: .*key values mismatch`));
  });
});
