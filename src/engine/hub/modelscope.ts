/**
 * ModelScope (the v1.36 SDK's endpoints, facts §2): the file listing carries Size and Sha256 for every
 * file inside the {Code, Data, Message, Success} envelope; files are read from the repo endpoint with
 * Revision/FilePath query parameters; auth is the m_session_id cookie.
 */
import { DsrError } from "../errors.js";
import type { RequestContext } from "./errors.js";
import type { HubHttp } from "./http.js";
import type { HubFile } from "./types.js";

export const MS_DEFAULT_ENDPOINT = "https://www.modelscope.cn";
export const MS_DEFAULT_REVISION = "master";
const SKIP = new Set([".gitignore", ".gitattributes"]);

interface Envelope<T> {
  Code?: number;
  Success?: boolean;
  Message?: string;
  Data?: T;
}

interface MsFile {
  Type: string;
  Path: string;
  Size: number;
  Sha256?: string;
  IsLFS?: boolean;
  Revision?: string;
  CommittedDate?: number;
}

export async function msListFiles(http: HubHttp, endpoint: string, repoId: string, revision: string, ctx: RequestContext): Promise<{ files: HubFile[]; commit: string }> {
  const q = new URLSearchParams({ Revision: revision, Recursive: "True" });
  const { data } = await http.json<Envelope<{ Files?: MsFile[] }>>(`${endpoint}/api/v1/models/${repoId}/repo/files?${q}`, { ...ctx, kind: "tree" });
  if (data.Success === false || (data.Code !== undefined && data.Code !== 200) || !Array.isArray(data.Data?.Files)) {
    const msg = data.Message ?? "no file list";
    const notFound = /not.?exist|not found/i.test(msg);
    throw new DsrError(notFound ? (/revision/i.test(msg) ? "DSR_HUB_REVISION_NOT_FOUND" : "DSR_HUB_REPO_NOT_FOUND") : "DSR_HUB_BAD_RESPONSE", `ModelScope: ${repoId}@${revision}: ${msg}`, {
      hint: notFound ? `check the repo id and revision on ${ctx.webBase}/${repoId}` : "check the ModelScope endpoint (MODELSCOPE_DOMAIN)",
      details: { code: data.Code },
    });
  }
  const blobs = data.Data!.Files!.filter((f) => f.Type === "blob" && !SKIP.has(f.Path));
  // The listing names the commit of each file's last change; the newest one stands for the snapshot.
  const newest = blobs.reduce<MsFile | undefined>((a, f) => (!a || (f.CommittedDate ?? 0) > (a.CommittedDate ?? 0) ? f : a), undefined);
  return {
    files: blobs.map((f) => ({ path: f.Path, size: f.Size, sha256: f.Sha256 || undefined, lfs: !!f.IsLFS })),
    commit: newest?.Revision ?? revision,
  };
}

export function msFileUrl(endpoint: string, repoId: string, revision: string, path: string): string {
  return `${endpoint}/api/v1/models/${repoId}/repo?${new URLSearchParams({ Revision: revision, FilePath: path })}`;
}
