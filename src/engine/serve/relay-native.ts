/**
 * Loads the native relay (relay-native.c), which scripts/build.mjs compiles beside the bundle as
 * dsr-relay.node when a C compiler and Node's headers are there. Without it, or with
 * DSR_RELAY=js, every stream is relayed in JS (sse-relay.ts) as before: same bytes, more CPU.
 */
import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

export interface NativeRelayAddon {
  /** An upstream connection's channel (a dup of its fd and a poll on it): its id (≥ 0), or a negative errno. Kept until close(id). */
  open(upstreamFd: number): number;
  /** The connection closed: the channel goes (a stream in hand is dropped without a callback). */
  close(id: number): void;
  /** Relays the channel's connection (libuv must have stopped reading it) to a dup of the client's fd: 0, or a negative errno when it could not start. */
  start(id: number, clientFd: number, reasoningSpecial: boolean, templates: Buffer | null, nowMs: number, back: HandBack): number;
  /** Stops the stream in hand: its marks, or null when there is none (it handed back). No callback follows. */
  stop(id: number): Float64Array | null;
  /** What the relay would do with one read: null (hand it back), or [plain token events, templated events, the bytes it would send]. */
  scan(read: Buffer, reasoningSpecial: boolean, templates: Buffer | null): [number, number, Buffer] | null;
}

/**
 * Called once when the relay gives the stream back: why (relay-native.c's `enum reason`, for
 * debugging: what JS does follows from the bytes); `held`, bytes read and not forwarded (JS
 * takes them as the exchange's next read); `unsent`, forwarded bytes the client could not take yet
 * (JS writes them first); and [time, tokens] per relayed read (and per templated event).
 */
export type HandBack = (reason: number, held: Buffer | null, unsent: Buffer | null, marks: Float64Array) => void;

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
