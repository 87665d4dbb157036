/**
 * Where downloaded files go (facts §1.6, §2):
 *  - hf-cache: `<root>/models--org--name/blobs/<sha256|gitsha1>`, `snapshots/<commit>/<path>` as
 *    relative symlinks, `refs/<revision>` holding the commit with no trailing newline — what
 *    huggingface_hub, transformers, vLLM and SGLang read offline. Partials are `blobs/<key>.dsr-partial`,
 *    not `<key>.incomplete`: hub ≤ 0.36 resumes an `.incomplete` from its length, and ours are sparse
 *    with holes, so sharing the name would let Python "resume" garbage.
 *  - ms-cache: `<root>/models/<owner>/<name with "." → "___">/<path>` plain files, partials under
 *    `models/._____temp/…`, and the SDK's `.mdl`/`.msc`/`.mv` index files.
 *  - local-dir: `<dir>/<path>` plain files, partials under `<dir>/.cache/dsr/`; for HF sources also
 *    huggingface_hub's `.cache/huggingface/download/<path>.metadata` (commit, etag, timestamp).
 * The plain-file layouts keep a manifest (path → size, digest, mtime) so a re-run knows which files
 * it already verified without hashing them again.
 */
import { lstat, mkdir, readFile, readlink, rename, stat, symlink, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { DsrError } from "../errors.js";
import { pickle } from "./pickle.js";
import type { RepoRef } from "./repo-spec.js";
import type { HubFile } from "./types.js";

export type LayoutSpec = { kind: "hf-cache"; cacheDir: string } | { kind: "ms-cache"; cacheDir: string } | { kind: "local-dir"; dir: string };

export interface Layout {
  readonly kind: LayoutSpec["kind"];
  /** The model folder to hand to `dsr serve` / vLLM. */
  readonly modelPath: string;
  /** A folder on the target filesystem (for the free-space check). */
  readonly diskPath: string;
  /** Dedup key: files sharing one are downloaded once (HF blobs are content-addressed). */
  key(f: HubFile): string;
  partialPath(f: HubFile): string;
  /** Where the content of f lives once in place. */
  contentPath(f: HubFile): string;
  /** "present": in place and trusted; "unverified": a same-size file dsr did not verify; "missing". */
  check(f: HubFile): Promise<"present" | "unverified" | "missing">;
  /** Moves a verified partial (or, with undefined, the already-present content) into place. */
  place(f: HubFile, verifiedPartial?: string): Promise<void>;
  /** refs, index files, manifest. */
  finish(): Promise<void>;
  /** Lock file that keeps a second pull out of the same target. */
  readonly lockPath: string;
}

const exists = (p: string) => stat(p).then((s) => s, () => undefined);

async function atomicWrite(path: string, data: string | Buffer): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

export function makeLayout(spec: LayoutSpec, ref: RepoRef, revision: string, commit: string): Layout {
  if (spec.kind === "hf-cache") return hfCache(spec.cacheDir, ref, revision, commit);
  const [owner, name] = ref.repoId.split("/");
  if (spec.kind === "ms-cache") {
    const modelDir = join(spec.cacheDir, "models", owner, name.replaceAll(".", "___"));
    const tempDir = join(spec.cacheDir, "models", "._____temp", owner, name.replaceAll(".", "___"));
    return plainFiles("ms-cache", modelDir, tempDir, join(modelDir, ".dsr-pull.json"), ref, revision, commit, spec.cacheDir);
  }
  return plainFiles("local-dir", spec.dir, join(spec.dir, ".cache", "dsr"), join(spec.dir, ".cache", "dsr", "manifest.json"), ref, revision, commit, spec.dir);
}

function hfCache(cacheDir: string, ref: RepoRef, revision: string, commit: string): Layout {
  const repoDir = join(cacheDir, `models--${ref.repoId.split("/").join("--")}`);
  const key = (f: HubFile) => {
    const k = f.sha256 ?? f.gitSha1;
    if (!k || !/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(k)) {
      throw new DsrError("DSR_HUB_BAD_RESPONSE", `${f.path}: the listing has no valid hash to name its cache blob`, { hint: "use --local-dir for this repo" });
    }
    return k;
  };
  const blob = (f: HubFile) => join(repoDir, "blobs", key(f));
  const snapshotDir = join(repoDir, "snapshots", commit);
  return {
    kind: "hf-cache",
    modelPath: snapshotDir,
    lockPath: join(cacheDir, ".locks", `models--${ref.repoId.split("/").join("--")}`, "dsr-pull.lock"),
    diskPath: cacheDir,
    key,
    partialPath: (f) => `${blob(f)}.dsr-partial`,
    contentPath: blob,
    async check(f) {
      const s = await exists(blob(f));
      return s?.isFile() && s.size === f.size ? "present" : "missing";
    },
    async place(f, partial) {
      const target = blob(f);
      if (partial) {
        await mkdir(dirname(target), { recursive: true });
        await rename(partial, target);
      }
      const link = join(snapshotDir, ...f.path.split("/"));
      const rel = relative(dirname(link), target);
      const cur = await lstat(link).then(() => readlink(link), () => undefined);
      if (cur === rel) return;
      await mkdir(dirname(link), { recursive: true });
      const tmp = `${link}.${process.pid}.tmp`;
      await symlink(rel, tmp);
      await rename(tmp, link);
    },
    async finish() {
      // refs/<revision> only for names, never for a commit (huggingface_hub does the same).
      if (revision !== commit) await atomicWrite(join(repoDir, "refs", ...revision.split("/")), commit);
      const tag = join(cacheDir, "CACHEDIR.TAG");
      if (!(await exists(tag))) {
        await atomicWrite(tag, "Signature: 8a477f597d28d172789f06886806bc55\n# This file is a cache directory tag created by huggingface_hub.\n");
      }
    },
  };
}

interface ManifestEntry {
  size: number;
  digest: string;
  mtimeMs: number;
}

function plainFiles(kind: "ms-cache" | "local-dir", modelDir: string, tempDir: string, manifestPath: string, ref: RepoRef, revision: string, commit: string, diskPath: string): Layout {
  let manifest: Record<string, ManifestEntry> | undefined;
  const load = async (): Promise<Record<string, ManifestEntry>> =>
    (manifest ??= await readFile(manifestPath, "utf8").then((t) => JSON.parse(t).files as Record<string, ManifestEntry>, () => ({}) as Record<string, ManifestEntry>));
  const digest = (f: HubFile) => f.sha256 ?? f.gitSha1 ?? `size:${f.size}`;
  const final = (f: HubFile) => join(modelDir, ...f.path.split("/"));
  const saveManifest = () => atomicWrite(manifestPath, JSON.stringify({ source: ref.source, repo: ref.repoId, revision, commit, files: manifest }, null, 1));
  return {
    kind,
    modelPath: modelDir,
    lockPath: join(tempDir, "dsr-pull.lock"),
    diskPath,
    key: (f) => f.path,
    partialPath: (f) => join(tempDir, ...f.path.split("/")) + ".dsr-partial",
    contentPath: final,
    async check(f) {
      const s = await exists(final(f));
      if (!s?.isFile() || s.size !== f.size) return "missing";
      const m = (await load())[f.path];
      return m && m.digest === digest(f) && m.size === f.size && m.mtimeMs === s.mtimeMs ? "present" : "unverified";
    },
    async place(f, partial) {
      const target = final(f);
      if (partial) {
        await mkdir(dirname(target), { recursive: true });
        await rename(partial, target);
      }
      const s = await stat(target);
      (await load())[f.path] = { size: f.size, digest: digest(f), mtimeMs: s.mtimeMs };
      if (kind === "local-dir" && ref.source === "hf") {
        // huggingface_hub's local_dir metadata: it treats the file as up to date for this commit.
        const meta = join(modelDir, ".cache", "huggingface", "download", ...f.path.split("/")) + ".metadata";
        await atomicWrite(meta, `${commit}\n${f.sha256 ?? f.gitSha1 ?? ""}\n${(s.mtimeMs / 1000 + 1).toFixed(6)}\n`);
      }
    },
    async finish() {
      await load();
      await saveManifest();
      if (kind === "ms-cache") {
        const files = Object.keys(manifest!).sort();
        await atomicWrite(join(modelDir, ".mdl"), pickle({ id: ref.repoId }));
        await atomicWrite(join(modelDir, ".msc"), pickle(files.map((p) => ({ Path: p, Revision: commit }))));
        await atomicWrite(join(modelDir, ".mv"), `Revision:${revision},CreatedAt:${Math.floor(Date.now() / 1000)}`);
      }
    },
  };
}
