/**
 * The resume manifest, OUT/.dsr-convert.json: the plan's fingerprint (inputs' names, sizes and
 * mtimes, the options, every output header) and the shards already finished. A shard is entered
 * only after it was fsynced and renamed into place, so a listed shard whose size and header bytes
 * still match is complete; a re-run keeps it and redoes the rest.
 */
import { open, readFile, rename, writeFile } from "node:fs/promises";
import { join } from "node:path";

export const MANIFEST_FILE = ".dsr-convert.json";

export interface Manifest {
  version: 1;
  fingerprint: string;
  /** Output files this run created (removed when a different conversion takes over the folder). */
  files: string[];
  done: Record<string, { size: number }>;
  complete: boolean;
}

export async function readManifest(outDir: string): Promise<Manifest | undefined> {
  try {
    const m = JSON.parse(await readFile(join(outDir, MANIFEST_FILE), "utf8")) as Manifest;
    return m?.version === 1 && typeof m.fingerprint === "string" && m.done && Array.isArray(m.files) ? m : undefined;
  } catch {
    return undefined;
  }
}

export async function writeManifest(outDir: string, m: Manifest): Promise<void> {
  await writeFileAtomic(join(outDir, MANIFEST_FILE), JSON.stringify(m, null, 2) + "\n");
}

/** `.partial` + fsync + rename, for small files. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const tmp = path + ".partial";
  await writeFile(tmp, data);
  const fh = await open(tmp, "r+");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}

/** True when the file at `path` has exactly `size` bytes and starts with `header`. */
export async function shardLooksComplete(path: string, size: number, header: Uint8Array): Promise<boolean> {
  let fh;
  try {
    fh = await open(path, "r");
  } catch {
    return false;
  }
  try {
    if ((await fh.stat()).size !== size) return false;
    const buf = Buffer.alloc(header.byteLength);
    const { bytesRead } = await fh.read(buf, 0, buf.byteLength, 0);
    return bytesRead === header.byteLength && buf.equals(header);
  } finally {
    await fh.close();
  }
}
