/** Public types of the hub client. */
import type { ByteSource } from "../tensors/source.js";
import type { RetryEvent, RetryPolicy } from "./http.js";
import type { RepoRef } from "./repo-spec.js";

export interface HubFile {
  /** Repo-relative path with "/" separators. */
  path: string;
  size: number;
  /** LFS sha256 (HF `lfs.oid`) or ModelScope `Sha256`. */
  sha256?: string;
  /** Git blob sha1 (HF `oid`): sha1("blob <size>\0" + content). */
  gitSha1?: string;
  lfs: boolean;
}

export interface HubOptions {
  hfEndpoint?: string;
  msEndpoint?: string;
  /** Explicit token (--token): used for whichever hub the repo is on. */
  token?: string;
  /** Tokens found in the environment, per hub. */
  hfToken?: string;
  msToken?: string;
  fetch?: typeof fetch;
  signal?: AbortSignal;
  userAgent?: string;
  retry?: Partial<RetryPolicy>;
  headersTimeoutMs?: number;
  stallTimeoutMs?: number;
  /** Called before each retry's backoff sleep. */
  onRetry?: (e: RetryEvent) => void;
}

export interface RemoteRepo {
  ref: RepoRef;
  /** The resolved revision name (branch/tag/commit as asked, or the hub default). */
  revision: string;
  /** HF: the commit the revision resolved to. ModelScope: the newest file commit in the listing. */
  commit: string;
  files: HubFile[];
  /** Gated on the hub: listing is public, file content needs a token whose account accepted the licence. */
  gated: boolean;
  /** The repo's page on the hub website. */
  webUrl: string;
  /** Ranged reads of one file over HTTP (Range, Accept-Encoding: identity, CDN redirects with auth dropped cross-origin). */
  fileSource(path: string): ByteSource;
  /**
   * Streams [start, end) of a file into onChunk in order, resuming dropped/stalled connections.
   * `end` may be a function, read before each chunk: the downloader shortens a running read when
   * it hands the rest of a part to another connection.
   */
  readRange(path: string, start: number, end: number | (() => number), onChunk: (chunk: Uint8Array, offset: number) => void | Promise<void>): Promise<void>;
  /** Request/byte counters for all HTTP traffic of this repo object. */
  stats(): { requests: number; bytes: number };
}
