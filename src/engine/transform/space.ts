/**
 * Free-space check before a long write: converting R1 to BF16 writes 1.38 TB, and running out of
 * disk an hour in is the failure users hit most. statfs's bavail is what an unprivileged writer gets.
 */
import { statfs } from "node:fs/promises";
import { DsrError } from "../errors.js";

export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

export async function ensureFreeSpace(dir: string, needed: number, fmt: (n: number) => string = (n) => `${(n / 1e9).toFixed(2)} GB`): Promise<void> {
  const free = await freeBytes(dir);
  if (needed > free) {
    throw new DsrError("DSR_CONVERT_NO_SPACE", `--out ${dir}: the conversion writes ${fmt(needed)} but the filesystem has ${fmt(free)} free`, {
      hint: "free some space or pick an --out on a larger disk (an interrupted run resumes, so you can also move finished shards away)",
      details: { needed, free },
    });
  }
}
