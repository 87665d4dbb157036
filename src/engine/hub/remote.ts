/** openRemoteRepo: resolve a repo ref to a pinned file listing, plus ranged reads of its files. */
import { PassThrough, type Readable } from "node:stream";
import { once } from "node:events";
import { DsrError } from "../errors.js";
import type { ByteSource } from "../tensors/source.js";
import type { RequestContext } from "./errors.js";
import { DEFAULT_RETRY, HubHttp } from "./http.js";
import { fetchTransport, undiciTransport } from "./transport.js";
import { HF_DEFAULT_ENDPOINT, HF_DEFAULT_REVISION, hfFileUrl, hfListFiles, hfResolveCommit } from "./hf.js";
import { MS_DEFAULT_ENDPOINT, MS_DEFAULT_REVISION, msFileUrl, msListFiles } from "./modelscope.js";
import type { RepoRef } from "./repo-spec.js";
import type { HubFile, HubOptions, RemoteRepo } from "./types.js";

const trimSlash = (s: string) => s.replace(/\/+$/, "");

export function makeHttp(ref: RepoRef, opts: HubOptions): { http: HubHttp; endpoint: string } {
  const endpoint = trimSlash(ref.source === "hf" ? opts.hfEndpoint ?? HF_DEFAULT_ENDPOINT : opts.msEndpoint ?? MS_DEFAULT_ENDPOINT);
  const token = opts.token ?? (ref.source === "hf" ? opts.hfToken : opts.msToken);
  const authHeaders: Record<string, string> = !token ? {} : ref.source === "hf" ? { authorization: `Bearer ${token}` } : { cookie: `m_session_id=${token}` };
  const http = new HubHttp({
    transport: opts.fetch ? fetchTransport(opts.fetch) : undiciTransport(),
    authHeaders,
    authOrigins: [new URL(endpoint).origin],
    signal: opts.signal,
    userAgent: opts.userAgent ?? "dsr",
    retry: { ...DEFAULT_RETRY, ...opts.retry },
    headersTimeoutMs: opts.headersTimeoutMs ?? 30_000,
    stallTimeoutMs: opts.stallTimeoutMs ?? 30_000,
    onRetry: opts.onRetry,
  });
  return { http, endpoint };
}

export async function openRemoteRepo(ref: RepoRef, opts: HubOptions): Promise<RemoteRepo> {
  const { http, endpoint } = makeHttp(ref, opts);
  const webUrl = ref.source === "hf" ? `${endpoint}/${ref.repoId}` : `${endpoint}/models/${ref.repoId}`;
  const revision = ref.revision ?? (ref.source === "hf" ? HF_DEFAULT_REVISION : MS_DEFAULT_REVISION);
  const ctx: RequestContext = { source: ref.source, repoId: ref.repoId, revision, webBase: ref.source === "hf" ? endpoint : `${endpoint}/models`, kind: "repo" };

  let commit: string;
  let gated = false;
  let files: HubFile[];
  let urlOf: (path: string) => string;
  if (ref.source === "hf") {
    ({ commit, gated } = await hfResolveCommit(http, endpoint, ref.repoId, revision, ctx));
    files = await hfListFiles(http, endpoint, ref.repoId, commit, ctx);
    urlOf = (p) => hfFileUrl(endpoint, ref.repoId, commit, p);
  } else {
    ({ files, commit } = await msListFiles(http, endpoint, ref.repoId, revision, ctx));
    urlOf = (p) => msFileUrl(endpoint, ref.repoId, revision, p);
  }
  files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const byPath = new Map(files.map((f) => [f.path, f]));
  const fileOf = (path: string): HubFile => {
    const f = byPath.get(path);
    if (!f) {
      throw new DsrError("DSR_HUB_FILE_NOT_FOUND", `${path} not found in ${ref.repoId}@${revision}`, {
        hint: `the repo has ${files.length} files; check the name on ${webUrl}`,
      });
    }
    return f;
  };
  const readRange: RemoteRepo["readRange"] = (path, start, end, onChunk) =>
    http.readRange(urlOf(path), start, end, { ...ctx, kind: "file", file: path, revision }, onChunk);

  return {
    ref,
    revision,
    commit,
    gated,
    files,
    webUrl,
    readRange,
    fileSource: (path) => new HttpByteSource(fileOf(path), `${ref.repoId}/${path}`, readRange),
    stats: () => ({ ...http.counters }),
  };
}

/** A ByteSource over HTTP Range requests; reads clamp at the file size known from the listing. */
class HttpByteSource implements ByteSource {
  constructor(
    private readonly file: HubFile,
    readonly name: string,
    private readonly readRange: RemoteRepo["readRange"],
  ) {}

  async size(): Promise<number> {
    return this.file.size;
  }

  async read(start: number, length: number): Promise<Uint8Array> {
    const end = Math.min(this.file.size, start + length);
    if (end <= start) return new Uint8Array(0);
    const buf = Buffer.allocUnsafeSlow(end - start);
    await this.readRange(this.file.path, start, end, (chunk, off) => {
      buf.set(chunk, off - start);
    });
    return buf;
  }

  stream(start: number, end: number): Readable {
    const out = new PassThrough({ highWaterMark: 1 << 20 });
    const stop = Math.min(end, this.file.size);
    this.readRange(this.file.path, start, stop, async (chunk) => {
      if (!out.write(chunk)) await once(out, "drain");
    }).then(
      () => out.end(),
      (e) => out.destroy(e),
    );
    return out;
  }
}
