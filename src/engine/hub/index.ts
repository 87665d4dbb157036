/** Hugging Face and ModelScope clients, the parallel resumable downloader, and the cache layouts. */
export { parseRepoSpec, looksLikeRepoId, formatRepoRef, type HubSource, type RepoRef } from "./repo-spec.js";
export type { HubFile, HubOptions, RemoteRepo } from "./types.js";
export { openRemoteRepo } from "./remote.js";
export { hubOptionsFromEnv, hfHome, hfHubCache, msCache } from "./env.js";
export type { RetryPolicy, RetryEvent } from "./http.js";
export { pull, selectFiles, DEFAULT_CONNECTIONS, DEFAULT_PART_SIZE, type PullOptions, type PullResult, type PullPlan, type PullEvent, type PlannedFile } from "./pull.js";
export { verifyDownload, type VerifyResult, type VerifiedFile } from "./verify.js";
export { makeLayout, type LayoutSpec } from "./layout.js";
