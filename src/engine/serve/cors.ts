/**
 * CORS for browser clients (`--allowed-origins`, with vLLM's flag names and meanings). Off unless
 * asked for: vLLM allows every origin by default, which lets any web page a user visits drive a model
 * on their machine; dsr answers cross-origin requests only for the origins named. Preflights
 * (OPTIONS with Access-Control-Request-Method) are answered here, before auth, as browsers send them
 * without credentials; every other answer to an allowed origin, errors included, carries
 * Access-Control-Allow-Origin so the page can read it.
 */
import type { H1Request, H1Response } from "./h1-server.js";
import { HttpError } from "./http-error.js";

export interface CorsOptions {
  /** Allowed origins, or ["*"] for any. */
  origins: string[];
  /** Allowed methods, or ["*"] (then the preflight's own method is allowed). */
  methods: string[];
  /** Allowed request headers, or ["*"] (then the preflight's own headers are allowed). */
  headers: string[];
  /** Access-Control-Allow-Credentials: the origin is echoed, never `*`. */
  credentials: boolean;
}

/** A list flag as vLLM takes it (a JSON list: `'["https://a.example"]'`) or as a comma-separated list. */
export function parseCorsList(flag: string, values: readonly string[]): string[] {
  const out: string[] = [];
  for (const v of values) {
    if (v.trim().startsWith("[")) {
      let list: unknown;
      try {
        list = JSON.parse(v);
      } catch (e) {
        throw new Error(`${flag} ${v}: not a JSON list (${(e as Error).message})`);
      }
      if (!Array.isArray(list) || !list.every((x) => typeof x === "string")) throw new Error(`${flag} ${v}: expected a JSON list of strings`);
      out.push(...(list as string[]));
    } else out.push(...v.split(",").map((s) => s.trim()).filter(Boolean));
  }
  return out;
}

export class Cors {
  private readonly anyOrigin: boolean;
  private readonly origins: Set<string>;

  constructor(private readonly o: CorsOptions) {
    this.anyOrigin = o.origins.includes("*");
    this.origins = new Set(o.origins);
  }

  /**
   * Adds the CORS headers for this request's origin to whatever `res` answers; answers a preflight
   * itself and returns true then (a 403 for an origin not allowed).
   */
  handle(req: H1Request, res: H1Response): boolean {
    const origin = req.headers.origin;
    if (origin === undefined) return false;
    const allowed = this.anyOrigin || this.origins.has(origin);
    const preflight = req.method === "OPTIONS" && req.headers["access-control-request-method"] !== undefined;
    if (!allowed) {
      if (!preflight) return false; // answered as usual: the browser withholds it from the page
      throw new HttpError(403, `origin ${origin} is not allowed (dsr serve --allowed-origins)`, { code: "origin_not_allowed" });
    }
    const echo = !this.anyOrigin || this.o.credentials;
    res.setHeader("access-control-allow-origin", echo ? origin : "*");
    if (echo) res.setHeader("vary", "origin");
    if (this.o.credentials) res.setHeader("access-control-allow-credentials", "true");
    if (!preflight) {
      res.setHeader("access-control-expose-headers", "x-request-id, retry-after");
      return false;
    }
    const method = req.headers["access-control-request-method"]!;
    const asked = req.headers["access-control-request-headers"];
    res.setHeader("access-control-allow-methods", this.o.methods.includes("*") ? method : this.o.methods.join(", "));
    if (asked !== undefined || !this.o.headers.includes("*")) res.setHeader("access-control-allow-headers", this.o.headers.includes("*") ? asked! : this.o.headers.join(", "));
    res.setHeader("access-control-max-age", "600");
    res.writeHead(204).end();
    return true;
  }
}
