/** Starts the built `dsr serve` as a real child process and waits for its "serving … at URL" line. */
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { runDsr } from "../support/cli.js";
import { freePort } from "../../src/engine/serve/free-ports.js";

export { freePort };

export interface ServeProc {
  url: string;
  proc: ReturnType<typeof runDsr>;
  /** Everything the server printed on stderr so far. */
  log(): string;
  /** SIGTERM and wait for the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | undefined>;
}

export async function startServe(args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<ServeProc> {
  const proc = runDsr(["serve", "--port", "0", ...args], { env: { ...process.env, ...opts.env }, buffer: false, stdout: "pipe", stderr: "pipe" });
  let err = "";
  proc.stderr!.on("data", (d: Buffer) => (err += d.toString()));
  proc.stdout!.resume();
  const url = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`dsr serve did not start in time:\n${err}`)), opts.timeoutMs ?? 30_000);
    const check = () => {
      const m = /^serving .* at (https?:\/\/[^\s/]+)\/v1/m.exec(err); // not a child's "[i0] serving …" line
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    };
    proc.stderr!.on("data", check);
    proc.on("exit", (code) => {
      clearTimeout(t);
      reject(new Error(`dsr serve exited with ${code} before listening:\n${err}`));
    });
  });
  return {
    url,
    proc,
    log: () => err,
    async stop(signal = "SIGTERM") {
      if (proc.exitCode !== null) return proc.exitCode;
      proc.kill(signal);
      const r = await proc;
      return r.exitCode;
    },
  };
}


/** A real redis-server on a free loopback port, without persistence. */
export async function startRedis(): Promise<{ url: string; stop(): Promise<void>; proc: ChildProcess }> {
  const port = await freePort();
  const proc = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: ["ignore", "pipe", "pipe"] });
  await new Promise<void>((resolve, reject) => {
    let out = "";
    const t = setTimeout(() => reject(new Error(`redis-server did not start: ${out}`)), 10_000);
    proc.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (/Ready to accept connections/.test(out)) {
        clearTimeout(t);
        resolve();
      }
    });
    proc.on("error", (e) => {
      clearTimeout(t);
      reject(e);
    });
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    proc,
    stop: () =>
      new Promise<void>((r) => {
        proc.once("exit", () => r());
        proc.kill("SIGTERM");
      }),
  };
}

/** Reads an SSE response body into its `data:` payloads. */
export async function sseEvents(res: Response): Promise<string[]> {
  const text = await res.text();
  return text
    .split("\n\n")
    .map((e) => e.trim())
    .filter((e) => e.startsWith("data:"))
    .map((e) => e.slice(5).trim());
}

/** A self-signed P-256 certificate for 127.0.0.1 and localhost, made by openssl: `dir`/`name`.key and .crt. */
export function selfSignedCert(dir: string, name: string): { key: string; cert: string } {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], { stdio: "ignore" });
  return { key, cert };
}

/** A CA (its key and self-signed certificate) for client certificates. */
export function makeCa(dir: string, name: string): { key: string; cert: string } {
  const key = join(dir, `${name}.key`);
  const cert = join(dir, `${name}.crt`);
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", `/CN=${name}`, "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"], { stdio: "ignore" });
  return { key, cert };
}

/** A client certificate with subject CN `cn`, signed by `ca`. */
export function clientCert(dir: string, cn: string, ca: { key: string; cert: string }): { key: string; cert: string } {
  const key = join(dir, `${cn}.key`);
  const csr = join(dir, `${cn}.csr`);
  const cert = join(dir, `${cn}.crt`);
  execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${cn}`], { stdio: "ignore" });
  execFileSync("openssl", ["x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-out", cert, "-days", "2"], { stdio: "ignore" });
  return { key, cert };
}
