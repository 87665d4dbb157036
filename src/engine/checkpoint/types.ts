/** The Checkpoint model: what a local directory or a remote repo holds, read from headers only. */
import type { ModelConfig } from "../arch/config.js";
import type { TensorInfo } from "../tensors/safetensors.js";
import type { ByteSource } from "../tensors/source.js";

export type Severity = "error" | "warning";

/** One integrity problem. `file` and `tensor` name where it is; errors make inspect exit 3. */
export interface Finding {
  severity: Severity;
  code: string;
  message: string;
  file?: string;
  tensor?: string;
}

export interface RepoFile {
  /** Path relative to the checkpoint root, "/"-separated. */
  path: string;
  size?: number;
}

/** Where a checkpoint's bytes come from: a local directory or a remote repo (HTTP ranges). */
export interface CheckpointSource {
  kind: "local" | "remote";
  /** Directory path, or "hf:org/name" / "ms:org/name". */
  location: string;
  revision?: string;
  commit?: string;
  listFiles(): Promise<RepoFile[]>;
  /** Reads a small file whole; fails with a DsrError when it exceeds maxBytes. */
  readFile(path: string, maxBytes: number): Promise<Uint8Array>;
  byteSource(path: string): ByteSource;
  /** Remote only: requests and bytes transferred so far. */
  stats?(): { requests: number; bytes: number };
}

export interface TensorEntry extends TensorInfo {
  /** Shard file that holds it. */
  file: string;
}

export interface ShardInfo {
  file: string;
  /** File size from the listing or stat; undefined when the file is missing. */
  size?: number;
  /** 8 + N: prefix plus JSON header. */
  headerBytes?: number;
  tensors: number;
  dataBytes: number;
  status: "ok" | "missing" | "unreadable";
  metadata?: Record<string, string>;
}

export interface IndexInfo {
  file: string;
  totalSize?: number;
  weightMap: Map<string, string>;
  metadata: Record<string, unknown>;
}

export interface TokenizerInfo {
  files: string[];
  /** tokenizer.json present (fast tokenizer). */
  hasTokenizerJson: boolean;
  chatTemplate: { source: string; opensThink: boolean } | null;
  bosToken?: string;
  eosToken?: string;
  modelMaxLength?: number;
}

export interface ReadStats {
  /** Header reads issued (each is one range request when remote). */
  headerReads: number;
  /** Bytes fetched while reading headers. */
  headerBytesRead: number;
  /** Σ (8 + N) over readable shards: the least any reader must fetch. */
  headerBytes: number;
  /** Parallelism used for header reads. */
  concurrency: number;
}

export interface Checkpoint {
  source: { kind: "local" | "remote"; location: string; revision?: string; commit?: string };
  files: RepoFile[];
  config?: ModelConfig;
  generationConfig?: Record<string, unknown>;
  tokenizer: TokenizerInfo;
  /** Raw JSON of side files used for quantisation detection (quantize_config.json…). */
  quantConfigFile?: { file: string; raw: Record<string, unknown> };
  index?: IndexInfo;
  shards: ShardInfo[];
  /** Every tensor found in a readable shard header (first occurrence wins on duplicates). */
  tensors: Map<string, TensorEntry>;
  findings: Finding[];
  reads: ReadStats;
}
