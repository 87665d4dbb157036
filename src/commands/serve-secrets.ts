/**
 * What `dsr serve` reads from files and re-reads on SIGHUP: the API keys (flags, DSR_API_KEY, the key
 * file) and the HTTPS key, certificate chain and client CA bundle, each checked before use so that a
 * bad file is a usage error naming it at start and, on reload, keeps what is in use.
 */
import { readFile } from "node:fs/promises";
import { X509Certificate } from "node:crypto";
import { createSecureContext } from "node:tls";
import { usageError } from "../engine/errors.js";
import { apiKey, parseKeyFile, type ApiKey } from "../engine/serve/auth.js";
import type { TlsOptions } from "../engine/serve/h1-server.js";

export interface SecretFlags {
  apiKey?: string[];
  apiKeyFile?: string;
  sslKeyfile?: string;
  sslCertfile?: string;
  sslCaCerts?: string;
  sslCertReqs?: string;
}

/** The API keys: --api-key flags, DSR_API_KEY, and the --api-key-file (read again on SIGHUP). */
export async function readKeys(f: SecretFlags, env: NodeJS.ProcessEnv): Promise<ApiKey[]> {
  const keys = (f.apiKey ?? []).map((k) => apiKey(k));
  if (env.DSR_API_KEY) keys.push(apiKey(env.DSR_API_KEY));
  if (f.apiKeyFile) keys.push(...parseKeyFile(await readFile(f.apiKeyFile, "utf8").catch((e) => { throw usageError(`--api-key-file ${f.apiKeyFile}: ${(e as Error).message}`); })));
  return keys;
}

/** `--ssl-cert-reqs` as vLLM takes it (Python's ssl.CERT_NONE / CERT_OPTIONAL / CERT_REQUIRED), or by name. */
function certReqs(v: string | undefined): TlsOptions["verifyClients"] {
  switch (v) {
    case undefined:
    case "0":
    case "none":
      return undefined;
    case "1":
    case "optional":
      return "optional";
    case "2":
    case "required":
      return "required";
    default:
      throw usageError(`--ssl-cert-reqs ${v}: expected 0 (none), 1 (optional) or 2 (required)`, "as vLLM takes it: 2 makes every client present a certificate --ssl-ca-certs signed");
  }
}

/** The CA certificates of `--ssl-ca-certs`: node:tls takes any bytes there silently, so each PEM block is parsed here. */
function checkCaBundle(file: string, pem: Buffer): void {
  const blocks = pem.toString("latin1").match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw usageError(`--ssl-ca-certs ${file}: no PEM certificate in it`, "give the PEM file of the CA(s) that sign client certificates");
  blocks.forEach((b, i) => {
    try {
      new X509Certificate(b);
    } catch (e) {
      throw usageError(`--ssl-ca-certs ${file}: certificate ${i + 1} does not parse (${(e as Error).message})`);
    }
  });
}

/**
 * HTTPS from its flags: the key and certificate, read and checked to belong together before anything
 * starts (and on SIGHUP), and for mutual TLS the client CA bundle and whether certificates are required.
 */
export async function readTls(f: SecretFlags): Promise<TlsOptions | undefined> {
  const { sslKeyfile: keyfile, sslCertfile: certfile } = f;
  const verifyClients = certReqs(f.sslCertReqs);
  if (!keyfile && !certfile) {
    const stray = f.sslCaCerts ? "--ssl-ca-certs" : f.sslCertReqs ? "--ssl-cert-reqs" : undefined;
    if (stray) throw usageError(`${stray} needs --ssl-keyfile and --ssl-certfile`, "client certificates are checked on HTTPS only: give the server's key and certificate too");
    return undefined;
  }
  if (!keyfile || !certfile) throw usageError(`${keyfile ? "--ssl-keyfile" : "--ssl-certfile"} needs ${keyfile ? "--ssl-certfile" : "--ssl-keyfile"} too`, "give both: the PEM private key and its certificate chain");
  if (verifyClients && !f.sslCaCerts) throw usageError(`--ssl-cert-reqs ${f.sslCertReqs} needs --ssl-ca-certs`, "name the PEM file of the CA(s) that sign client certificates");
  const read = (flag: string, file: string) => readFile(file).catch((e: Error) => { throw usageError(`${flag} ${file}: ${e.message}`); });
  const tls: TlsOptions = { key: await read("--ssl-keyfile", keyfile), cert: await read("--ssl-certfile", certfile) };
  try {
    createSecureContext(tls);
  } catch (e) {
    throw usageError(`--ssl-keyfile ${keyfile} / --ssl-certfile ${certfile}: ${(e as Error).message}`, "both must be PEM, and the key must be the certificate's");
  }
  if (f.sslCaCerts && verifyClients) {
    tls.ca = await read("--ssl-ca-certs", f.sslCaCerts);
    checkCaBundle(f.sslCaCerts, tls.ca);
    tls.verifyClients = verifyClients;
  }
  return tls;
}
