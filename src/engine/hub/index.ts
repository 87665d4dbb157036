/** Hugging Face and ModelScope clients, the parallel resumable downloader, and the cache layouts. */
export { parseRepoSpec, looksLikeRepoId, formatRepoRef, type HubSource, type RepoRef } from "./repo-spec.js";
export type { HubFile, HubOptions, RemoteRepo } from "./types.js";
export { openRemoteRepo } from "./remote.js";
export { hubOptionsFromEnv, hfHome } from "./env.js";
export type { RetryPolicy } from "./http.js";
