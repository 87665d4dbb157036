/** Checkpoints: open a local directory or a remote repo from headers only, check integrity, summarise. */
export * from "./types.js";
export { openCheckpoint, type OpenOptions } from "./open.js";
export { openLocalSource } from "./local.js";
export { remoteSource, openRemoteSource } from "./remote.js";
export { parseIndex, INDEX_FILE, isSafeShardName } from "./index-file.js";
export { readHeaders, HeaderSizeEstimator, type ShardJob, type ShardResult } from "./headers.js";
export { detectQuantization, type QuantInfo, type QuantMethod } from "./quant.js";
export { buildInspectReport, INSPECT_SCHEMA_VERSION, type InspectReport, type ModelSummary } from "./report.js";
export { summarizeShards, dtypeBreakdown, groupLayers, embeddings } from "./summary.js";
