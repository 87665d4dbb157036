/** A CheckpointSource over a local directory (a snapshot, a download, or sparse test files). */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import { DsrError, ExitCode } from "../errors.js";
import { FileByteSource } from "../tensors/source.js";
import type { CheckpointSource, RepoFile } from "./types.js";

export async function openLocalSource(dir: string): Promise<CheckpointSource> {
  let st;
  try {
    st = await stat(dir);
  } catch {
    throw new DsrError("DSR_NOT_FOUND", `${dir}: no such directory`, { exitCode: ExitCode.usage, hint: "give a model directory, a .safetensors file's folder, or a repo id such as hf:org/name" });
  }
  if (!st.isDirectory()) {
    throw new DsrError("DSR_NOT_A_DIRECTORY", `${dir}: not a directory`, { exitCode: ExitCode.usage, hint: "give the folder that holds config.json and the .safetensors files" });
  }
  return {
    kind: "local",
    location: dir,
    async listFiles() {
      const out: RepoFile[] = [];
      // Top level only: shards, index, config and tokenizer files live there in HF layouts.
      for (const e of await readdir(dir, { withFileTypes: true })) {
        if (!e.isFile() && !e.isSymbolicLink()) continue;
        try {
          const s = await stat(join(dir, e.name)); // follows HF-cache snapshot symlinks
          if (s.isFile()) out.push({ path: e.name, size: s.size });
        } catch {
          out.push({ path: e.name }); // dangling symlink: listed, size unknown
        }
      }
      return out.sort((a, b) => (a.path < b.path ? -1 : 1));
    },
    async readFile(path, maxBytes) {
      const src = new FileByteSource(join(dir, path), path);
      try {
        const size = await src.size();
        if (size > maxBytes) {
          throw new DsrError("DSR_FILE_TOO_LARGE", `${path}: ${size} bytes, more than the ${maxBytes}-byte limit for this file`, {
            exitCode: ExitCode.integrity,
            hint: "the file is corrupt or not what its name says",
            details: { file: path },
          });
        }
        return await src.read(0, size);
      } finally {
        await src.close();
      }
    },
    byteSource: (path) => new FileByteSource(join(dir, path), path),
  };
}
