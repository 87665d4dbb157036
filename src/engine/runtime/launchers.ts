/**
 * Child command lines for GPU engines, with dsr's flags translated (facts §1.2, §3.1). Only flags
 * that current releases accept are emitted: never vLLM's removed `--enable-reasoning` or
 * `--swap-space`; the reasoning parser is spelled `deepseek_r1` for vLLM and `deepseek-r1` for SGLang.
 * Children listen on loopback only; auth, limits and metrics are the gateway's job.
 */
import { access, constants } from "node:fs/promises";
import { delimiter, join } from "node:path";
import { execFile } from "node:child_process";
import { DsrError, ExitCode } from "../errors.js";

export interface EngineFlags {
  model: string;
  tp?: number;
  pp?: number;
  maxModelLen?: number;
  /** Fraction of each GPU this instance may use (already divided among instances). */
  gpuMemoryUtilization?: number;
  quantization?: string;
  dtype?: string;
  kvCacheDtype?: string;
  maxNumSeqs?: number;
  /** Prompt tokens per scheduler step (chunked prefill): vLLM --max-num-batched-tokens, SGLang --chunked-prefill-size. */
  maxNumBatchedTokens?: number;
  servedModelName?: string;
  reasoning: boolean;
  /** The engine's reasoning parser (`--reasoning-parser`; default DeepSeek-R1's). */
  reasoningParser?: string;
  /** `--chat-template`: a file (absolute path) or the template itself, as vLLM and SGLang take it. */
  chatTemplate?: string;
  trustRemoteCode?: boolean;
  downloadDir?: string;
  enforceEager?: boolean;
  /** OpenTelemetry traces (`--otlp-traces-endpoint`): vLLM children export their own spans under the gateway's. */
  otlpTracesEndpoint?: string;
  /** Passed through verbatim after the translated flags (`--engine-arg`). */
  extra?: string[];
  /** vLLM engine flags from a vllm serve command line (serve-compat.ts): for vLLM children only. */
  vllmExtra?: string[];
}

export interface ChildCommand {
  command: string;
  args: string[];
  /** Readiness path: vLLM's /health, SGLang's /health_generate (its /health and /v1/models answer early). */
  readyPath: string;
}

const opt = (args: string[], flag: string, v: string | number | undefined) => {
  if (v !== undefined && v !== "") args.push(flag, String(v));
};

export function vllmCommand(f: EngineFlags, host: string, port: number, vllmBin = "vllm"): ChildCommand {
  const a = ["serve", f.model, "--host", host, "--port", String(port)];
  opt(a, "--tensor-parallel-size", f.tp);
  opt(a, "--pipeline-parallel-size", f.pp);
  opt(a, "--max-model-len", f.maxModelLen);
  opt(a, "--gpu-memory-utilization", f.gpuMemoryUtilization);
  opt(a, "--quantization", f.quantization);
  opt(a, "--dtype", f.dtype);
  opt(a, "--kv-cache-dtype", f.kvCacheDtype);
  opt(a, "--max-num-seqs", f.maxNumSeqs);
  opt(a, "--max-num-batched-tokens", f.maxNumBatchedTokens);
  opt(a, "--served-model-name", f.servedModelName);
  if (f.reasoning) a.push("--reasoning-parser", (f.reasoningParser ?? "deepseek_r1").replace(/^deepseek-r1$/, "deepseek_r1"));
  opt(a, "--chat-template", f.chatTemplate);
  if (f.trustRemoteCode) a.push("--trust-remote-code");
  opt(a, "--download-dir", f.downloadDir);
  if (f.enforceEager) a.push("--enforce-eager");
  opt(a, "--otlp-traces-endpoint", f.otlpTracesEndpoint);
  a.push(...(f.vllmExtra ?? []), ...(f.extra ?? []));
  return { command: vllmBin, args: a, readyPath: "/health" };
}

export function sglangCommand(f: EngineFlags, host: string, port: number, python = "python3"): ChildCommand {
  const a = ["-m", "sglang.launch_server", "--model-path", f.model, "--host", host, "--port", String(port)];
  opt(a, "--tp-size", f.tp);
  opt(a, "--pp-size", f.pp);
  opt(a, "--context-length", f.maxModelLen);
  opt(a, "--mem-fraction-static", f.gpuMemoryUtilization);
  opt(a, "--quantization", f.quantization);
  opt(a, "--dtype", f.dtype);
  opt(a, "--kv-cache-dtype", f.kvCacheDtype);
  opt(a, "--max-running-requests", f.maxNumSeqs);
  opt(a, "--chunked-prefill-size", f.maxNumBatchedTokens);
  opt(a, "--served-model-name", f.servedModelName);
  if (f.reasoning) a.push("--reasoning-parser", (f.reasoningParser ?? "deepseek-r1").replace(/^deepseek_r1$/, "deepseek-r1"));
  opt(a, "--chat-template", f.chatTemplate);
  if (f.trustRemoteCode) a.push("--trust-remote-code");
  opt(a, "--download-dir", f.downloadDir);
  a.push("--enable-metrics");
  a.push(...(f.extra ?? []));
  return { command: python, args: a, readyPath: "/health_generate" };
}

/** Quotes a command line for printing (--dry-run) so it can be pasted into a shell. */
export function shellLine(env: Record<string, string>, command: string, args: string[]): string {
  const q = (s: string) => (/^[A-Za-z0-9_\-./:=@,+]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);
  const e = Object.entries(env).map(([k, v]) => `${k}=${q(v)}`);
  return [...e, q(command), ...args.map(q)].join(" ");
}

/** Finds an executable on PATH (the PATH value is passed in: engine code does not read process.env). */
export async function which(name: string, pathValue: string | undefined): Promise<string | undefined> {
  if (name.includes("/")) return (await isExec(name)) ? name : undefined;
  for (const dir of (pathValue ?? "").split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    if (await isExec(p)) return p;
  }
  return undefined;
}

const isExec = (p: string) => access(p, constants.X_OK).then(() => true, () => false);

function run(cmd: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<{ ok: boolean; stdout: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, env }, (err, stdout) => resolve({ ok: !err, stdout: String(stdout) }));
  });
}

/** Number of NVIDIA GPUs `nvidia-smi -L` lists (0 when it is absent). */
/**
 * The GPUs engines may use, as CUDA_VISIBLE_DEVICES entries: that variable's list when it is set (a
 * machine where the user already narrowed them), else every GPU `nvidia-smi -L` lists, by index.
 * None without nvidia-smi.
 */
export async function visibleGpus(pathValue: string | undefined, env: NodeJS.ProcessEnv): Promise<string[]> {
  const smi = await which("nvidia-smi", pathValue);
  if (!smi) return [];
  const given = env.CUDA_VISIBLE_DEVICES;
  if (given !== undefined) {
    // as CUDA reads it: the entries up to the first that names no device ("-1" hides them all)
    const list = given.split(",").map((d) => d.trim());
    const bad = list.findIndex((d) => !/^(\d+|GPU-[\w-]+|MIG-[\w/-]+)$/.test(d));
    return bad < 0 ? list : list.slice(0, bad);
  }
  const r = await run(smi, ["-L"], 10_000);
  return r.ok ? [...r.stdout.matchAll(/^GPU (\d+):/gm)].map((m) => m[1]!) : [];
}

/** One GPU as nvidia-smi reports it: its index and UUID (what CUDA_VISIBLE_DEVICES may name), name and total memory. */
export interface GpuMemory {
  index: string;
  uuid: string;
  name: string;
  memoryMiB: number;
}

/** Every GPU nvidia-smi lists, with its memory (none without nvidia-smi, or when it fails). */
export async function gpuMemories(pathValue: string | undefined): Promise<GpuMemory[]> {
  const smi = await which("nvidia-smi", pathValue);
  if (!smi) return [];
  const r = await run(smi, ["--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"], 10_000);
  if (!r.ok) return [];
  return r.stdout
    .split("\n")
    .map((l) => l.split(",").map((x) => x.trim()))
    .filter((f) => f.length === 4 && /^\d+$/.test(f[0]!) && Number(f[3]) > 0)
    .map(([index, uuid, name, mib]) => ({ index: index!, uuid: uuid!, name: name!, memoryMiB: Number(mib) }));
}

export interface Placement {
  /** CUDA_VISIBLE_DEVICES for the instance (undefined: no placement, it sees what dsr sees). */
  devices?: string;
  /** Instances on the same GPUs (this one included): the memory fraction is split among them. */
  sharing: number;
}

/**
 * Where each of `n` instances runs, given the visible GPUs and `perInstance` GPUs each (tp × pp;
 * 1 for the torch worker). While there are enough, instances get disjoint groups of GPUs, each with
 * the whole memory fraction: N replicas on N GPUs, the data-parallel layout. With more instances
 * than groups, the groups are shared round-robin and the fraction is split among the instances on
 * a group (the seed guides' 0.4 + 0.4 on one GPU). With fewer GPUs than one instance needs (or none
 * listed) nothing is placed and the fraction is split N ways.
 */
export function placeInstances(n: number, gpus: readonly string[], perInstance: number): Placement[] {
  const groups = Math.floor(gpus.length / Math.max(1, perInstance));
  if (groups === 0) return Array.from({ length: n }, () => ({ sharing: n }));
  return Array.from({ length: n }, (_, i) => {
    const g = i % groups;
    return { devices: gpus.slice(g * perInstance, (g + 1) * perInstance).join(","), sharing: Math.floor(n / groups) + (g < n % groups ? 1 : 0) };
  });
}

/** True when `python -c "import <module>"` succeeds. */
export async function pythonHas(python: string, module: string, env?: NodeJS.ProcessEnv): Promise<boolean> {
  return (await run(python, ["-c", `import ${module}`], 60_000, env)).ok;
}

export function missingEngine(engine: "vllm" | "sglang", python: string): DsrError {
  return new DsrError(
    "DSR_ENGINE_MISSING",
    engine === "vllm" ? "--engine vllm: the `vllm` command is not installed (not on PATH)" : `--engine sglang: \`${python} -m sglang.launch_server\` is not available (module sglang not importable)`,
    {
      exitCode: ExitCode.usage,
      hint: engine === "vllm" ? "install it with `pip install vllm` (needs a CUDA GPU), or use --engine embedded, or --upstream URL" : 'install it with `pip install "sglang[all]"` (needs a CUDA GPU), or pass --python, or use --engine embedded',
    },
  );
}
