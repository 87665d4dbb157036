/**
 * `pull --verify`: re-hash every selected file that is in place against the hub's listing (sha256 for
 * LFS / ModelScope, git blob sha1 for small HF files). A corrupt file is removed, so the next
 * `dsr pull` fetches it again instead of trusting its size.
 */
import { rm, stat } from "node:fs/promises";
import { digestOf } from "./download/file-job.js";
import { hashFile } from "./hash-file.js";
import { makeLayout, type LayoutSpec } from "./layout.js";
import { selectFiles } from "./pull.js";
import { openRemoteRepo } from "./remote.js";
import type { RepoRef } from "./repo-spec.js";
import type { HubOptions } from "./types.js";

export interface VerifiedFile {
  path: string;
  size: number;
  status: "ok" | "missing" | "corrupt" | "unchecked";
  expected?: string;
  actual?: string;
}

export interface VerifyResult {
  repo: string;
  commit: string;
  modelPath: string;
  files: VerifiedFile[];
  ok: number;
  missing: number;
  corrupt: number;
  bytesHashed: number;
  seconds: number;
}

export async function verifyDownload(o: {
  ref: RepoRef;
  hub: HubOptions;
  layout: LayoutSpec;
  include?: string[];
  exclude?: string[];
  signal?: AbortSignal;
  onFile?: (f: VerifiedFile) => void;
  onBytes?: (n: number) => void;
}): Promise<VerifyResult> {
  const t0 = performance.now();
  const remote = await openRemoteRepo(o.ref, { ...o.hub, signal: o.signal });
  const layout = makeLayout(o.layout, o.ref, remote.revision, remote.commit);
  const out: VerifiedFile[] = [];
  let bytesHashed = 0;
  const seen = new Map<string, VerifiedFile["status"]>();
  for (const f of selectFiles(remote.files, o.include, o.exclude)) {
    const path = layout.contentPath(f);
    const d = digestOf(f);
    const expected = "hex" in d ? d.hex : undefined;
    let v: VerifiedFile;
    const s = await stat(path).catch(() => undefined);
    if (!s?.isFile()) v = { path: f.path, size: f.size, status: "missing", expected };
    else if (s.size !== f.size) v = { path: f.path, size: f.size, status: "corrupt", expected: `${f.size} bytes`, actual: `${s.size} bytes` };
    else if (seen.has(path)) v = { path: f.path, size: f.size, status: seen.get(path)!, expected };
    else if (d.algo === "none") v = { path: f.path, size: f.size, status: "unchecked" };
    else {
      const actual = await hashFile(path, f.size, d, (n) => {
        bytesHashed += n;
        o.onBytes?.(n);
      }, o.signal);
      v = { path: f.path, size: f.size, status: actual === expected ? "ok" : "corrupt", expected, actual };
    }
    if (v.status === "corrupt" && !seen.has(path)) await rm(path, { force: true });
    seen.set(path, v.status);
    out.push(v);
    o.onFile?.(v);
  }
  const count = (st: VerifiedFile["status"]) => out.filter((f) => f.status === st).length;
  return { repo: o.ref.repoId, commit: remote.commit, modelPath: layout.modelPath, files: out, ok: count("ok"), missing: count("missing"), corrupt: count("corrupt"), bytesHashed, seconds: (performance.now() - t0) / 1000 };
}
