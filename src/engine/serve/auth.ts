/**
 * API-key check: bearer token (or `x-api-key`) compared against every configured key by SHA-256
 * digest with timingSafeEqual, so neither the key length nor a matching prefix leaks through timing
 * (the same approach as vLLM's middleware, facts §1.6). Keys are never logged or echoed.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import type { IncomingHttpHeaders } from "node:http";
import { HttpError } from "./http-error.js";

const digest = (s: string) => createHash("sha256").update(s).digest();

/** A configured key and the name it is counted and logged under (never the key itself). */
export interface ApiKey {
  key: string;
  name: string;
}

/** A key with its name, or `key-` and the first 8 hex digits of its SHA-256 when it has none (safe to show: not the key). */
export function apiKey(key: string, name?: string): ApiKey {
  return { key, name: name || `key-${digest(key).toString("hex").slice(0, 8)}` };
}

export class ApiKeys {
  private readonly digests: Buffer[];
  private readonly names: string[];

  constructor(keys: readonly ApiKey[]) {
    const usable = keys.filter((k) => k.key.length > 0);
    this.digests = usable.map((k) => digest(k.key));
    this.names = usable.map((k) => k.name);
  }

  get enabled(): boolean {
    return this.digests.length > 0;
  }

  /** The name of the key the request carries; throws a 401 unless it carries a configured one (undefined: no keys configured). */
  check(headers: IncomingHttpHeaders): string | undefined {
    if (!this.enabled) return undefined;
    const token = bearer(headers);
    if (token !== undefined) {
      const d = digest(token);
      let found = -1;
      for (let i = 0; i < this.digests.length; i++) if (timingSafeEqual(d, this.digests[i]) && found < 0) found = i; // no early exit
      if (found >= 0) return this.names[found];
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

/** Keys from a file: one per line, optionally followed by a name (`sk-… team-a`); blank lines and `#` comments ignored. */
export function parseKeyFile(text: string): ApiKey[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.replace(/#.*$/, "").trim())
    .filter((l) => l.length > 0)
    .map((l) => {
      const [key, ...name] = l.split(/\s+/);
      return apiKey(key, name.join(" "));
    });
}
