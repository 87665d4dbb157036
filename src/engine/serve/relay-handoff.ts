/**
 * Hands a stream to the native relay (relay-native.c) and takes the stream back.
 *
 * The proxy offers a stream once a read went to the client whole (whole chunks, no event needing
 * JSON) and nothing waits to be written to either socket: from the stream's first read on. libuv
 * stops reading the upstream (its handle's readStop, below the Readable: Node's own `reading` flag
 * stays set, so nothing in Node starts reading it again meanwhile) and the addon reads it through
 * the connection's channel (a dup of its fd with a poll, opened on the connection's first hand-off
 * and closed with the socket, so a kept-alive connection sets it up once); what it can take goes
 * to the client with no JavaScript. The client socket stays Node's: it is still read, so a hang-up
 * cancels the request as on any other stream (which stops the relay first), and nothing else
 * writes to it while the relay holds the stream. When the body ends (and the proxy let the relay
 * send the end), or the relay meets anything it cannot take, it calls back: the counts of what it
 * relayed go to the JS relay (TTFT, inter-token latency, token counts, finish reason, usage), the
 * bytes it did not forward go through the JS path, and libuv reads the upstream again.
 *
 * Node's stream handles are used directly (`_handle.readStop/readStart/fd/writeQueueSize`): no
 * public API stops a socket's reads at the libuv level without also changing the Readable's state.
 */
import type { Socket } from "node:net";
import { nativeRelay, R_END, RelayFlags, type NativeRelayAddon, type RelayedUsage } from "./relay-native.js";

interface StreamHandle {
  fd: number;
  reading: boolean;
  writeQueueSize: number;
  readStop(): number;
  readStart(): number;
}

const handleOf = (s: Socket) => (s as unknown as { _handle?: StreamHandle | null })._handle ?? undefined;

/** The socket's fd when it is open and nothing is queued to write on it, else -1. */
function idleFd(s: Socket): number {
  const h = handleOf(s);
  if (s.destroyed || h === undefined || !(h.fd >= 0) || h.writeQueueSize > 0 || s.writableLength > 0) return -1;
  return h.fd;
}

/** libuv reads the upstream again (Node's `reading` flag never changed), unless it was closed meanwhile. */
function readAgain(s: Socket): void {
  const h = handleOf(s);
  if (!s.destroyed && h?.reading) h.readStart();
}

/** Each upstream connection's channel id (-1: the addon could not open one; not tried again). */
const channels = new WeakMap<Socket, number>();

function channelOf(addon: NativeRelayAddon, s: Socket, fd: number): number {
  let id = channels.get(s);
  if (id === undefined) {
    id = addon.open(fd);
    channels.set(s, id);
    if (id >= 0) s.once("close", () => addon.close(id!));
  }
  return id;
}

/** What the proxy's try gives the hand-off and gets told. */
export interface HandOffSide {
  /** The upstream connection (h1-pool's socket for this exchange). */
  upstream: Socket;
  /** The client's connection. */
  client: Socket;
  /** The relay renames reasoning: reasoning events go native only when they fit one of `templates`. */
  reasoningSpecial: boolean;
  /** No token was counted yet: a read's first event that only opens the role is not one. */
  roleCheck?: boolean;
  /** The usage-only chunk is the gateway's (the client did not ask for usage): dropped. */
  dropUsage?: boolean;
  /** The relay may send the body's end (nothing waits to run before the client sees it). */
  mayEnd?: boolean;
  /** The stream's reasoning templates (SseRelay.encodedTemplates()), or null. */
  templates: Buffer | null;
  /** Per relayed read: its time (performance.now()) and token events; the last finish reason and the usage it relayed. */
  relayed(marks: Float64Array, finish: string | null, usage: RelayedUsage): void;
  /**
   * The stream is back in JS: `held` bytes (a read not forwarded) to handle, `unsent` bytes to write;
   * `ended`: the upstream's body ended and its end went to the client (or is in `unsent`).
   */
  back(held: Buffer | undefined, unsent: Buffer | undefined, ended: boolean): void;
}

/** A stream now relayed natively (until it hands back or stop() is called). */
export class NativeStream {
  /** The channel while this stream is in its hand, else -1. */
  private id = -1;

  private constructor(private readonly addon: NativeRelayAddon, private readonly side: HandOffSide) {}

  /** Starts relaying natively, or returns undefined (nothing changed) when the addon or the sockets do not allow it. */
  static start(side: HandOffSide): NativeStream | undefined {
    const addon = nativeRelay();
    if (addon === undefined) return undefined;
    const upFd = idleFd(side.upstream);
    const clientFd = idleFd(side.client);
    const up = handleOf(side.upstream);
    if (upFd < 0 || clientFd < 0 || !up?.reading) return undefined;
    const id = channelOf(addon, side.upstream, upFd);
    if (id < 0 || up.readStop() !== 0) return undefined;
    const s = new NativeStream(addon, side);
    const flags = (side.reasoningSpecial ? RelayFlags.reasoning : 0) | (side.roleCheck ? RelayFlags.roleCheck : 0) | (side.dropUsage ? RelayFlags.dropUsage : 0) | (side.mayEnd ? RelayFlags.mayEnd : 0);
    if (addon.start(id, clientFd, flags, side.templates, performance.now(), (reason, held, unsent, marks, finish, usage) => s.handBack(reason, held, unsent, marks, finish, usage)) < 0) {
      up.readStart();
      return undefined;
    }
    s.id = id;
    return s;
  }

  /** Takes the stream back now (a cancel, a shutdown): what was relayed is counted; nothing is written, and a partial chunk the relay held is dropped with the stream. */
  stop(): void {
    if (this.id < 0) return;
    const books = this.addon.stop(this.id);
    this.id = -1;
    if (books !== null) this.side.relayed(...books);
    readAgain(this.side.upstream);
    this.side.back(undefined, undefined, false);
  }

  private handBack(reason: number, held: Buffer | null, unsent: Buffer | null, marks: Float64Array, finish: string | null, usage: RelayedUsage): void {
    this.id = -1;
    const { side } = this;
    side.relayed(marks, finish, usage);
    readAgain(side.upstream);
    side.back(held ?? undefined, unsent ?? undefined, reason === R_END);
  }
}
