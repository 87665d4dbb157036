/**
 * Resume state of one partial file, in two files beside it:
 *  - `<partial>.json`: the file's identity (size, expected digest), its ranged parts, and per part
 *    the bytes known DURABLE (written before an fdatasync). Rewritten atomically every few seconds,
 *    and whenever a running part is split (file-job.ts) — before the new part's first byte is fetched.
 *  - `<partial>.progress`: 8 bytes per part, the bytes WRITTEN (page cache) from the part's start,
 *    updated with one tiny pwrite after every 1 MiB block. A SIGKILL loses at most the block in
 *    flight, so a resume re-fetches only unfinished bytes.
 * Slot i of the progress file belongs to parts[i] of the JSON. A split shortens a part and APPENDS
 * the new one, so existing slots never move: whichever of the two files a SIGKILL catches first,
 * every slot still counts bytes of the part the JSON names (a shortened part's count is ≤ its new
 * length, an appended slot the JSON does not know yet is ignored). The parts therefore tile the file
 * but are not stored in file order.
 * After a reboot the page cache is gone, so the progress file cannot be trusted: the JSON records
 * the kernel boot id, and on a different boot only the durable counts are used.
 */
import { open, readFile, rename, rm, stat, writeFile, type FileHandle } from "node:fs/promises";

export interface PartState {
  start: number;
  end: number;
  /** Bytes of [start, end) written contiguously from `start`. */
  done: number;
  /** Of those, the bytes known to be on disk (an fdatasync returned after they were written). */
  durable: number;
}

export interface FileState {
  version: 2;
  path: string;
  size: number;
  /** Expected digest ("sha256:<hex>", "gitsha1:<hex>" or "size") — a state for other content is discarded. */
  digest: string;
  bootId: string;
  parts: { start: number; end: number; durable: number }[];
}

let bootIdCache: Promise<string> | undefined;
/** Linux boot id; "" elsewhere (then only durable counts are trusted). */
export function bootId(): Promise<string> {
  return (bootIdCache ??= readFile("/proc/sys/kernel/random/boot_id", "utf8").then((s) => s.trim(), () => ""));
}

export function splitParts(size: number, partSize: number): PartState[] {
  const parts: PartState[] = [];
  for (let s = 0; s < size; s += partSize) parts.push({ start: s, end: Math.min(size, s + partSize), done: 0, durable: 0 });
  if (parts.length === 0) parts.push({ start: 0, end: 0, done: 0, durable: 0 });
  return parts;
}

const progressPath = (statePath: string) => statePath.replace(/\.json$/, "") + ".progress";

/** Loads the parts of a matching state whose partial file is still there at full size; else undefined. */
export async function loadState(statePath: string, partialPath: string, expect: { size: number; digest: string }): Promise<PartState[] | undefined> {
  try {
    const s = JSON.parse(await readFile(statePath, "utf8")) as FileState;
    const st = await stat(partialPath);
    const tiled = Array.isArray(s.parts) ? [...s.parts].sort((a, b) => a.start - b.start || a.end - b.end) : [];
    const partsOk =
      tiled.length > 0 &&
      tiled.every((p, i) => p.start >= 0 && p.end <= s.size && p.durable >= 0 && p.durable <= p.end - p.start && p.start === (i === 0 ? 0 : tiled[i - 1].end)) &&
      tiled.at(-1)!.end === s.size;
    if (s.version !== 2 || s.size !== expect.size || s.digest !== expect.digest || st.size !== expect.size || !partsOk) return undefined;
    const sameBoot = s.bootId !== "" && s.bootId === (await bootId());
    const progress = sameBoot ? await readFile(progressPath(statePath)).catch(() => undefined) : undefined;
    return s.parts.map((p, i) => {
      const written = progress && progress.byteLength >= (i + 1) * 8 ? progress.readDoubleLE(i * 8) : 0;
      const ok = Number.isInteger(written) && written >= 0 && written <= p.end - p.start;
      return { start: p.start, end: p.end, done: Math.max(p.durable, ok ? written : 0), durable: p.durable };
    });
  } catch {
    return undefined;
  }
}

/** Atomically writes the JSON state with `durable` counts (call after an fdatasync of the partial). */
export async function saveState(statePath: string, s: Omit<FileState, "version" | "bootId">): Promise<void> {
  const tmp = `${statePath}.tmp`;
  const fh = await open(tmp, "w");
  try {
    await fh.writeFile(JSON.stringify({ version: 2, bootId: await bootId(), ...s }));
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, statePath);
}

/** The per-block progress file: slot i holds part i's written byte count (a new slot simply extends it). */
export class ProgressFile {
  private constructor(private readonly fh: FileHandle) {}

  static async open(statePath: string, parts: PartState[]): Promise<ProgressFile> {
    const buf = Buffer.alloc(parts.length * 8);
    parts.forEach((p, i) => buf.writeDoubleLE(p.done, i * 8));
    await writeFile(progressPath(statePath), buf);
    return new ProgressFile(await open(progressPath(statePath), "r+"));
  }

  async record(index: number, done: number): Promise<void> {
    const b = Buffer.allocUnsafe(8);
    b.writeDoubleLE(done);
    await this.fh.write(b, 0, 8, index * 8);
  }

  close(): Promise<void> {
    return this.fh.close().catch(() => {});
  }
}

export async function removeState(statePath: string, partialPath: string): Promise<void> {
  await Promise.all([statePath, partialPath, `${statePath}.tmp`, progressPath(statePath)].map((p) => rm(p, { force: true })));
}
