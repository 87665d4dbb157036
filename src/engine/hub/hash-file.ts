/** Full-file digests for --verify and for adopting files dsr did not download itself. */
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import type { DigestKind } from "./download/hasher.js";

export async function hashFile(path: string, size: number, kind: DigestKind, onBytes?: (n: number) => void, signal?: AbortSignal): Promise<string | undefined> {
  if (kind.algo === "none") return undefined;
  const h = kind.algo === "sha256" ? createHash("sha256") : createHash("sha1").update(`blob ${size}\0`);
  for await (const chunk of createReadStream(path, { highWaterMark: 4 << 20, signal })) {
    h.update(chunk as Buffer);
    onBytes?.((chunk as Buffer).byteLength);
  }
  return h.digest("hex");
}
