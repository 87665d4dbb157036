/** config.json, generation_config.json, tokenizer files and quantisation side files of a checkpoint. */
import { parseModelConfig, type ModelConfig } from "../arch/config.js";
import { ExitCode, isDsrError } from "../errors.js";
import type { CheckpointSource, Finding, RepoFile, TokenizerInfo } from "./types.js";

const MAX_JSON = 32 * 1024 * 1024;
const TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt", "special_tokens_map.json", "chat_template.jinja", "chat_template.json"];
export const QUANT_SIDE_FILES = ["quantize_config.json", "quant_config.json"];

type Raw = Record<string, unknown>;

/** Reads and parses a JSON object; a bad file becomes a finding, a transport failure is thrown. */
export async function readJson(src: CheckpointSource, path: string, findings: Finding[], severity: "error" | "warning"): Promise<Raw | undefined> {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(await src.readFile(path, MAX_JSON));
    const v = JSON.parse(text) as unknown;
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v as Raw;
  } catch (e) {
    if (isDsrError(e) && e.exitCode !== ExitCode.integrity) throw e;
    findings.push({ severity, code: "DSR_JSON_INVALID", file: path, message: `${path}: unreadable (${(e as Error).message})` });
    return undefined;
  }
}

export function loadConfig(raw: Raw | undefined, findings: Finding[]): ModelConfig | undefined {
  if (!raw) return undefined;
  try {
    return parseModelConfig(raw, "config.json");
  } catch (e) {
    if (!isDsrError(e)) throw e;
    findings.push({ severity: "error", code: e.code, file: "config.json", message: e.message });
    return undefined;
  }
}

const tokenText = (v: unknown): string | undefined =>
  typeof v === "string" ? v : typeof v === "object" && v !== null && typeof (v as Raw).content === "string" ? ((v as Raw).content as string) : undefined;

export async function loadTokenizer(src: CheckpointSource, files: RepoFile[], findings: Finding[]): Promise<TokenizerInfo> {
  const have = new Set(files.map((f) => f.path));
  const info: TokenizerInfo = { files: TOKENIZER_FILES.filter((f) => have.has(f)), hasTokenizerJson: have.has("tokenizer.json"), chatTemplate: null };
  let template: { source: string; text: string } | undefined;
  if (have.has("tokenizer_config.json")) {
    const tc = await readJson(src, "tokenizer_config.json", findings, "warning");
    if (tc) {
      const ct = tc.chat_template;
      if (typeof ct === "string") template = { source: "tokenizer_config.json", text: ct };
      else if (Array.isArray(ct)) {
        const def = ct.find((x) => (x as Raw)?.name === "default") ?? ct[0];
        if (typeof (def as Raw)?.template === "string") template = { source: "tokenizer_config.json", text: (def as Raw).template as string };
      }
      info.bosToken = tokenText(tc.bos_token);
      info.eosToken = tokenText(tc.eos_token);
      if (typeof tc.model_max_length === "number" && tc.model_max_length < 1e15) info.modelMaxLength = tc.model_max_length;
    }
  }
  // transformers ≥ 4.43 may keep the template in its own file, which then wins.
  if (have.has("chat_template.jinja")) {
    const b = await src.readFile("chat_template.jinja", MAX_JSON);
    template = { source: "chat_template.jinja", text: new TextDecoder().decode(b) };
  } else if (have.has("chat_template.json")) {
    const j = await readJson(src, "chat_template.json", findings, "warning");
    if (typeof j?.chat_template === "string") template = { source: "chat_template.json", text: j.chat_template };
  }
  if (template) info.chatTemplate = { source: template.source, opensThink: template.text.includes("<think>") };
  if (info.files.length === 0) {
    findings.push({ severity: "warning", code: "DSR_NO_TOKENIZER", message: "no tokenizer files (tokenizer.json, tokenizer_config.json…): serving needs one" });
  }
  return info;
}
