/**
 * Response cache for deterministic requests (temperature 0, or a fixed seed): an in-process LRU with
 * TTL, or Redis (`redis://…`) so several instances and gateways share one cache. Only complete 200
 * answers are stored — the JSON body, or the whole SSE text for streams (replayed at once on a hit).
 */
import { createHash } from "node:crypto";
import type { createClient } from "redis";

export interface CachedResponse {
  contentType: string;
  body: string;
}

export interface ResponseCache {
  readonly kind: "memory" | "redis";
  get(key: string): Promise<CachedResponse | undefined>;
  set(key: string, value: CachedResponse): Promise<void>;
  close(): Promise<void>;
}

/** Cache key of a request, or undefined when the answer is not deterministic and must not be cached. */
export function cacheKey(endpoint: string, model: string, body: Record<string, unknown>): string | undefined {
  const temp = body.temperature;
  const deterministic = temp === 0 || (typeof body.seed === "number" && (body.n == null || body.n === 1));
  if (!deterministic) return undefined;
  const { user: _user, ...rest } = body; // `user` does not change the answer
  return "dsr:cache:" + createHash("sha256").update(endpoint + "\0" + model + "\0" + canonicalJson(rest)).digest("hex");
}

/** JSON with object keys sorted, so field order does not change the key. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return "[" + v.map(canonicalJson).join(",") + "]";
  if (v && typeof v === "object") {
    return "{" + Object.keys(v).sort().map((k) => JSON.stringify(k) + ":" + canonicalJson((v as Record<string, unknown>)[k])).join(",") + "}";
  }
  return JSON.stringify(v) ?? "null";
}

export class MemoryCache implements ResponseCache {
  readonly kind = "memory" as const;
  private readonly map = new Map<string, { v: CachedResponse; expires: number }>();

  constructor(private readonly maxEntries: number, private readonly ttlMs: number, private readonly now = () => Date.now()) {}

  async get(key: string): Promise<CachedResponse | undefined> {
    const e = this.map.get(key);
    if (!e) return undefined;
    if (e.expires <= this.now()) {
      this.map.delete(key);
      return undefined;
    }
    this.map.delete(key); // re-insert: Map order is the LRU order
    this.map.set(key, e);
    return e.v;
  }

  async set(key: string, v: CachedResponse): Promise<void> {
    this.map.delete(key);
    this.map.set(key, { v, expires: this.now() + this.ttlMs });
    while (this.map.size > this.maxEntries) this.map.delete(this.map.keys().next().value!);
  }

  get size(): number {
    return this.map.size;
  }

  async close(): Promise<void> {
    this.map.clear();
  }
}

export class RedisCache implements ResponseCache {
  readonly kind = "redis" as const;

  private constructor(private readonly client: ReturnType<typeof createClient>, private readonly ttlMs: number) {}

  static async connect(url: string, ttlMs: number): Promise<RedisCache> {
    // loaded only here: the client and its dependencies cost every other gateway ~100 ms of start-up
    const { createClient } = await import("redis");
    const client = createClient({ url, socket: { connectTimeout: 3000, reconnectStrategy: (n) => Math.min(100 * 2 ** n, 3000) } });
    client.on("error", () => undefined); // reconnects on its own; a failed get/set is a cache miss
    await client.connect();
    return new RedisCache(client, ttlMs);
  }

  async get(key: string): Promise<CachedResponse | undefined> {
    try {
      const raw = await this.client.get(key);
      return raw ? (JSON.parse(raw) as CachedResponse) : undefined;
    } catch {
      return undefined;
    }
  }

  async set(key: string, v: CachedResponse): Promise<void> {
    try {
      await this.client.set(key, JSON.stringify(v), { expiration: { type: "PX", value: this.ttlMs } });
    } catch {
      // the cache is an optimisation: losing a write is not an error
    }
  }

  async close(): Promise<void> {
    await this.client.quit().catch(() => this.client.destroy());
  }
}
