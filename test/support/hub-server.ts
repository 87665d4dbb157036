/**
 * A loopback hub for tests and benchmarks: one node:http server speaking the Hugging Face Hub API
 * (repo info, paginated recursive tree, resolve with HEAD metadata headers, X-Error-Code errors,
 * gated/private repos) and ModelScope's (file listing envelope, repo file download), plus a second
 * server on another port acting as the CDN that HF resolve URLs of LFS files redirect to — so
 * cross-origin redirect handling is real (the CDN rejects requests that carry an Authorization
 * header, as S3-style signed URLs do). Range, 416, throttling and switchable faults included.
 * File content may be lazy (generated on demand), so 689 GB-shaped repos cost nothing.
 */
import http from "node:http";
import type { AddressInfo } from "node:net";
import { createHash } from "node:crypto";
import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";

export interface ServedFile {
  path: string;
  size: number;
  lfs?: boolean;
  /** Bytes [start, end) — end exclusive. */
  read(start: number, end: number): Uint8Array | Promise<Uint8Array>;
}

export interface ServedRepo {
  id: string;
  commit?: string;
  branches?: Record<string, string>;
  files: ServedFile[];
  /** true: 401 without a token, 403 with one. "approved": 401 without a token, served with the right one. */
  gated?: boolean | "approved";
  private?: boolean;
  /** Precomputed sha256 for big generated files (otherwise computed once and cached). */
  sha256?: (path: string) => string | undefined;
}

interface FaultRule {
  /** Only this repo-relative file path (default: any file download). */
  path?: string;
  /** How many times it fires (default: unlimited). */
  times?: number;
  /** 500/429 also hit API routes (listing, repo info). */
  api?: boolean;
}

export interface FaultSpec {
  /** Destroy the connection after this many body bytes of a file response. */
  drop?: FaultRule & { afterBytes: number };
  error500?: FaultRule;
  rateLimit?: FaultRule & { retryAfterSec: number };
  /** Flip the byte at this file offset in the served content. */
  corrupt?: FaultRule & { path: string; offset: number };
  /** Send nothing for `ms` after `afterBytes` body bytes. */
  stall?: FaultRule & { afterBytes: number; ms: number };
  /** Per-connection rate limit for file bodies (overrides perConnectionBytesPerSec). */
  slow?: { bytesPerSec: number };
}

export interface HubServerStats {
  requests: number;
  rangeRequests: number;
  /** File-content body bytes sent. */
  bytes: number;
  byPath: Map<string, number>;
  /** One entry per file-content response: the byte range actually written, and when it was open (performance.now()). */
  sent: SentRange[];
}

export interface SentRange {
  path: string;
  start: number;
  /** Exclusive; grows as bytes are written. */
  end: number;
  openedAt: number;
  /** Unset while the response is still being written. */
  closedAt?: number;
}

export interface HubServerOptions {
  repos: ServedRepo[];
  latencyMs?: number;
  perConnectionBytesPerSec?: number;
  faults?: FaultSpec;
  /** The one valid token (Bearer for HF, m_session_id cookie for ModelScope). */
  token?: string;
  /** Tree page size (HF); small values exercise Link pagination. */
  treePageSize?: number;
}

export interface HubServer {
  hfEndpoint: string;
  msEndpoint: string;
  cdnOrigin: string;
  stats: HubServerStats;
  setFaults(f: FaultSpec): void;
  resetStats(): void;
  close(): Promise<void>;
}

/** Resolves on 'drain' or 'close', removing both listeners (a once() pair would leak the other). */
function drained(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off("drain", done);
      res.off("close", done);
      resolve();
    };
    res.on("drain", done);
    res.on("close", done);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const sha1 = (s: string) => createHash("sha1").update(s).digest("hex");

export async function startHubServer(opts: HubServerOptions): Promise<HubServer> {
  let faults: FaultSpec = opts.faults ?? {};
  const stats: HubServerStats = { requests: 0, rangeRequests: 0, bytes: 0, byPath: new Map(), sent: [] };
  const repos = new Map(opts.repos.map((r) => [r.id, r]));
  const hashCache = new Map<string, Promise<{ sha256: string; sha1: string }>>();
  const pageSize = opts.treePageSize ?? 1000;
  const commitOf = (r: ServedRepo) => r.commit ?? sha1(`commit:${r.id}`);

  const hashes = (r: ServedRepo, f: ServedFile) => {
    const key = `${r.id}/${f.path}`;
    let h = hashCache.get(key);
    if (!h) {
      h = (async () => {
        const pre = r.sha256?.(f.path);
        const s256 = pre ? undefined : createHash("sha256");
        const g = createHash("sha1").update(`blob ${f.size}\0`);
        const needSha1 = !f.lfs;
        if (s256 || needSha1) {
          for (let p = 0; p < f.size; p += 1 << 22) {
            const chunk = await f.read(p, Math.min(f.size, p + (1 << 22)));
            s256?.update(chunk);
            if (needSha1) g.update(chunk);
          }
        }
        return { sha256: pre ?? s256!.digest("hex"), sha1: needSha1 ? g.digest("hex") : sha1(`lfs-pointer:${key}`) };
      })();
      hashCache.set(key, h);
    }
    return h;
  };

  /** Fires a fault rule for this request if it matches; decrements its counter. */
  const take = <R extends FaultRule>(rule: R | undefined, path: string | undefined): R | undefined => {
    if (!rule || (rule.times ?? Infinity) <= 0) return undefined;
    if (path === undefined ? !rule.api : rule.path !== undefined && rule.path !== path) return undefined;
    if (rule.times !== undefined) rule.times--;
    return rule;
  };

  const resolveRev = (r: ServedRepo, rev: string): string | undefined => {
    const c = commitOf(r);
    const branches = r.branches ?? { main: c, master: c };
    if (rev === "HEAD") rev = "main"; // the Hub's name for the default branch
    return rev === c || Object.values(branches).includes(rev) ? rev : branches[rev];
  };

  type Auth = { status: number; code?: string; message: string } | undefined;
  // Gating applies to file content only: on the Hub a gated repo's info and file list stay public.
  const authFor = (r: ServedRepo | undefined, req: http.IncomingMessage, ms: boolean, content: boolean): Auth => {
    const presented = ms
      ? /(?:^|;\s*)m_session_id=([^;]+)/.exec(req.headers.cookie ?? "")?.[1]
      : /^Bearer (.+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (presented !== undefined && presented !== opts.token) return { status: 401, message: "Invalid credentials in Authorization header" };
    const ok = presented !== undefined;
    if (!r) return { status: ok || ms ? 404 : 401, code: "RepoNotFound", message: "Repository Not Found" };
    if (r.private && !ok) return { status: 401, code: "RepoNotFound", message: "Repository Not Found" };
    if (!content) return undefined;
    if (r.gated && !ok) return { status: 401, code: "GatedRepo", message: `Access to model ${r.id} is restricted. You must have access to it and be authenticated to access it. Please log in.` };
    if (r.gated === true) return { status: 403, code: "GatedRepo", message: `Access to model ${r.id} is restricted and you are not in the authorized list.` };
    return undefined;
  };

  const sendJson = (res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
    const text = JSON.stringify(body);
    res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers });
    res.end(text);
  };
  const hfError = (res: http.ServerResponse, status: number, code: string | undefined, message: string, extra: Record<string, string> = {}) =>
    sendJson(res, status, { error: message }, { ...(code ? { "x-error-code": code } : {}), "x-error-message": message, ...extra });
  const msEnvelope = (res: http.ServerResponse, status: number, data: unknown, message = "success") =>
    sendJson(res, status, { Code: status === 200 ? 200 : status, Data: data, Message: message, RequestId: sha1(String(Math.random())), Success: status === 200 });

  /** Serves file content with Range, throttling and faults. */
  const serveContent = async (req: http.IncomingMessage, res: http.ServerResponse, r: ServedRepo, f: ServedFile, headers: Record<string, string>) => {
    const range = req.headers.range;
    let start = 0;
    let end = f.size; // exclusive
    let status = 200;
    if (range) {
      stats.rangeRequests++;
      const m = /^bytes=(\d*)-(\d*)$/.exec(range);
      const a = m?.[1] ? Number(m[1]) : NaN;
      const b = m?.[2] ? Number(m[2]) + 1 : f.size;
      if (!m || Number.isNaN(a) || a >= f.size || b <= a) {
        res.writeHead(416, { "content-range": `bytes */${f.size}`, ...headers });
        return res.end();
      }
      start = a;
      end = Math.min(b, f.size);
      status = 206;
      headers["content-range"] = `bytes ${start}-${end - 1}/${f.size}`;
    }
    res.writeHead(status, { "content-type": "application/octet-stream", "content-length": String(end - start), "accept-ranges": "bytes", ...headers });
    if (req.method === "HEAD") return res.end();
    const drop = take(faults.drop, f.path);
    const stall = take(faults.stall, f.path);
    const corrupt = faults.corrupt && faults.corrupt.path === f.path && faults.corrupt.offset >= start && faults.corrupt.offset < end ? take(faults.corrupt, f.path) : undefined;
    const rate = faults.slow?.bytesPerSec ?? opts.perConnectionBytesPerSec;
    const chunkSize = rate ? Math.max(4096, Math.min(1 << 16, Math.floor(rate / 200))) : 1 << 16;
    const t0 = performance.now();
    const log: SentRange = { path: f.path, start, end: start, openedAt: t0 };
    stats.sent.push(log);
    res.once("close", () => (log.closedAt = performance.now()));
    let sent = 0;
    let stalled = false;
    for (let pos = start; pos < end && !res.destroyed; ) {
      let n = Math.min(chunkSize, end - pos);
      if (drop && sent + n > drop.afterBytes) n = drop.afterBytes - sent;
      if (stall && !stalled && sent + n > stall.afterBytes) n = stall.afterBytes - sent;
      if (n > 0) {
        let chunk = await f.read(pos, pos + n);
        if (corrupt && corrupt.offset >= pos && corrupt.offset < pos + n) {
          chunk = Uint8Array.from(chunk);
          chunk[corrupt.offset - pos] ^= 0xff;
        }
        const ok = res.write(chunk);
        sent += n;
        pos += n;
        log.end = pos;
        stats.bytes += n;
        stats.byPath.set(f.path, (stats.byPath.get(f.path) ?? 0) + n);
        if (!ok) await drained(res);
        if (rate) {
          const ahead = (sent / rate) * 1000 - (performance.now() - t0);
          if (ahead > 2) await sleep(ahead);
        }
      }
      if (drop && sent >= drop.afterBytes) {
        res.socket?.destroy();
        return;
      }
      if (stall && !stalled && sent >= stall.afterBytes) {
        stalled = true;
        await sleep(stall.ms);
      }
    }
    res.end();
  };

  const cdn = http.createServer(async (req, res) => {
    stats.requests++;
    // /cdn/<owner>/<name>/<commit>/<path>?sig=…
    const url = new URL(req.url!, "http://x");
    const m = /^\/cdn\/([^/]+\/[^/]+)\/([0-9a-f]{40})\/(.+)$/.exec(url.pathname);
    const r = m ? repos.get(decodeURIComponent(m[1])) : undefined;
    const f = r?.files.find((x) => x.path === decodeURIComponent(m![3]));
    if (req.headers.authorization) return sendJson(res, 400, { error: "Only one auth mechanism allowed" });
    if (!r || !f || url.searchParams.get("sig") !== sha1(`${r.id}/${f.path}`)) return sendJson(res, 403, { error: "bad signature" });
    await serveContent(req, res, r, f, { etag: `"${(await hashes(r, f)).sha256}"` });
  });

  let cdnOrigin = "";
  let hubOrigin = "";
  const hub = http.createServer(async (req, res) => {
    stats.requests++;
    if (opts.latencyMs) await sleep(opts.latencyMs);
    const url = new URL(req.url!, "http://x");
    const p = url.pathname;
    let m: RegExpExecArray | null;
    try {
      // ---- ModelScope ----
      if ((m = /^\/api\/v1\/models\/([^/]+\/[^/]+)\/repo(\/files)?$/.exec(p))) {
        const r = repos.get(decodeURIComponent(m[1]));
        const denied = authFor(r, req, true, !m[2]);
        if (take(faults.error500, m[2] ? undefined : url.searchParams.get("FilePath") ?? undefined)) return msEnvelope(res, 500, null, "internal error");
        if (denied) return msEnvelope(res, denied.status, null, denied.status === 404 ? "model not exists" : denied.message);
        const rev = url.searchParams.get("Revision") ?? "master";
        const commit = resolveRev(r!, rev);
        if (!commit) return msEnvelope(res, 404, null, `Revision ${rev} not exists`);
        if (m[2]) {
          const files = await Promise.all(
            r!.files.map(async (f) => ({ Type: "blob", Path: f.path, Name: f.path.split("/").pop(), Size: f.size, Sha256: (await hashes(r!, f)).sha256, IsLFS: !!f.lfs, Revision: commit, CommittedDate: 1_700_000_000 })),
          );
          return msEnvelope(res, 200, { Files: [{ Type: "blob", Path: ".gitattributes", Name: ".gitattributes", Size: 10, Sha256: "", IsLFS: false }, ...files] });
        }
        const fp = url.searchParams.get("FilePath") ?? "";
        const f = r!.files.find((x) => x.path === fp);
        if (!f) return msEnvelope(res, 404, null, `file ${fp} not exists`);
        const rl = take(faults.rateLimit, f.path);
        if (rl) return sendJson(res, 429, { Code: 429, Message: "too many requests" }, { "retry-after": String(rl.retryAfterSec) });
        return await serveContent(req, res, r!, f, {});
      }
      // ---- Hugging Face ----
      if ((m = /^\/api\/models\/([^/]+\/[^/]+?)(?:\/(revision|tree)\/([^/]+))?$/.exec(p))) {
        const id = decodeURIComponent(m[1]);
        const r = repos.get(id);
        if (take(faults.error500, undefined)) return hfError(res, 500, undefined, "Internal Error");
        const rl = take(faults.rateLimit, undefined);
        if (rl) return hfError(res, 429, undefined, "rate limited", { "retry-after": String(rl.retryAfterSec) });
        const denied = authFor(r, req, false, false);
        if (denied) return hfError(res, denied.status, denied.code, denied.message);
        const rev = m[3] ? decodeURIComponent(m[3]) : "main";
        const commit = resolveRev(r!, rev);
        if (!commit) return hfError(res, 404, "RevisionNotFound", `Invalid rev id: ${rev}`);
        if (m[2] !== "tree") {
          return sendJson(res, 200, { id, _id: sha1(id).slice(0, 24), sha: commit, private: !!r!.private, gated: r!.gated ? "manual" : false, siblings: r!.files.map((f) => ({ rfilename: f.path })) });
        }
        const recursive = url.searchParams.get("recursive") === "true";
        const dirs = new Set<string>();
        for (const f of r!.files) for (let i = f.path.indexOf("/"); i >= 0; i = f.path.indexOf("/", i + 1)) dirs.add(f.path.slice(0, i));
        const entries: unknown[] = [];
        for (const d of [...dirs].sort()) if (recursive || !d.includes("/")) entries.push({ type: "directory", oid: sha1(d), size: 0, path: d });
        for (const f of r!.files) {
          if (!recursive && f.path.includes("/")) continue;
          const h = await hashes(r!, f);
          entries.push({ type: "file", oid: h.sha1, size: f.size, path: f.path, ...(f.lfs ? { lfs: { oid: h.sha256, size: f.size, pointerSize: 134 } } : {}) });
        }
        const cursor = Number(url.searchParams.get("cursor") ?? 0);
        const page = entries.slice(cursor, cursor + pageSize);
        const headers: Record<string, string> = {};
        if (cursor + pageSize < entries.length) {
          const next = new URL(`${hubOrigin}/api/models/${id}/tree/${encodeURIComponent(rev)}`);
          next.searchParams.set("recursive", String(recursive));
          next.searchParams.set("cursor", String(cursor + pageSize));
          headers.link = `<${next}>; rel="next"`;
        }
        return sendJson(res, 200, page, headers);
      }
      if ((m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(p))) {
        const r = repos.get(decodeURIComponent(m[1]));
        const path = m[3].split("/").map(decodeURIComponent).join("/");
        if (take(faults.error500, path)) return hfError(res, 500, undefined, "Internal Error");
        const rl = take(faults.rateLimit, path);
        if (rl) return hfError(res, 429, undefined, "rate limited", { "retry-after": String(rl.retryAfterSec) });
        const denied = authFor(r, req, false, true);
        if (denied) return hfError(res, denied.status, denied.code, denied.message);
        const rev = decodeURIComponent(m[2]);
        const commit = resolveRev(r!, rev);
        if (!commit) return hfError(res, 404, "RevisionNotFound", `Invalid rev id: ${rev}`);
        const f = r!.files.find((x) => x.path === path);
        if (!f) return hfError(res, 404, "EntryNotFound", `Entry not found`, { "x-repo-commit": commit });
        const h = await hashes(r!, f);
        if (f.lfs) {
          const loc = `${cdnOrigin}/cdn/${r!.id}/${commit}/${path.split("/").map(encodeURIComponent).join("/")}?sig=${sha1(`${r!.id}/${f.path}`)}`;
          res.writeHead(302, { location: loc, "x-repo-commit": commit, "x-linked-etag": `"${h.sha256}"`, "x-linked-size": String(f.size), etag: `"${h.sha1}"`, "content-length": "0" });
          return res.end();
        }
        return await serveContent(req, res, r!, f, { "x-repo-commit": commit, etag: `"${h.sha1}"` });
      }
      hfError(res, 404, undefined, `no route ${p}`);
    } catch (e) {
      if (!res.headersSent) hfError(res, 500, undefined, String(e));
      else res.destroy();
    }
  });

  const listen = (s: http.Server) => new Promise<string>((resolve) => s.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(s.address() as AddressInfo).port}`)));
  cdnOrigin = await listen(cdn);
  hubOrigin = await listen(hub);
  for (const s of [hub, cdn]) s.keepAliveTimeout = 30_000;
  return {
    hfEndpoint: hubOrigin,
    msEndpoint: hubOrigin,
    cdnOrigin,
    stats,
    setFaults: (f) => void (faults = f),
    resetStats: () => {
      stats.requests = stats.rangeRequests = stats.bytes = 0;
      stats.byPath.clear();
      stats.sent = [];
    },
    close: async () => {
      for (const s of [hub, cdn]) s.closeAllConnections();
      await Promise.all([hub, cdn].map((s) => new Promise((r) => s.close(r))));
    },
  };
}

/** A file held in memory. */
export function bytesFile(path: string, content: Uint8Array | string, lfs = false): ServedFile {
  const buf = typeof content === "string" ? Buffer.from(content) : content;
  return { path, size: buf.byteLength, lfs, read: (s, e) => buf.subarray(s, e) };
}

// One shared pseudo-random block; generated files are views into it at a per-file offset, so a
// multi-GB repo is served without generating or storing its bytes. Its length is prime so files
// do not repeat in step with power-of-two part sizes.
const PATTERN_LEN = 4_194_301;
let pattern: Buffer | undefined;
function patternBlock(): Buffer {
  if (!pattern) {
    pattern = Buffer.allocUnsafe(PATTERN_LEN * 2);
    let x = 0x9e3779b9;
    for (let i = 0; i < PATTERN_LEN; i++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      pattern[i] = x & 0xff;
    }
    pattern.copy(pattern, PATTERN_LEN, 0, PATTERN_LEN); // doubled: any window ≤ PATTERN_LEN is one slice
  }
  return pattern;
}

/** Deterministic generated content of any size (seeded by `seed`); reads are zero-copy views. */
export function patternFile(path: string, size: number, seed: number, lfs = true): ServedFile {
  const base = (seed * 7_919_113) % PATTERN_LEN;
  return {
    path,
    size,
    lfs,
    read(start, end) {
      const block = patternBlock();
      if (end - start <= PATTERN_LEN) {
        const off = (base + start) % PATTERN_LEN;
        return block.subarray(off, off + end - start);
      }
      const out = Buffer.allocUnsafe(end - start);
      for (let p = start; p < end; ) {
        const off = (base + p) % PATTERN_LEN;
        const n = Math.min(end - p, PATTERN_LEN);
        block.copy(out, p - start, off, off + n);
        p += n;
      }
      return out;
    },
  };
}

/** A sparse file: declared size, content all zeros; for "huge repo" tests that never read it. */
export function sparseFile(path: string, size: number, lfs = true): ServedFile {
  return { path, size, lfs, read: (s, e) => new Uint8Array(e - s) };
}

/** Builds a ServedRepo from a local directory (files ≥ lfsThreshold bytes or *.safetensors are LFS). */
export async function servedRepoFromDir(id: string, dir: string, opts: { lfsThreshold?: number; commit?: string } = {}): Promise<ServedRepo> {
  const files: ServedFile[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const full = join(d, e.name);
      if (e.isDirectory()) await walk(full);
      else if (e.isFile()) {
        const rel = relative(dir, full).split(sep).join("/");
        const buf = await readFile(full);
        files.push(bytesFile(rel, buf, buf.byteLength >= (opts.lfsThreshold ?? 10 << 20) || /\.(safetensors|bin|onnx|gguf|pt)$/.test(rel)));
      }
    }
  };
  await walk(dir);
  files.sort((a, b) => (a.path < b.path ? -1 : 1));
  return { id, commit: opts.commit, files };
}
