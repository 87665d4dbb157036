/**
 * Resume state of one partial file, kept beside it as `<partial>.json`: the file's identity (size,
 * expected hash) and, per ranged part, how many bytes from its start are on disk. Saved atomically
 * (tmp + rename) after an fdatasync of the partial, so the state never claims bytes a crash or a
 * reboot could have lost; a SIGKILL at any moment leaves a state that is at worst a little behind.
 */
import { readFile, rename, rm, stat, writeFile } from "node:fs/promises";

export interface PartState {
  start: number;
  end: number;
  /** Bytes of [start, end) written contiguously from `start`. */
  done: number;
}

export interface FileState {
  version: 1;
  path: string;
  size: number;
  /** Expected digest ("sha256:<hex>", "gitsha1:<hex>" or "size") — a state for other content is discarded. */
  digest: string;
  parts: PartState[];
}

export function splitParts(size: number, partSize: number): PartState[] {
  const parts: PartState[] = [];
  for (let s = 0; s < size; s += partSize) parts.push({ start: s, end: Math.min(size, s + partSize), done: 0 });
  if (parts.length === 0) parts.push({ start: 0, end: 0, done: 0 });
  return parts;
}

/** Loads a state that matches this file and whose partial file is still there at full size; else undefined. */
export async function loadState(statePath: string, partialPath: string, expect: { size: number; digest: string }): Promise<FileState | undefined> {
  try {
    const s = JSON.parse(await readFile(statePath, "utf8")) as FileState;
    const st = await stat(partialPath);
    const partsOk =
      Array.isArray(s.parts) &&
      s.parts.every((p, i) => p.start >= 0 && p.end <= s.size && p.done >= 0 && p.done <= p.end - p.start && (i === 0 ? p.start === 0 : p.start === s.parts[i - 1].end)) &&
      (s.parts.at(-1)?.end ?? 0) === s.size;
    if (s.version !== 1 || s.size !== expect.size || s.digest !== expect.digest || st.size !== expect.size || !partsOk) return undefined;
    return s;
  } catch {
    return undefined;
  }
}

export async function saveState(statePath: string, s: FileState): Promise<void> {
  const tmp = `${statePath}.tmp`;
  await writeFile(tmp, JSON.stringify(s));
  await rename(tmp, statePath);
}

export async function removeState(statePath: string, partialPath: string): Promise<void> {
  await Promise.all([rm(statePath, { force: true }), rm(partialPath, { force: true }), rm(`${statePath}.tmp`, { force: true })]);
}
