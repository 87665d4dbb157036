/** Parsing "org/name", "hf:org/name", "ms:org/name@rev" repo specs, and telling them apart from local paths. */
import { existsSync } from "node:fs";
import { usageError } from "../errors.js";

export type HubSource = "hf" | "modelscope";

export interface RepoRef {
  source: HubSource;
  repoId: string;
  /** Branch, tag or commit; undefined means the hub's default (HF "main", ModelScope "master"). */
  revision?: string;
}

const PREFIXES: Record<string, HubSource> = { hf: "hf", huggingface: "hf", ms: "modelscope", modelscope: "modelscope" };
// Hub ids: one "/" between an owner and a name made of letters, digits, "-", "_", "."; no "--" or ".." runs.
const PART = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

/** Parses a repo spec; `defaultSource` applies when there is no prefix. Throws a usage error on bad specs. */
export function parseRepoSpec(spec: string, defaultSource: HubSource = "hf"): RepoRef {
  let rest = spec.trim();
  let source = defaultSource;
  const colon = rest.indexOf(":");
  if (colon > 0 && !rest.slice(0, colon).includes("/")) {
    const prefix = rest.slice(0, colon).toLowerCase();
    const s = PREFIXES[prefix];
    if (!s) throw usageError(`unknown hub prefix "${prefix}:" in "${spec}"`, 'use "hf:" (Hugging Face) or "ms:" (ModelScope)');
    source = s;
    rest = rest.slice(colon + 1);
  }
  let revision: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    revision = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!revision) throw usageError(`empty revision after "@" in "${spec}"`, "write org/name@<branch|tag|commit>, or drop the @");
  }
  const parts = rest.split("/");
  if (parts.length !== 2 || !parts.every((p) => PART.test(p) && !p.includes("--") && !p.includes(".."))) {
    throw usageError(`"${spec}" is not a repo id`, "write it as org/name, e.g. deepseek-ai/DeepSeek-R1 (prefix hf: or ms: to pick the hub)");
  }
  return { source, repoId: rest, revision };
}

/** True when `spec` looks like a repo id rather than a local path; a path that exists on disk always wins. */
export function looksLikeRepoId(spec: string): boolean {
  if (existsSync(spec)) return false;
  if (/^(hf|huggingface|ms|modelscope):/i.test(spec)) return true;
  if (spec.startsWith(".") || spec.startsWith("/") || spec.startsWith("~") || spec.includes("\\")) return false;
  try {
    parseRepoSpec(spec);
    return true;
  } catch {
    return false;
  }
}

/** "hf:org/name@rev" — the canonical display form. */
export function formatRepoRef(ref: RepoRef): string {
  return `${ref.source === "hf" ? "hf" : "ms"}:${ref.repoId}${ref.revision ? "@" + ref.revision : ""}`;
}
