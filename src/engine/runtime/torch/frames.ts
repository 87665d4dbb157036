/**
 * Length-prefixed JSON frames (docs/worker-protocol.md): a 4-byte big-endian length, then that many
 * bytes of UTF-8 JSON holding one object with a string `type`. Written by hand: it is ten lines, and
 * a general framing library would add a dependency to both sides of the socket.
 */
import { DsrError } from "../../errors.js";

/** Frames above this are refused (a worker that sends one is broken, not merely chatty). */
export const MAX_FRAME = 64 << 20;

export function encodeFrame(msg: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(msg), "utf8");
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}

/** Reassembles frames from socket reads of any size. */
export class FrameReader {
  private parts: Buffer[] = [];
  private have = 0;

  /** Adds bytes; returns the complete messages they finish. Throws DSR_WORKER_PROTOCOL on a bad frame. */
  push(chunk: Buffer): Record<string, unknown>[] {
    this.parts.push(chunk);
    this.have += chunk.length;
    const out: Record<string, unknown>[] = [];
    while (this.have >= 4) {
      const buf = this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts);
      const n = buf.readUInt32BE(0);
      if (n > MAX_FRAME) throw protocolError(`a frame of ${n} bytes exceeds the ${MAX_FRAME}-byte limit`);
      if (buf.length < 4 + n) {
        this.parts = [buf];
        break;
      }
      out.push(parseBody(buf.subarray(4, 4 + n)));
      const rest = buf.subarray(4 + n);
      this.parts = rest.length ? [rest] : [];
      this.have = rest.length;
    }
    return out;
  }
}

function parseBody(body: Buffer): Record<string, unknown> {
  let msg: unknown;
  try {
    msg = JSON.parse(body.toString("utf8"));
  } catch (e) {
    throw protocolError(`a frame is not JSON (${(e as Error).message})`);
  }
  if (typeof msg !== "object" || msg === null || Array.isArray(msg) || typeof (msg as { type?: unknown }).type !== "string") {
    throw protocolError("a frame is not a JSON object with a string `type`");
  }
  return msg as Record<string, unknown>;
}

const protocolError = (why: string) =>
  new DsrError("DSR_WORKER_PROTOCOL", `torch worker protocol: ${why}`, { hint: "the worker and this dsr disagree on docs/worker-protocol.md; reinstall dsr so native/ matches" });
