/**
 * API-key check: bearer token (or `x-api-key`) compared against every configured key by SHA-256
 * digest with timingSafeEqual, so neither the key length nor a matching prefix leaks through timing
 * (the same approach as vLLM's middleware, facts §1.6). Keys are never logged or echoed.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { HttpError } from "./http-error.js";

const digest = (s: string) => createHash("sha256").update(s).digest();

export class ApiKeys {
  private readonly digests: Buffer[];

  constructor(keys: readonly string[]) {
    this.digests = keys.filter((k) => k.length > 0).map(digest);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** Throws a 401 unless the request carries a configured key. */
  check(headers: IncomingHttpHeaders): void {
    if (!this.enabled) return;
    const token = bearer(headers);
    if (token !== undefined) {
      const d = digest(token);
      let ok = false;
      for (const k of this.digests) ok = timingSafeEqual(d, k) || ok; // no early exit
      if (ok) return;
    }
    throw new HttpError(401, token === undefined ? "missing API key: send `Authorization: Bearer <key>`" : "invalid API key", {
      code: "invalid_api_key",
      headers: { "www-authenticate": "Bearer" },
    });
  }
}

function bearer(headers: IncomingHttpHeaders): string | undefined {
  const h = headers.authorization;
  if (typeof h === "string") {
    const m = /^Bearer\s+(.+)$/i.exec(h.trim());
    if (m) return m[1].trim();
  }
  const x = headers["x-api-key"];
  return typeof x === "string" && x.length > 0 ? x : undefined;
}

/** Keys from a file: one per line; blank lines and `#` comments ignored. */
export function parseKeyFile(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.replace(/#.*$/, "").trim())
    .filter((l) => l.length > 0);
}
