/** A CheckpointSource over a hub repo (src/engine/hub): listing from the hub, bytes by HTTP ranges. */
import { DsrError, ExitCode } from "../errors.js";
import { formatRepoRef, openRemoteRepo, type HubOptions, type RemoteRepo, type RepoRef } from "../hub/index.js";
import type { CheckpointSource } from "./types.js";

export function remoteSource(repo: RemoteRepo): CheckpointSource {
  const sizes = new Map(repo.files.map((f) => [f.path, f.size]));
  return {
    kind: "remote",
    location: formatRepoRef({ ...repo.ref, revision: undefined }),
    revision: repo.revision,
    commit: repo.commit,
    listFiles: async () => repo.files.map((f) => ({ path: f.path, size: f.size })),
    async readFile(path, maxBytes) {
      const size = sizes.get(path) ?? 0;
      if (size > maxBytes) {
        throw new DsrError("DSR_FILE_TOO_LARGE", `${path}: ${size} bytes, more than the ${maxBytes}-byte limit for this file`, {
          exitCode: ExitCode.integrity,
          hint: "the file is corrupt or not what its name says",
          details: { file: path },
        });
      }
      return repo.fileSource(path).read(0, size);
    },
    byteSource: (path) => repo.fileSource(path),
    stats: () => repo.stats(),
  };
}

export async function openRemoteSource(ref: RepoRef, opts: HubOptions): Promise<CheckpointSource> {
  return remoteSource(await openRemoteRepo(ref, opts));
}
