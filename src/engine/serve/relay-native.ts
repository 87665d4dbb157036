/**
 * Loads the native relay (relay-native.c), which scripts/build.mjs compiles beside the bundle as
 * dsr-relay.node when a C compiler and Node's headers are there. Without it, or with
 * DSR_RELAY=js, every stream is relayed in JS (sse-relay.ts) as before: same bytes, more CPU.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** start()'s and scan()'s flags (relay-native.c F_…). */
export const RelayFlags = {
  /** The gateway renames reasoning: reasoning events go natively only when they fit a template. */
  reasoning: 1,
  /** No token counted yet: a read's first event that only opens the role is not one. */
  roleCheck: 2,
  /** The usage-only chunk was the gateway's request, not the client's: it is dropped. */
  dropUsage: 4,
  /** The relay may send the body's end itself. */
  mayEnd: 8,
} as const;

/** Why the relay gave a stream back (relay-native.c `enum reason`): R_END, the body ended and its end was sent (or is in `unsent`). */
export const R_END = 5;

/** The usage-only chunk's counts ([prompt_tokens, completion_tokens], undefined where absent), or null when none was relayed. */
export type RelayedUsage = [number | undefined, number | undefined] | null;

export interface NativeRelayAddon {
  /** An upstream connection's channel (a dup of its fd and a poll on it): its id (≥ 0), or a negative errno. Kept until close(id). */
  open(upstreamFd: number): number;
  /** The connection closed: the channel goes (a stream in hand is dropped without a callback). */
  close(id: number): void;
  /** Relays the channel's connection (libuv must have stopped reading it) to a dup of the client's fd: 0, or a negative errno when it could not start. */
  start(id: number, clientFd: number, flags: number, templates: Buffer | null, nowMs: number, back: HandBack): number;
  /** Stops the stream in hand: [its marks, the last finish reason, the usage], or null when there is none (it handed back). No callback follows. */
  stop(id: number): [Float64Array, string | null, RelayedUsage] | null;
  /**
   * What the relay would do with one read as the only read of a hand-off: null when JS would get any
   * of it, else [plain token events, templated events, the bytes it would send, finish reason, usage, whether the body ended].
   */
  scan(read: Buffer, flags: number, templates: Buffer | null): [number, number, Buffer, string | null, RelayedUsage, boolean] | null;
}

/**
 * Called once when the relay gives the stream back: why (relay-native.c's `enum reason`: R_END, or
 * for debugging); `held`, bytes read and not forwarded (JS takes them as the exchange's next read);
 * `unsent`, forwarded bytes the client could not take yet (JS writes them first); [time, tokens]
 * per relayed read (and per templated event); the last finish_reason string relayed, and the
 * usage-only chunk's counts.
 */
export type HandBack = (reason: number, held: Buffer | null, unsent: Buffer | null, marks: Float64Array, finish: string | null, usage: RelayedUsage) => void;

let addon: NativeRelayAddon | null | undefined;

/** Where the addon may be: beside the bundle (dist/), or dist/ seen from these sources (tests). */
function candidates(): string[] {
  const fromEnv = process.env.DSR_NATIVE_RELAY;
  if (fromEnv) return [fromEnv];
  return ["./dsr-relay.node", "../../../dist/dsr-relay.node"].map((p) => fileURLToPath(new URL(p, import.meta.url)));
}

/** The addon, or undefined when it was not built (or DSR_RELAY=js). Loaded once. */
export function nativeRelay(): NativeRelayAddon | undefined {
  if (addon !== undefined) return addon ?? undefined;
  addon = null;
  if (process.env.DSR_RELAY === "js") return undefined;
  const path = candidates().find((p) => existsSync(p));
  if (path === undefined) return undefined;
  try {
    addon = createRequire(import.meta.url)(path) as NativeRelayAddon;
  } catch {
    // built for another platform or Node ABI: the JS relay does the same work
  }
  return addon ?? undefined;
}
