/**
 * Hugging Face Hub: revision → commit (repo info `sha`), the recursive tree at that commit, and the
 * resolve URL of a file. The listing goes through @huggingface/hub's `listFiles` (it follows the
 * `Link: rel="next"` pages) with our fetch underneath, which adds retries, per-origin auth (so
 * tokens that do not start with "hf_", e.g. for a mirror, still work) and X-Error-Code mapping.
 */
import { DsrError } from "../errors.js";
import type { HubHttp } from "./http.js";
import type { RequestContext } from "./errors.js";
import type { HubFile } from "./types.js";

export const HF_DEFAULT_ENDPOINT = "https://huggingface.co";
export const HF_DEFAULT_REVISION = "main";

interface RepoInfo {
  sha?: string;
  gated?: unknown;
}

interface TreeEntry {
  type: string;
  path: string;
  size: number;
  oid?: string;
  lfs?: { oid: string; size: number };
}

/** Revision → commit; `gated` tells whether file downloads need an approved token (info stays public). */
export async function hfResolveCommit(http: HubHttp, endpoint: string, repoId: string, revision: string, ctx: RequestContext): Promise<{ commit: string; gated: boolean }> {
  const url = `${endpoint}/api/models/${repoId}/revision/${encodeURIComponent(revision)}`;
  const { data } = await http.json<RepoInfo>(url, { ...ctx, kind: "repo" });
  if (typeof data.sha !== "string" || !/^[0-9a-f]{40}$/.test(data.sha)) {
    throw new DsrError("DSR_HUB_BAD_RESPONSE", `repo info for ${repoId}@${revision} has no commit sha`, {
      hint: "the endpoint does not behave like the Hugging Face Hub; check HF_ENDPOINT",
    });
  }
  return { commit: data.sha, gated: !!data.gated && data.gated !== "false" };
}

export async function hfListFiles(http: HubHttp, endpoint: string, repoId: string, commit: string, ctx: RequestContext): Promise<HubFile[]> {
  const { listFiles } = await import("@huggingface/hub");
  const files: HubFile[] = [];
  for await (const e of listFiles({
    repo: { type: "model", name: repoId },
    revision: commit,
    recursive: true,
    hubUrl: endpoint,
    fetch: http.fetchFor({ ...ctx, kind: "tree" }),
  }) as AsyncGenerator<TreeEntry>) {
    if (e.type !== "file") continue;
    files.push({ path: e.path, size: e.size, sha256: e.lfs?.oid, gitSha1: e.oid, lfs: !!e.lfs });
  }
  return files;
}

export function hfFileUrl(endpoint: string, repoId: string, commit: string, path: string): string {
  return `${endpoint}/${repoId}/resolve/${encodeURIComponent(commit)}/${path.split("/").map(encodeURIComponent).join("/")}`;
}
