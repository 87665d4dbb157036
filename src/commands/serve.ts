/**
 * `dsr serve`: flags → ServeConfig → engine/serve/server.ts. Prints the engine choice, the listening
 * URL and (with --dry-run) the exact child command lines; on SIGINT/SIGTERM drains in-flight requests
 * for up to --grace seconds, stops the children and exits 0.
 */
import { existsSync, readFileSync } from "node:fs";
import { basename, resolve } from "node:path";
import { availableParallelism } from "node:os";
import { Command, Option } from "commander";
import { Template } from "@huggingface/jinja";
import type { CommandContext } from "./context.js";
import { usageError } from "../engine/errors.js";
import { MemoryCache, RedisCache, type ResponseCache } from "../engine/serve/cache.js";
import { parseCorsList, type CorsOptions } from "../engine/serve/cors.js";
import { REASONING_FIELDS, type ReasoningField } from "../engine/serve/reasoning.js";
import { RequestLog } from "../engine/serve/request-log.js";
import { createTracer, otlpTarget } from "../engine/serve/tracing.js";
import { planServe, startServe, type EngineName, type ServeConfig, type ServePlan } from "../engine/serve/server.js";
import type { GatewayMetrics } from "../engine/serve/metrics.js";
import { workerChannel, workerForker, workerSpec } from "./serve-workers.js";
import { readKeys, readTls } from "./serve-secrets.js";
import { rewriteServeArgs, VLLM_ARG } from "./serve-compat.js";
import { VERSION } from "../version.js";
import { parseByteSize, parseIntFlag, parseTokenCount } from "./flags.js";

interface Flags {
  engine: EngineName;
  upstream?: string[];
  upstreamApiKey?: string;
  host: string;
  port: string;
  instances: string;
  workers: string;
  tp?: string;
  pp?: string;
  maxModelLen?: string;
  gpuMemoryUtilization?: string;
  quantization?: string;
  dtype?: string;
  kvCacheDtype?: string;
  maxNumSeqs?: string;
  maxNumBatchedTokens?: string;
  servedModelName?: string[];
  reasoningField: string;
  r1Advice: boolean;
  trustRemoteCode?: boolean;
  downloadDir?: string;
  enforceEager?: boolean;
  engineArg?: string[];
  vllmArg?: string[];
  reasoningParser?: string;
  chatTemplate?: string;
  python: string;
  device: string;
  threads?: string;
  apiKey?: string[];
  apiKeyFile?: string;
  sslKeyfile?: string;
  allowedOrigins?: string[];
  keyRpm?: string;
  keyTpm?: string;
  keyMaxParallel?: string;
  allowedMethods?: string[];
  allowedHeaders?: string[];
  allowCredentials?: boolean;
  sslCertfile?: string;
  sslCaCerts?: string;
  sslCertReqs?: string;
  protectAll?: boolean;
  maxConcurrency: string;
  maxQueue: string;
  queueTimeout: string;
  requestTimeout: string;
  maxBody: string;
  logFile?: string;
  otlpTracesEndpoint?: string;
  logMaxSize: string;
  logKeep: string;
  logPrompts?: boolean;
  cache?: string;
  cacheTtl: string;
  cacheSize: string;
  affinity?: boolean;
  grace: string;
  readyTimeout: string;
  dryRun?: boolean;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

/** CORS from its flags; undefined (no CORS headers) without --allowed-origins. */
function corsFlags(f: Flags): CorsOptions | undefined {
  const list = (flag: string, v: string[] | undefined) => {
    try {
      return parseCorsList(flag, v ?? ["*"]);
    } catch (e) {
      throw usageError((e as Error).message, `e.g. ${flag} https://app.example,https://admin.example or ${flag} '["https://app.example"]'`);
    }
  };
  if (!f.allowedOrigins?.length) {
    const stray = f.allowedMethods ? "--allowed-methods" : f.allowedHeaders ? "--allowed-headers" : f.allowCredentials ? "--allow-credentials" : undefined;
    if (stray) throw usageError(`${stray} needs --allowed-origins`, "name the origins browsers may call from, e.g. --allowed-origins https://app.example");
    return undefined;
  }
  return { origins: list("--allowed-origins", f.allowedOrigins), methods: list("--allowed-methods", f.allowedMethods), headers: list("--allowed-headers", f.allowedHeaders), credentials: !!f.allowCredentials };
}

/** What rewriting the command line noted (serve-compat.ts), printed once the command runs. */
let compatNotes: string[] = [];

/** `dsr serve` takes vllm serve's and SGLang's spellings and vLLM's --config (serve-compat.ts). */
export function rewriteArgv(cmd: Command, argv: string[]): string[] {
  const at = argv.indexOf("serve", 2);
  if (at < 0) return argv;
  const r = rewriteServeArgs(cmd, argv.slice(at + 1));
  compatNotes = r.notes;
  return [...argv.slice(0, at + 1), ...r.args];
}

/** A `<think>`-splitting parser name: what the token engines do themselves. */
const THINK_PARSERS = new Set(["deepseek_r1", "deepseek-r1", "qwen3"]);

/**
 * `--chat-template`: the file's text, or the template given inline (vLLM takes both). `parse`: the
 * gateway renders it itself (token engines), so it must parse with @huggingface/jinja.
 */
function chatTemplateText(v: string, parse: boolean): { text: string; source: string } {
  let t: { text: string; source: string };
  if (existsSync(v)) t = { text: readFileSync(v, "utf8"), source: resolve(v) };
  else if (/\{[{%]/.test(v)) t = { text: v, source: "--chat-template" };
  else throw usageError(`--chat-template ${v.slice(0, 80)}: no such file, and not a Jinja template`, "name a .jinja file, or give the template itself");
  if (parse) {
    try {
      new Template(t.text);
    } catch (e) {
      throw usageError(`--chat-template ${t.source}: the template does not parse (${(e as Error).message})`);
    }
  }
  return t;
}

export function register(program: Command, ctx: () => CommandContext): void {
  program
    .command("serve")
    .summary("OpenAI-compatible gateway over the embedded engine, a torch worker, vLLM or SGLang")
    .description("Serve MODEL behind an OpenAI-compatible gateway (chat, completions, models, health, ready, metrics), or front existing servers with --upstream.")
    .addHelpText("after", "\nA `vllm serve` or `python -m sglang.launch_server` command line is taken as it is (-tp, --tensor-parallel-size,\n--model-path, vLLM-only engine flags for --engine vllm…), and so is vLLM's --config FILE (YAML of flag: value).\nSee docs/serve.md.")
    .argument("[model...]", "local model directory or hub id, PATH=NAME to name it (not needed with --upstream); several are each served under their own name")
    .optionsGroup("Engine and instances:")
    .addOption(new Option("--engine <name>", "engine to run").choices(["auto", "embedded", "torch", "vllm", "sglang"]).default("auto"))
    .option("--upstream <url...>", "front existing OpenAI-compatible servers instead of starting an engine")
    .option("--upstream-api-key <key>", "bearer key the upstreams expect")
    .option("--instances <n>", "engine instances behind the router: a GPU group each while there are enough, else sharing GPUs and the memory fraction; auto = one per GPU group", "1")
    .option("--tp <n>", "tensor parallel size (vllm/sglang)")
    .option("--pp <n>", "pipeline parallel size (vllm/sglang)")
    .option("--max-model-len <n>", "context length: tokens, or 32k (32,000) / 32K (32,768) as vLLM reads it")
    .option("--gpu-memory-utilization <f>", "GPU memory fraction (split among instances that share GPUs)")
    .option("--quantization <method>", "quantization method (vllm/sglang)")
    .option("--dtype <dtype>", "auto, bfloat16, float16, float32 (vllm/sglang/torch)")
    .option("--kv-cache-dtype <dtype>", "KV cache dtype (vllm/sglang)")
    .option("--max-num-seqs <n>", "largest running batch per instance (vllm --max-num-seqs, sglang --max-running-requests; embedded default 16, torch 64)")
    .option("--max-num-batched-tokens <n>", "prompt tokens per scheduler step: smaller keeps inter-token latency flat while prompts arrive, larger gives faster TTFT (vllm same name, sglang --chunked-prefill-size; per step beside decoding rows: embedded default 64, torch 2048)")
    .option("--trust-remote-code", "allow model code from the hub (vllm/sglang)")
    .option("--download-dir <dir>", "weights download directory (vllm/sglang)")
    .option("--enforce-eager", "no CUDA graphs (vllm, torch)")
    .option("--engine-arg <arg>", "extra argument for the engine command line, verbatim (repeatable)", collect)
    .addOption(new Option(`${VLLM_ARG} <arg>`, "a vllm serve engine flag for vLLM children (set by rewriting a vllm serve command line)").hideHelp().argParser(collect))
    .option("--threads <n>", "CPU threads per embedded instance (default: cores / instances)")
    .option("--python <exe>", "python for sglang and the torch worker (needs PyTorch)", "python3")
    .option("--device <dev>", "torch worker device: auto, cuda, cuda:N, cpu", "auto")
    .optionsGroup("Models and reasoning:")
    .option("--served-model-name <name>", "name clients use (repeat for aliases; default: the model directory name)", collect)
    .option("--reasoning-field <which>", "where <think> text goes: both, reasoning_content, reasoning, none", "both")
    .option("--reasoning-parser <name>", "the engine's reasoning parser (vllm/sglang; default deepseek_r1); token engines split <think> blocks (deepseek_r1, qwen3)")
    .option("--chat-template <file>", "chat template to use instead of the model's: a Jinja file, or the template itself (as vLLM takes it)")
    .option("--no-r1-advice", "do not fold system prompts into the user turn or default temperature to generation_config's")
    .optionsGroup("Listening:")
    .option("--host <addr>", "listen address", "127.0.0.1")
    .option("--port <n>", "listen port", "8000")
    .option("--workers <n>", "gateway processes sharing the port, or auto = one per core (for heavy streaming loads)", "1")
    .option("--ssl-keyfile <file>", "serve HTTPS: the PEM private key (with --ssl-certfile)")
    .option("--ssl-certfile <file>", "serve HTTPS: the PEM certificate chain (with --ssl-keyfile)")
    .option("--ssl-ca-certs <file>", "HTTPS: PEM CA certificates that client certificates must chain to (mutual TLS, with --ssl-cert-reqs)")
    .option("--ssl-cert-reqs <n>", "HTTPS client certificates: 0 not asked for, 1 optional (one sent must verify), 2 required (vLLM's values)")
    .optionsGroup("API keys and limits:")
    .option("--api-key <key>", "require this bearer key on /v1/* (repeatable; also DSR_API_KEY)", collect)
    .option("--api-key-file <file>", "file of keys, one per line, each optionally followed by a name (counted and logged by name; SIGHUP re-reads it)")
    .option("--protect-all", "require a key on /health, /ready, /metrics and /version too")
    .option("--key-rpm <n>", "requests per minute per API key (429 with Retry-After beyond; one count across --workers)")
    .option("--key-tpm <n>", "tokens (prompt + completion) per minute per API key, taken when a request ends (429 with Retry-After beyond; one count across --workers)")
    .option("--key-max-parallel <n>", "generation requests in flight per API key (429 beyond; one count across --workers)")
    .option("--max-concurrency <n>", "requests generated at once; more wait in the queue", "256")
    .option("--max-queue <n>", "requests waiting beyond --max-concurrency before 429", "1024")
    .option("--queue-timeout <s>", "longest wait in the queue before 408 (0 = none)", "0")
    .option("--request-timeout <s>", "per-request deadline (0 = none)", "0")
    .option("--max-body <bytes>", "largest request body", "4MiB")
    .optionsGroup("Browsers (CORS):")
    .option("--allowed-origins <list>", "answer browsers (CORS) from these origins: comma-separated or a JSON list as vLLM takes it, * for any (default: none, unlike vLLM)", collect)
    .option("--allowed-methods <list>", "CORS: methods allowed (default *)", collect)
    .option("--allowed-headers <list>", "CORS: request headers allowed (default *)", collect)
    .option("--allow-credentials", "CORS: allow credentials (the origin is echoed, never *)")
    .optionsGroup("Request log, cache and routing:")
    .option("--log-file <path>", "JSON-lines request log (no prompt text unless --log-prompts)")
    .option("--log-max-size <bytes>", "rotate the request log at this size", "50MiB")
    .option("--log-keep <n>", "rotated request logs kept", "5")
    .option("--log-prompts", "include prompts in the request log")
    .option("--cache <where>", "response cache for deterministic requests: memory, or redis://host:port")
    .option("--cache-ttl <s>", "cache entry lifetime", "600")
    .option("--cache-size <n>", "in-memory cache entries", "10000")
    .option("--affinity", "route a chat session (same system prompt + first turn, or x-session-id) to the same instance")
    .option("--otlp-traces-endpoint <url>", "OpenTelemetry: a span per request, over OTLP to grpc://HOST:4317 or http://HOST:4318/v1/traces; vLLM children get it too (default: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)")
    .optionsGroup("Lifecycle:")
    .option("--grace <s>", "on SIGINT/SIGTERM, let in-flight requests finish this long", "30")
    .option("--ready-timeout <s>", "wait this long for engine instances to become ready", "1800")
    .option("--dry-run", "print the engine choice and exact child commands, start nothing")
    .action(async (models: string[], f: Flags) => run(models, f, ctx()));
}

/**
 * MODEL arguments as paths and names: `PATH=NAME` names a model (a hub id has no `=`; an existing
 * path is taken whole); otherwise the directory name is its name.
 */
function modelArgs(args: string[]): { path: string; name?: string }[] {
  return args.map((a) => {
    const eq = a.lastIndexOf("=");
    if (eq <= 0 || eq === a.length - 1 || existsSync(a)) return { path: a };
    return { path: a.slice(0, eq), name: a.slice(eq + 1) };
  });
}

/**
 * The names clients use: `--served-model-name` (aliases of one model), else each model's `=NAME` or
 * its directory name. Several models need a name each, so --served-model-name is refused with them.
 */
function servedNamesFor(models: { path: string; name?: string }[], f: Flags): string[] {
  if (f.upstream?.length) return f.servedModelName ?? [];
  const named = models.find((m) => m.name !== undefined);
  if (named && f.servedModelName?.length) throw usageError(`${named.path}=${named.name} and --served-model-name both name the model`, "keep one of them");
  if (models.length > 1 && f.servedModelName?.length) throw usageError("--served-model-name names one model, and several are given", "name each model as PATH=NAME, e.g. m/R1-Distill-Qwen-7B=r1-7b");
  if (f.servedModelName?.length) return f.servedModelName;
  const names = models.map((m) => m.name ?? basename(m.path.replace(/\/+$/, "")));
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice !== undefined) throw usageError(`two models would both be served as ${twice}`, "name them apart as PATH=NAME");
  return names;
}

async function run(args: string[], f: Flags, c: CommandContext): Promise<void> {
  const { out } = c;
  const models = modelArgs(args);
  const keys = await readKeys(f, c.env);
  const cfg: ServeConfig = {
    // a local directory travels to child instances (and logs) as an absolute path
    models: f.upstream?.length ? [] : models.map((m) => (existsSync(m.path) ? resolve(m.path) : m.path)),
    engine: f.engine,
    upstreams: (f.upstream ?? []).map(checkUrl),
    upstreamApiKey: f.upstreamApiKey,
    host: f.host,
    port: int(f.port, "--port", 0, 65535),
    instances: instancesFlag(f.instances),
    workers: f.workers === "auto" ? availableParallelism() : int(f.workers, "--workers", 1, 256),
    servedNames: servedNamesFor(models, f),
    reasoningFields: reasoningFields(f.reasoningField),
    r1Advice: f.r1Advice,
    affinity: !!f.affinity,
    engineFlags: {
      tp: optInt(f.tp, "--tp"),
      pp: optInt(f.pp, "--pp"),
      maxModelLen: f.maxModelLen === undefined ? undefined : parseTokenCount(f.maxModelLen, "--max-model-len"),
      gpuMemoryUtilization: f.gpuMemoryUtilization === undefined ? undefined : fraction(f.gpuMemoryUtilization),
      quantization: f.quantization,
      dtype: f.dtype,
      kvCacheDtype: f.kvCacheDtype,
      maxNumSeqs: optInt(f.maxNumSeqs, "--max-num-seqs"),
      maxNumBatchedTokens: f.maxNumBatchedTokens === undefined ? undefined : parseTokenCount(f.maxNumBatchedTokens, "--max-num-batched-tokens"),
      trustRemoteCode: f.trustRemoteCode,
      downloadDir: f.downloadDir,
      enforceEager: f.enforceEager,
      otlpTracesEndpoint: traceEndpoint(f, c.env),
      extra: f.engineArg,
      vllmExtra: f.vllmArg,
      reasoningParser: f.reasoningParser,
      // a file travels to children as an absolute path; a template given inline as it is
      chatTemplate: f.chatTemplate && existsSync(f.chatTemplate) ? resolve(f.chatTemplate) : f.chatTemplate,
    },
    python: f.python,
    device: f.device,
    threads: f.threads === undefined ? Math.max(1, Math.floor(availableParallelism() / Math.max(1, instancesFlag(f.instances)))) : int(f.threads, "--threads", 1, 1024),
    readyTimeoutMs: seconds(f.readyTimeout, "--ready-timeout") * 1000,
    gateway: {
      apiKeys: keys,
      protectAll: !!f.protectAll,
      maxConcurrency: int(f.maxConcurrency, "--max-concurrency", 1, 1e6),
      maxQueue: int(f.maxQueue, "--max-queue", 0, 1e7),
      queueTimeoutMs: seconds(f.queueTimeout, "--queue-timeout") * 1000,
      requestTimeoutMs: seconds(f.requestTimeout, "--request-timeout") * 1000,
      maxBodyBytes: parseByteSize(f.maxBody, "--max-body"),
      logPrompts: !!f.logPrompts,
      tls: await readTls(f),
      cors: corsFlags(f),
      keyLimits:
        f.keyRpm || f.keyTpm || f.keyMaxParallel
          ? {
              rpm: f.keyRpm ? int(f.keyRpm, "--key-rpm", 1, 1e9) : 0,
              tpm: f.keyTpm ? int(f.keyTpm, "--key-tpm", 1, 1e12) : 0,
              maxParallel: f.keyMaxParallel ? int(f.keyMaxParallel, "--key-max-parallel", 1, 1e6) : 0,
            }
          : undefined,
    },
  };
  if (f.sslCaCerts && !cfg.gateway.tls?.verifyClients) out.note("--ssl-ca-certs without --ssl-cert-reqs 1 or 2: client certificates are not asked for (vLLM's default too)");
  if (cfg.gateway.keyLimits && keys.length === 0) throw usageError(`${f.keyRpm ? "--key-rpm" : f.keyTpm ? "--key-tpm" : "--key-max-parallel"} limits API keys, and none is configured`, "add --api-key-file (or --api-key)");
  if (cfg.upstreams.length && models.length) throw usageError("give either MODEL or --upstream, not both", "with --upstream, name the model clients use with --served-model-name");
  const selfCommand = { command: process.execPath, args: [...process.execArgv, process.argv[1]] }; // how to run this dsr again for child instances
  const deps = { pathValue: c.env.PATH, env: c.env, selfCommand };
  const worker = workerSpec(c.env);
  if (worker) {
    // a gateway worker of the primary: same flags, a share of the limits, its own log file
    const w = worker.index;
    const note = out.note.bind(out);
    out.note = (l: string) => note(`[w${w}] ${l}`);
    cfg.gateway.maxConcurrency = Math.max(1, Math.ceil(cfg.gateway.maxConcurrency / worker.workers));
    cfg.gateway.maxQueue = Math.ceil(cfg.gateway.maxQueue / worker.workers);
    if (f.logFile) f.logFile = `${f.logFile}.w${w}`;
    cfg.servedNames = worker.servedNames;
  }
  const plan: ServePlan = worker ? { engine: "upstream", reason: `gateway worker ${worker.index}`, children: [], upstreams: worker.instances.map((i) => i.url) } : await planServe(cfg, deps);
  if (!worker) {
    for (const n of compatNotes) out.note(n);
    out.note(`engine: ${plan.engine} (${plan.reason})`);
    for (const n of plan.notes ?? []) out.note(n);
    checkEngineSpecific(f, plan.engine);
  }
  // checked before an engine loads: a token engine's template must also parse with @huggingface/jinja
  const template = f.chatTemplate === undefined || plan.engine === "upstream" ? undefined : chatTemplateText(f.chatTemplate, plan.engine === "embedded" || plan.engine === "torch");

  if (f.dryRun) {
    for (const ch of plan.children) out.line(ch.line);
    if (plan.children.length === 0) out.line(plan.engine === "upstream" ? `# gateway in front of ${plan.upstreams.join(" ")}` : `# ${plan.engine} engine in process: no child command`);
    out.result({ engine: plan.engine, reason: plan.reason, notes: plan.notes ?? [], children: plan.children.map(({ name, command, args, env, port, readyPath }) => ({ name, command, args, env, port, ready_path: readyPath })), upstreams: plan.upstreams, listen: `${cfg.host}:${cfg.port}` });
    return;
  }

  let cache: ResponseCache | undefined;
  if (f.cache) {
    const ttl = seconds(f.cacheTtl, "--cache-ttl") * 1000;
    if (f.cache === "memory") cache = new MemoryCache(int(f.cacheSize, "--cache-size", 1, 1e8), ttl);
    else if (/^rediss?:\/\//.test(f.cache)) cache = await RedisCache.connect(f.cache, ttl).catch((e) => { throw usageError(`--cache ${redact(f.cache!)}: cannot connect (${(e as Error).message})`, "start redis-server, or use --cache memory"); });
    else throw usageError(`--cache ${f.cache}: expected "memory" or a redis:// URL`);
  }
  const tracesTo = traceEndpoint(f, c.env);
  const tracer = tracesTo ? await createTracer(tracesTo, c.env, VERSION, (l) => out.note(l)) : undefined;
  const requestLog = f.logFile ? await RequestLog.open({ path: f.logFile, maxBytes: parseByteSize(f.logMaxSize, "--log-max-size"), keep: int(f.logKeep, "--log-keep", 0, 1000) }) : undefined;

  let metrics: GatewayMetrics | undefined;
  let shutdownRequested!: () => void;
  const shutdown = new Promise<void>((r) => {
    shutdownRequested = r;
    if (c.signal.aborted) r();
    else c.signal.addEventListener("abort", () => r(), { once: true });
  });
  const channel = worker ? workerChannel(() => metrics, () => shutdownRequested()) : undefined;
  /** The in-process token engine (loaded on demand: onnxruntime stays out of `dsr --help` and of proxy-only gateways). */
  const openTokenEngine = async (engine: "embedded" | "torch", path: string) => {
    if (engine === "torch") {
      const { openTorchEngine } = await import("../engine/runtime/torch/index.js");
      const f2 = cfg.engineFlags;
      const r = await openTorchEngine(path, { python: cfg.python, env: c.env, device: cfg.device, dtype: f2.dtype, maxBatch: f2.maxNumSeqs, prefillChunk: f2.maxNumBatchedTokens, maxContext: f2.maxModelLen, memoryFraction: f2.gpuMemoryUtilization, cudaGraphs: !f2.enforceEager, threads: cfg.threads, onLog: (l) => out.note(`[torch] ${l}`) });
      out.note(`torch worker: ${r.info.device}, ${r.info.dtype}${r.info.cudaGraphs ? ", CUDA graphs" : ""}, ${(r.info.weightBytes / 2 ** 30).toFixed(2)} GiB of weights in ${(r.info.loadMs / 1000).toFixed(1)} s, batch ≤ ${r.info.maxBatch}, context ${r.info.maxContext}, ${r.info.prefillChunk} prompt tokens per step (torch ${r.info.torch})`);
      return r;
    }
    const { openEmbeddedEngine, defaultOnnxCacheDir } = await import("../engine/runtime/embedded/index.js");
    const r = await openEmbeddedEngine(path, { threads: cfg.threads, maxBatch: cfg.engineFlags.maxNumSeqs, prefillChunk: cfg.engineFlags.maxNumBatchedTokens, maxContext: cfg.engineFlags.maxModelLen, cacheDir: defaultOnnxCacheDir(c.env.XDG_CACHE_HOME), signal: c.signal });
    out.note(`embedded engine: ${r.info.weights} weights, ${r.info.threads} thread(s), batch ≤ ${r.info.maxBatch}, context ${r.info.maxContext}${r.info.converted ? ` (converted to ${r.info.onnxDir})` : ""}`);
    return r;
  };
  const server = await startServe(cfg, plan, {
    ...deps,
    worker,
    forkWorkers: cfg.workers > 1 && !worker ? workerForker(() => metrics, (l) => out.note(l), cfg.gateway.keyLimits) : undefined,
    // per-key limits are the primary's, for all workers at once
    keyGate: channel && cfg.gateway.keyLimits ? channel.keyGate : undefined,
    setInstanceProbe: channel?.setProbe,
    metricsSource: channel?.metricsSource,
    onMetrics: (m) => (metrics = m),
    version: VERSION,
    openTokenEngine: async (engine, path) => {
      const r = await openTokenEngine(engine, path);
      if (!template) return r;
      out.note(`chat template: ${template.source}`);
      return { engine: r.engine, text: r.text.withChatTemplate(template.text, template.source) };
    },
    cache,
    requestLog,
    tracer,
    note: (l) => out.note(l),
    childLog: (name, line) => out.note(`[${name}] ${line}`),
    signal: c.signal,
  }).catch(async (e) => {
    await cache?.close();
    await requestLog?.close();
    await tracer?.shutdown().catch(() => undefined);
    throw e;
  });
  const names = cfg.servedNames.join(", ");
  out.note(`serving ${names || "the upstreams' models as they answer"} at ${server.url}/v1 (${keys.length ? `${keys.length} API key(s)` : "no API key"}; metrics at /metrics)`);
  if (!worker) out.result({ url: server.url, engine: plan.engine, models: cfg.servedNames, instances: plan.children.length || plan.upstreams.length || 1 });

  // SIGHUP re-reads the key file and the certificate, as nginx reloads on it: keys rotate and
  // certificates renew without a restart. A file that fails to read keeps what is in use.
  const reloadable = f.apiKeyFile !== undefined || cfg.gateway.tls !== undefined;
  const onHup = () =>
    void (async () => {
      const secrets = { apiKeys: await readKeys(f, c.env), tls: await readTls(f) };
      server.reload(secrets);
      out.note(`SIGHUP: reloaded ${secrets.apiKeys.length} API key(s)${secrets.tls ? " and the TLS certificate" : ""}`);
    })().catch((e: Error) => out.note(`SIGHUP: kept the keys and certificate in use: ${e.message}`));
  if (reloadable) process.on("SIGHUP", onHup);

  await shutdown;
  process.off("SIGHUP", onHup);
  const grace = seconds(f.grace, "--grace") * 1000;
  const n = server.inFlight();
  out.note(`shutting down: finishing ${Number.isNaN(n) ? "the" : n} in-flight request(s) (up to ${grace / 1000} s)…`);
  const cancelled = await server.shutdown(grace);
  await cache?.close();
  await requestLog?.close();
  // the last spans go out before the process does (an unreachable collector costs the exporter's timeout)
  await tracer?.shutdown().catch((e: Error) => out.note(`traces: the last spans were not exported: ${e.message}`));
  out.note(cancelled ? `stopped; ${cancelled} request(s) cancelled after the grace period` : "stopped cleanly");
  process.exitCode = 0; // a drained shutdown is a success, not an interruption
  if (worker) process.disconnect?.(); // the cluster IPC channel would keep a worker alive
}

/** `--otlp-traces-endpoint`, else OpenTelemetry's own variable; checked here so that a bad URL is a usage error before anything starts. */
function traceEndpoint(f: Flags, env: Record<string, string | undefined>): string | undefined {
  const endpoint = f.otlpTracesEndpoint ?? (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || undefined);
  if (endpoint === undefined) return undefined;
  try {
    otlpTarget(endpoint, env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL);
  } catch (e) {
    throw usageError(`${f.otlpTracesEndpoint !== undefined ? "--otlp-traces-endpoint" : "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"}: ${(e as Error).message}`, "e.g. --otlp-traces-endpoint grpc://localhost:4317 (an OpenTelemetry collector's OTLP/gRPC port)");
  }
  return endpoint;
}

/** Flags that mean something to some engines only: refused where they would be silently lost. */
function checkEngineSpecific(f: Flags, engine: ServePlan["engine"]): void {
  if (f.vllmArg?.length && engine !== "vllm") {
    const flag = f.vllmArg.find((a) => a.startsWith("-"))!.split("=")[0];
    throw usageError(`${flag} is a vllm serve engine flag, passed to vLLM children only, and this serve runs the ${engine === "upstream" ? "--upstream gateway" : `${engine} engine`}`, "add --engine vllm, or leave the flag out");
  }
  if (f.reasoningParser !== undefined) {
    if (f.reasoningField === "none") throw usageError(`--reasoning-parser ${f.reasoningParser} with --reasoning-field none`, "leave one out: none turns the reasoning split off");
    if (engine === "upstream") throw usageError("--reasoning-parser: an --upstream server parses reasoning itself", "give the flag to the upstream server");
    if ((engine === "embedded" || engine === "torch") && !THINK_PARSERS.has(f.reasoningParser)) {
      throw usageError(`--reasoning-parser ${f.reasoningParser}: the ${engine} engine splits <think> blocks (deepseek_r1, qwen3) and has no other parser`, "leave it out for R1 models, or serve with --engine vllm");
    }
  }
  if (f.chatTemplate !== undefined && engine === "upstream") throw usageError("--chat-template: an --upstream server renders its own chat template", "give the flag to the upstream server");
}

function reasoningFields(v: string): ReasoningField[] {
  if (v === "both") return [...REASONING_FIELDS];
  if (v === "none") return [];
  if ((REASONING_FIELDS as readonly string[]).includes(v)) return [v as ReasoningField];
  throw usageError(`--reasoning-field ${v}: expected both, reasoning_content, reasoning or none`);
}

const int = (v: string, flag: string, min: number, max: number) => parseIntFlag(v, flag, min, max);
/** --instances: 1–64, or auto (0: one per GPU group, resolved by planServe). */
function instancesFlag(v: string): number {
  if (v === "auto") return 0;
  if (!/^\d+$/.test(v)) throw usageError(`--instances ${v}: expected auto or an integer from 1 to 64`);
  return int(v, "--instances", 1, 64);
}
const optInt = (v: string | undefined, flag: string) => (v === undefined ? undefined : int(v, flag, 1, 1e9));

function fraction(v: string): number {
  const n = Number(v);
  if (!(n > 0 && n <= 1)) throw usageError(`--gpu-memory-utilization ${v}: expected a fraction in (0, 1]`);
  return n;
}

function seconds(v: string, flag: string): number {
  const n = Number(v);
  if (!(n >= 0) || !Number.isFinite(n)) throw usageError(`${flag} ${v}: expected seconds (a number ≥ 0)`);
  return n;
}


function checkUrl(u: string): string {
  try {
    const x = new URL(u);
    if (x.protocol !== "http:" && x.protocol !== "https:") throw new Error("not http(s)");
    return x.origin;
  } catch {
    throw usageError(`--upstream ${u}: not an http(s) URL`, "e.g. --upstream http://127.0.0.1:8001 http://127.0.0.1:8002");
  }
}

const redact = (u: string) => u.replace(/\/\/[^@/]*@/, "//***@");
