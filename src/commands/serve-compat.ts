/**
 * `dsr serve` takes a `vllm serve` or `python -m sglang.launch_server` command line as it is, and
 * vLLM's `--config FILE` (YAML): before commander parses, their spellings of flags dsr has are
 * renamed, flags that mean something to vLLM alone are kept for a vLLM child (and refused with any
 * other engine), and flags about their own HTTP front's logging are dropped, each with a note.
 *
 * By hand rather than as commander aliases: commander's short flags are one letter (vLLM has `-tp`),
 * an option has one long name, and it cannot pass an unknown flag on by name.
 */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { parse as parseYaml } from "yaml";
import { usageError } from "../engine/errors.js";

/** Stands for the positional MODEL argument in RENAMED. */
const MODEL = "";

/** vLLM's and SGLang's names for flags dsr serve has under its own (each takes a value). */
const RENAMED: Record<string, string> = {
  "--model": MODEL, // vllm serve's older spelling of its positional model
  "--tensor-parallel-size": "--tp",
  "-tp": "--tp",
  "--pipeline-parallel-size": "--pp",
  "-pp": "--pp",
  // vLLM's data parallelism is N engine replicas behind one front: dsr's instances behind its router
  "--data-parallel-size": "--instances",
  "-dp": "--instances",
  "--model-path": MODEL, // SGLang
  "--tp-size": "--tp",
  "--pp-size": "--pp",
  "--dp-size": "--instances",
  "--context-length": "--max-model-len",
  "--mem-fraction-static": "--gpu-memory-utilization",
  "--max-running-requests": "--max-num-seqs",
  "--chunked-prefill-size": "--max-num-batched-tokens",
};

/** Flags about the other server's own front, dropped: why, and whether a value follows. */
const DROPPED: Record<string, { why: string; value?: true }> = {
  "--disable-log-requests": { why: "dsr logs requests only with --log-file" },
  "--enable-log-requests": { why: "dsr's request log is --log-file" },
  "--disable-log-stats": { why: "dsr prints no periodic stats; see /metrics" },
  "--disable-uvicorn-access-log": { why: "dsr has no access log but --log-file" },
  "--uvicorn-log-level": { why: "dsr has no uvicorn; -q and -v set its own output", value: true },
  "--log-level": { why: "-q and -v set dsr's output", value: true },
  "--disable-fastapi-docs": { why: "dsr serves no /docs" },
  "--enable-request-id-headers": { why: "dsr always echoes x-request-id" },
  "--enable-metrics": { why: "dsr always serves /metrics" },
  "--enable-reasoning": { why: "removed from vLLM; dsr splits reasoning by default, see --reasoning-field" },
  "--swap-space": { why: "removed from vLLM (v0.18), so not passed on", value: true },
};

/** vLLM engine flags dsr has no use for but passes to a vLLM child: those that take a value. */
const VLLM_VALUES = new Set([
  "--seed", "--collect-detailed-traces", "--load-format", "--tokenizer", "--tokenizer-mode", "--revision", "--code-revision", "--tokenizer-revision",
  "--max-logprobs", "--block-size", "--kv-cache-memory-bytes", "--generation-config", "--override-generation-config",
  "--speculative-config", "--compilation-config", "--hf-overrides", "--tool-call-parser", "--limit-mm-per-prompt",
  "--distributed-executor-backend", "--cpu-offload-gb", "--max-seq-len-to-capture", "--guided-decoding-backend",
  "--structured-outputs-config", "--max-parallel-loading-workers", "--num-gpu-blocks-override",
  "--long-prefill-token-threshold", "--scheduling-policy", "--runner", "--hf-config-path", "--mm-processor-kwargs",
  "--additional-config", "--kv-transfer-config", "--max-num-partial-prefills", "--quantization-param-path",
  "--lora-modules", "--max-lora-rank", "--max-loras", "--max-cpu-loras",
]);
/** …of those, the ones vLLM takes several values after (nargs=+). */
const VLLM_LISTS = new Set(["--lora-modules"]);
/** …and those that are switches. */
const VLLM_SWITCHES = new Set([
  "--enable-prefix-caching", "--no-enable-prefix-caching", "--enable-chunked-prefill", "--no-enable-chunked-prefill",
  "--enable-expert-parallel", "--enable-auto-tool-choice", "--disable-custom-all-reduce", "--async-scheduling",
  "--enable-lora", "--disable-sliding-window", "--skip-tokenizer-init", "--enable-sleep-mode", "--enable-eplb",
  "--disable-cascade-attn", "--enable-chunked-prefill", "--calculate-kv-scales",
]);

/** The hidden dsr serve option the vLLM-only flags travel in (`--vllm-arg=TOKEN`, one per token). */
export const VLLM_ARG = "--vllm-arg";

export interface Rewritten {
  args: string[];
  notes: string[];
}

/**
 * `args` (what follows `serve`) in dsr's spelling. `cmd` is the registered serve command: its options
 * say which flags take a value, so that the positional MODEL is found. `--config FILE` entries come
 * first, so the command line wins where a flag takes one value.
 */
export function rewriteServeArgs(cmd: Command, args: readonly string[], read: (file: string) => string = (f) => readFileSync(f, "utf8")): Rewritten {
  const takesValue = new Set<string>();
  for (const o of cmd.options) if (o.required || o.optional) for (const n of [o.long, o.short]) if (n) takesValue.add(n);
  const negatable = new Set([...cmd.options.filter((o) => o.negate).map((o) => o.long!), ...VLLM_SWITCHES]);
  const notes: string[] = [];
  const fromConfig: string[] = [];
  const rest: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      rest.push(...args.slice(i));
      break;
    }
    if (a === "--config" || a.startsWith("--config=")) {
      const file = a === "--config" ? args[++i] : a.slice("--config=".length);
      if (file === undefined) throw usageError("--config needs a file", "e.g. --config serve.yaml (vLLM's YAML of flag: value)");
      fromConfig.push(...configArgs(file, read, negatable));
      notes.push(`flags from --config ${file}: ${fromConfig.join(" ")}`);
    } else rest.push(a);
  }
  const out: string[] = [];
  const cliModel = translate(rest, takesValue, notes, out, false);
  const config: string[] = [];
  translate(fromConfig, takesValue, notes, config, cliModel);
  return { args: [...config, ...out], notes };
}

/** Rewrites `args` into `out`; true when a positional MODEL was given. `skipModel`: a MODEL given elsewhere wins. */
function translate(args: string[], takesValue: Set<string>, notes: string[], out: string[], skipModel: boolean): boolean {
  let model = false;
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === "--") {
      out.push(...args.slice(i));
      break;
    }
    if (!a.startsWith("-") || a === "-") {
      model = true;
      if (!skipModel) out.push(a);
      continue;
    }
    const eq = a.indexOf("=");
    const name = eq > 0 ? a.slice(0, eq) : a;
    /** The flag's value: after `=`, else the next argument. */
    const value = (): string => {
      if (eq > 0) return a.slice(eq + 1);
      if (i + 1 >= args.length) throw usageError(`${name} needs a value`);
      return args[++i];
    };
    const renamed = RENAMED[name];
    if (renamed !== undefined) {
      const v = value();
      if (renamed === MODEL) {
        model = true;
        if (!skipModel) out.push(v);
      } else out.push(renamed, v);
    } else if (DROPPED[name]) {
      const d = DROPPED[name];
      const v = d.value ? value() : undefined;
      notes.push(`ignored ${name}${v === undefined ? "" : ` ${v}`}: ${d.why}`);
    } else if (VLLM_VALUES.has(name)) {
      out.push(`${VLLM_ARG}=${name}`, `${VLLM_ARG}=${value()}`);
      // more values follow as in vLLM, but only once MODEL was seen (as for --served-model-name)
      if (VLLM_LISTS.has(name)) while (model && eq < 0 && i + 1 < args.length && !args[i + 1].startsWith("-")) out.push(`${VLLM_ARG}=${args[++i]}`);
    } else if (VLLM_SWITCHES.has(name)) {
      out.push(`${VLLM_ARG}=${a}`);
    } else if (name === "--served-model-name") {
      // vLLM takes several names after one flag (nargs=+); dsr repeats the flag. Only once MODEL was
      // seen: before it, a second word is dsr's MODEL (`--served-model-name r1 ./model`).
      out.push(name, value());
      while (model && eq < 0 && i + 1 < args.length && !args[i + 1].startsWith("-")) out.push(name, args[++i]);
    } else {
      out.push(a);
      if (eq < 0 && takesValue.has(name) && i + 1 < args.length) out.push(args[++i]);
    }
  }
  return model;
}

/**
 * vLLM's `--config` YAML (keys are flag names, with or without `--`, `_` taken for `-`) as command
 * line arguments: true is the bare flag, false `--no-FLAG` where there is one (else the flag is left
 * out), a list repeats the flag, a mapping is passed as JSON (vLLM's `--hf-overrides` and friends),
 * `model` is the positional MODEL.
 */
function configArgs(file: string, read: (file: string) => string, negatable: Set<string>): string[] {
  let text: string;
  try {
    text = read(file);
  } catch (e) {
    throw usageError(`--config ${file}: ${(e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw usageError(`--config ${file}: not YAML (${(e as Error).message.split("\n")[0]})`, "write one flag per line, e.g. `tensor-parallel-size: 2`");
  }
  if (doc === null || doc === undefined) return [];
  if (typeof doc !== "object" || Array.isArray(doc)) throw usageError(`--config ${file}: expected a mapping of flag names to values`, "e.g. `port: 8000` and `served-model-name: r1`, one per line");
  const args: string[] = [];
  for (const [key, v] of Object.entries(doc as Record<string, unknown>)) {
    const flag = `--${key.replace(/^-+/, "").replace(/_/g, "-")}`;
    if (flag === "--config") throw usageError(`--config ${file}: a config file cannot name another (${key})`);
    if (v === null || v === undefined) continue;
    if (flag === "--model") args.push(String(v));
    else if (v === true) args.push(flag);
    else if (v === false) {
      const no = flag.startsWith("--no-") ? `--${flag.slice(5)}` : `--no-${flag.slice(2)}`;
      if (negatable.has(no)) args.push(no);
    }
    else if (Array.isArray(v)) for (const x of v) args.push(flag, scalar(x));
    else args.push(flag, scalar(v));
  }
  return args;
}

const scalar = (v: unknown) => (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));
