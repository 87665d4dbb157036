/**
 * Assembles a running `dsr serve` from its options: picks the engine (`auto` prints why), plans the
 * child processes (vLLM / SGLang / dsr embedded instances) with their exact command lines — what
 * `--dry-run` prints — then starts children under supervisors, waits for real readiness, and puts the
 * gateway in front. Multi-instance is one code path: N children, each an OpenAI upstream behind the
 * router. A single token engine (embedded, torch) runs in process (no extra hop).
 */
import { DsrError, ExitCode } from "../errors.js";
import { gpuMemories, missingEngine, placeInstances, visibleGpus, pythonHas, sglangCommand, shellLine, vllmCommand, which, type EngineFlags, type Placement } from "../runtime/launchers.js";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { looksLikeRepoId } from "../hub/index.js";
import { fitAdvice, gpuProfileFor, planModel, type FitAdvice } from "./fit.js";
import { Supervisor, type ChildState } from "../runtime/supervisor.js";
import type { TokenEngine } from "../runtime/types.js";
import { UpstreamInstance } from "../runtime/upstream.js";
import type { TextModel } from "../text/index.js";
import type { ApiKey } from "./auth.js";
import type { ResponseCache } from "./cache.js";
import type { CorsOptions } from "./cors.js";
import type { KeyGate, KeyLimitOptions } from "./key-limits.js";
import { Gateway } from "./gateway.js";
import { GatewayMetrics } from "./metrics.js";
import { ProxyBackend } from "./proxy.js";
import type { ReasoningField } from "./reasoning.js";
import type { RequestLog } from "./request-log.js";
import type { RequestTracer } from "./tracing.js";
import type { TlsOptions } from "./h1-server.js";
import { TokenBackend } from "./token-backend.js";
import { LoadingBackend } from "./loading-backend.js";
import type { Backend } from "./types.js";
import { freePorts } from "./free-ports.js";

export type EngineName = "auto" | "embedded" | "torch" | "vllm" | "sglang";
/** Engines whose tokens the gateway itself turns into text (TokenBackend). */
export type TokenEngineName = "embedded" | "torch";
const isTokenEngine = (e: string): e is TokenEngineName => e === "embedded" || e === "torch";

export interface ServeConfig {
  /**
   * The models to serve (local directories or hub ids); none with --upstream. With several, each gets
   * its own instances and is served under its own name (`servedNames[i]`, one per model), routed by
   * the request's `model`; with one, `servedNames` are its names (aliases).
   */
  models: string[];
  engine: EngineName;
  upstreams: string[];
  upstreamApiKey?: string;
  host: string;
  port: number;
  /** Engine instances; 0 = auto (one per GPU group for GPU engines, 1 otherwise). */
  instances: number;
  /** Gateway processes (node:cluster) sharing the listening port; 1 = the gateway runs in this process. */
  workers: number;
  servedNames: string[];
  reasoningFields: ReasoningField[];
  r1Advice: boolean;
  affinity: boolean;
  engineFlags: Omit<EngineFlags, "model" | "servedModelName" | "reasoning">;
  python: string;
  /** CPU threads per embedded instance. */
  threads?: number;
  /** Torch worker device: auto, cuda, cuda:N, cpu. */
  device: string;
  readyTimeoutMs: number;
  gateway: {
    apiKeys: ApiKey[];
    protectAll: boolean;
    maxConcurrency: number;
    maxQueue: number;
    queueTimeoutMs: number;
    requestTimeoutMs: number;
    maxBodyBytes: number;
    logPrompts: boolean;
    /** Limits per API key; none when absent. */
    keyLimits?: KeyLimitOptions;
    /** CORS for browser clients (`--allowed-origins` …); none when absent. */
    cors?: CorsOptions;
    /** HTTPS (PEM key and certificate chain, already read and checked to match). */
    tls?: TlsOptions;
  };
}

/** What a gateway worker process needs to front the instances the primary started. */
export interface WorkerSpec {
  index: number;
  workers: number;
  /**
   * With `multiModel`, what each listed in /v1/models (absent: not heard from yet); `healthPath`:
   * where it says it is servable; `starting`: not ready yet (unhealthy until a probe passes).
   */
  instances: { name: string; url: string; models?: string[]; healthPath?: string; starting?: boolean }[];
  servedNames: string[];
  upstreamModel?: string;
  multiModel?: boolean;
  /** The workers serve HTTPS (each reads the key and certificate from the flags it re-runs with). */
  https?: boolean;
}

/** Gateway workers (node:cluster) started by the command once the engines are ready. */
export interface WorkerPool {
  url: string;
  inFlight(): number;
  /** Tells every worker to reload its API keys and certificate (SIGHUP). */
  reload(): void;
  /** Has every worker probe its instances now (their health known before "serving" is said). */
  probe(): Promise<void>;
  /** Drains every worker (up to graceMs) and waits for them to exit; returns cancelled requests. */
  stop(graceMs: number): Promise<number>;
}

/** What SIGHUP reloads: the API keys (flags, key file, DSR_API_KEY) and the HTTPS key and certificate. */
export interface GatewaySecrets {
  apiKeys: ApiKey[];
  tls?: TlsOptions;
}

export interface ServeDeps {
  version: string;
  /** PATH, for finding vllm / nvidia-smi. */
  pathValue: string | undefined;
  env: NodeJS.ProcessEnv;
  /** How to run this dsr again (node + entry script), for embedded child instances. */
  selfCommand: { command: string; args: string[] };
  /** Opens an in-process token engine. */
  openTokenEngine?: (engine: TokenEngineName, modelPath: string) => Promise<{ engine: TokenEngine; text: TextModel }>;
  cache?: ResponseCache;
  requestLog?: RequestLog;
  /** OpenTelemetry spans per request (`--otlp-traces-endpoint`). */
  tracer?: RequestTracer;
  /** In a gateway worker: how the primary's "probe now" reaches this worker's instances. */
  setInstanceProbe?: (probe: () => Promise<void>) => void;
  /** Admits API keys against limits another process keeps (a gateway worker asks the primary). */
  keyGate?: KeyGate;
  note: (line: string) => void;
  childLog: (name: string, line: string) => void;
  signal: AbortSignal;
  /** Set in a gateway worker: front these instances, start no engine. */
  worker?: WorkerSpec;
  /** Set in the primary when --workers > 1: fork the gateway workers. */
  forkWorkers?: (spec: Omit<WorkerSpec, "index">) => Promise<WorkerPool>;
  /** Metrics exposition for /metrics (workers ask the primary for the cluster-wide sum). */
  metricsSource?: () => Promise<{ contentType: string; body: string }>;
  onMetrics?: (m: GatewayMetrics) => void;
}

export interface PlannedChild {
  name: string;
  /** The name the child serves its model under (its first, with one model). */
  servedName: string;
  command: string;
  args: string[];
  env: Record<string, string>;
  port: number;
  readyPath: string;
  line: string;
  /** The child has GPUs to itself (placeInstances), so it may start beside its siblings. */
  ownGpus: boolean;
}

export interface ServePlan {
  engine: Exclude<EngineName, "auto"> | "upstream";
  reason: string;
  /** What planning found worth saying (fit.ts: a --max-model-len chosen to fit, or a likely refusal). */
  notes?: string[];
  children: PlannedChild[];
  upstreams: string[];
}

/**
 * Decides the engine. `auto`: vLLM if installed and a GPU is visible, else the torch worker if
 * PyTorch is there too, else embedded. `listGpus`: the visible GPUs, asked for only by `auto`.
 */
export async function chooseEngine(cfg: ServeConfig, deps: Pick<ServeDeps, "pathValue" | "env">, listGpus: () => Promise<string[]>): Promise<{ engine: ServePlan["engine"]; reason: string }> {
  if (cfg.upstreams.length > 0) return { engine: "upstream", reason: `--upstream given (${cfg.upstreams.length} URL${cfg.upstreams.length > 1 ? "s" : ""})` };
  if (cfg.engine !== "auto") return { engine: cfg.engine, reason: `--engine ${cfg.engine}` };
  const gpus = (await listGpus()).length;
  if (gpus > 0 && (await which("vllm", deps.pathValue))) return { engine: "vllm", reason: `auto: vllm installed and ${gpus} GPU(s) visible` };
  if (gpus > 0 && (await pythonHas(cfg.python, "torch", deps.env))) return { engine: "torch", reason: `auto: ${gpus} GPU(s) and PyTorch in ${cfg.python}, no vllm on PATH; using the torch worker` };
  return { engine: "embedded", reason: gpus > 0 ? `auto: ${gpus} GPU(s) but neither vllm on PATH nor PyTorch in ${cfg.python}; using the embedded CPU engine` : "auto: no GPU visible; using the embedded CPU engine" };
}

export async function planServe(cfg: ServeConfig, deps: Pick<ServeDeps, "pathValue" | "env" | "selfCommand">): Promise<ServePlan> {
  let listed: Promise<string[]> | undefined; // nvidia-smi runs once for the engine choice and the placement
  const listGpus = () => (listed ??= visibleGpus(deps.pathValue, deps.env));
  const { engine, reason } = await chooseEngine(cfg, deps, listGpus);
  if (engine === "upstream") return { engine, reason, children: [], upstreams: cfg.upstreams };
  if (engine === "torch" && ((cfg.engineFlags.tp ?? 1) > 1 || (cfg.engineFlags.pp ?? 1) > 1)) {
    throw new DsrError("DSR_USAGE", "--engine torch runs one GPU per instance; --tp / --pp are not built into the torch worker yet", {
      exitCode: ExitCode.usage,
      hint: "use --engine vllm --tp N (or sglang), or --instances N for one torch worker per GPU (data parallel)",
    });
  }
  if (!cfg.models.length) throw new DsrError("DSR_USAGE", "dsr serve needs a MODEL (a local directory or hub id) unless --upstream is given", { exitCode: ExitCode.usage, hint: "dsr serve ./models/tiny-r1, or dsr serve --upstream http://127.0.0.1:8000" });
  // GPU engines: instances get GPUs of their own while there are enough, else share them and split
  // the memory fraction among themselves, as the seed guides do by hand (0.4 + 0.4). A torch worker
  // told a device (cuda:N, cpu) goes where it is told.
  const placeable = engine !== "embedded" && !(engine === "torch" && cfg.device !== "auto" && cfg.device !== "cuda");
  const perInstance = engine === "torch" ? 1 : (cfg.engineFlags.tp ?? 1) * (cfg.engineFlags.pp ?? 1);
  const gpus = placeable ? await listGpus() : [];
  const models = cfg.models.length;
  // --instances is per model; auto shares the GPU groups among the models
  const n = cfg.instances || Math.max(1, Math.floor(gpus.length / perInstance / models));
  const why = cfg.instances ? reason : `${reason}; --instances auto: ${n}${models > 1 ? " per model" : ""} (${placeable ? `${gpus.length} GPU(s), ${perInstance} per instance` : "one for this engine"})`;
  // --workers > 1 runs the gateway in several processes, and several models need a child each, so
  // only one token engine alone runs in this process
  if (isTokenEngine(engine) && n === 1 && cfg.workers <= 1 && models === 1) return { engine, reason: why, children: [], upstreams: [] };
  const ports = await freePorts(n * models);
  // model by model, each model's instances together: GPU groups go to them in that order
  const places = placeInstances(n * models, gpus, perInstance);
  const fits = engine === "vllm" ? await vllmFits(cfg, places, gpus, deps, n) : [];
  const children = ports.map((port, i): PlannedChild => {
    const model = cfg.models[Math.floor(i / n)];
    const names = models > 1 ? [cfg.servedNames[Math.floor(i / n)]] : cfg.servedNames;
    const name = names[0];
    let cmd: { command: string; args: string[]; readyPath: string };
    const { devices, sharing } = places[i]!;
    const env: Record<string, string> = devices === undefined ? {} : { CUDA_VISIBLE_DEVICES: devices };
    const share = memoryShare(cfg, sharing);
    if (isTokenEngine(engine)) {
      const a = [...deps.selfCommand.args, "serve", model, "--engine", engine, "--host", "127.0.0.1", "--port", String(port), "--instances", "1"];
      for (const s of names) a.push("--served-model-name", s);
      a.push("--reasoning-field", cfg.reasoningFields.length === 2 ? "both" : cfg.reasoningFields[0] ?? "none");
      if (!cfg.r1Advice) a.push("--no-r1-advice");
      a.push("--max-concurrency", String(cfg.gateway.maxConcurrency), "--max-queue", String(cfg.gateway.maxQueue), "--grace", "5");
      if (cfg.threads) a.push("--threads", String(cfg.threads));
      if (cfg.engineFlags.maxModelLen) a.push("--max-model-len", String(cfg.engineFlags.maxModelLen));
      if (cfg.engineFlags.chatTemplate) a.push("--chat-template", cfg.engineFlags.chatTemplate);
      if (cfg.engineFlags.maxNumSeqs) a.push("--max-num-seqs", String(cfg.engineFlags.maxNumSeqs));
      if (cfg.engineFlags.maxNumBatchedTokens) a.push("--max-num-batched-tokens", String(cfg.engineFlags.maxNumBatchedTokens));
      if (engine === "torch") {
        a.push("--python", cfg.python, "--device", cfg.device);
        if (share !== undefined) a.push("--gpu-memory-utilization", String(share));
        if (cfg.engineFlags.dtype) a.push("--dtype", cfg.engineFlags.dtype);
        if (cfg.engineFlags.enforceEager) a.push("--enforce-eager");
      }
      cmd = { command: deps.selfCommand.command, args: a, readyPath: "/ready" };
    } else {
      const flags: EngineFlags = { ...cfg.engineFlags, model, servedModelName: name, reasoning: cfg.reasoningFields.length > 0, gpuMemoryUtilization: share, maxModelLen: fits[i]?.maxModelLen ?? cfg.engineFlags.maxModelLen };
      cmd = engine === "vllm" ? vllmCommand(flags, "127.0.0.1", port) : sglangCommand(flags, "127.0.0.1", port, cfg.python);
    }
    return { name: `i${i}`, servedName: name, ...cmd, env, port, line: shellLine(env, cmd.command, cmd.args), ownGpus: devices !== undefined && sharing === 1 };
  });
  const notes = [...new Set(fits.map((f) => f.note).filter((x): x is string => x !== undefined))];
  return { engine, reason: why, children, upstreams: [], notes };
}

/**
 * For each vLLM child: the memory plan for the GPUs it gets (fit.ts), on its local checkpoint or a
 * hub id's headers. Nothing without nvidia-smi's memory figures; a checkpoint that cannot be read
 * is said and skipped.
 */
async function vllmFits(cfg: ServeConfig, places: Placement[], visible: readonly string[], deps: Pick<ServeDeps, "pathValue" | "env">, perModel: number): Promise<FitAdvice[]> {
  if (visible.length === 0) return [];
  const memories = await gpuMemories(deps.pathValue);
  if (memories.length === 0) return [];
  const on = (ids: readonly string[]) => memories.filter((m) => ids.includes(m.index) || ids.includes(m.uuid));
  const models = new Map<string, ReturnType<typeof planModel>>();
  return Promise.all(
    places.map(async ({ devices, sharing }, i): Promise<FitAdvice> => {
      const path = cfg.models[Math.floor(i / perModel)];
      const local = existsSync(join(path, "config.json"));
      if (!local && !looksLikeRepoId(path)) return {};
      if (!models.has(path)) models.set(path, planModel(path, { local, env: deps.env }));
      const { model, skipped } = await models.get(path)!;
      if (!model) return { note: `fit check skipped: ${skipped}` };
      const gpu = gpuProfileFor(on(devices?.split(",") ?? visible));
      if (!gpu) return {};
      const util = memoryShare(cfg, sharing) ?? 0.9; // vLLM's default where dsr passes none
      return fitAdvice(model, gpu, { tp: cfg.engineFlags.tp, pp: cfg.engineFlags.pp, util, kvCacheDtype: cfg.engineFlags.kvCacheDtype, maxModelLen: cfg.engineFlags.maxModelLen });
    }),
  );
}

export interface RunningServe {
  url: string;
  inFlight(): number;
  /**
   * Applies reloaded secrets to this process's gateway; with gateway workers, tells each to reload
   * its own (they re-read the same files), and `secrets` is only a check that they read well.
   */
  reload(secrets: GatewaySecrets): void;
  plan: ServePlan;
  /** Drains the gateway (up to graceMs), stops children, closes everything. Returns cancelled requests. */
  shutdown(graceMs: number): Promise<number>;
}

export async function startServe(cfg: ServeConfig, plan: ServePlan, deps: ServeDeps): Promise<RunningServe> {
  const metrics = new GatewayMetrics(cfg.servedNames[0] ?? "unknown");
  const supervisors: Supervisor[] = [];
  /** Several models of our own: each child serves one, and requests are routed by model. */
  const several = cfg.models.length > 1;
  /**
   * One model's children answer to its first name (a vLLM or SGLang child knows only that one): the
   * gateway maps the other --served-model-name aliases to it.
   */
  const childModel = several ? undefined : cfg.servedNames[0];
  let backend: Backend;
  const closers: (() => Promise<unknown>)[] = [];
  deps.onMetrics?.(metrics);
  /** The gateway over `b`, listening (a busy port is a clear error, after what was started is stopped). */
  const listen = async (b: Backend): Promise<{ gateway: Gateway; url: string }> => {
    const gateway = new Gateway({ backend: b, version: deps.version, ...cfg.gateway, cache: deps.cache, requestLog: deps.requestLog, tracer: deps.tracer, keyGate: deps.keyGate, metrics, metricsSource: deps.metricsSource });
    try {
      const addr = await gateway.listen(cfg.port, cfg.host);
      const host = addr.address.includes(":") ? `[${addr.address}]` : addr.address;
      return { gateway, url: `${cfg.gateway.tls ? "https" : "http"}://${host}:${addr.port}` };
    } catch (e) {
      await b.close().catch(() => undefined);
      for (const c of closers) await c().catch(() => undefined);
      const err = e as NodeJS.ErrnoException;
      throw new DsrError("DSR_LISTEN_FAILED", `cannot listen on ${cfg.host}:${cfg.port}: ${err.code ?? err.message}`, { hint: err.code === "EADDRINUSE" ? "another server uses that port: pick one with --port" : undefined });
    }
  };
  /** Set when the gateway listened before its instances were ready. */
  let early: { gateway: Gateway; url: string } | undefined;
  /** Gateway workers (--workers N), once forked. */
  let pool: WorkerPool | undefined;
  try {
    if (deps.worker) {
      const w = deps.worker;
      const instances = w.instances.map((i) => Object.assign(new UpstreamInstance(i.name, i.url, { apiKey: cfg.upstreamApiKey, probeIntervalMs: 1000, healthPath: i.healthPath }), { probeOk: !i.starting }));
      // what the primary learnt (the model, or the models, and any adapters); an instance it had not
      // heard from (a child still loading, an upstream that was down) is asked once its probe passes
      instances.forEach((inst, k) => {
        const models = w.instances[k].models;
        Object.assign(inst, { learnModels: true, modelIds: models ?? [], modelsKnown: models !== undefined, modelsVersion: models ? 1 : 0 });
      });
      metrics.setModels(w.multiModel ? w.servedNames : w.servedNames.slice(0, 1), !!w.multiModel);
      for (const i of instances) i.startProbing();
      deps.setInstanceProbe?.(async () => void (await Promise.all(instances.map((i) => i.probe()))));
      backend = new ProxyBackend({ instances, servedNames: w.servedNames, upstreamModel: w.upstreamModel, multiModel: w.multiModel, reasoningFields: cfg.reasoningFields, affinity: cfg.affinity, metrics, ownedBy: "dsr", describeExtra: () => ({ worker: w.index }) });
    } else if (isTokenEngine(plan.engine) && plan.children.length === 0) {
      if (!deps.openTokenEngine) throw new DsrError("DSR_NOT_BUILT", `--engine ${plan.engine}: token engines are not available in this context`, { exitCode: ExitCode.usage, hint: "run it through the dsr command" });
      // Listen while the model loads (minutes for a large one on the torch worker): /health answers,
      // /ready says what loads, requests get 503 with Retry-After (loading-backend.ts)
      const model = cfg.models[0];
      early = await listen(new LoadingBackend({ servedNames: cfg.servedNames, root: model, engine: plan.engine }));
      deps.note(`listening at ${early.url} while ${model} loads on the ${plan.engine} engine (/health 200; /ready 503 until it is loaded)`);
      const { engine, text } = await deps.openTokenEngine(plan.engine, model);
      backend = new TokenBackend({ engine, text, servedNames: cfg.servedNames, root: model, reasoningFields: cfg.reasoningFields, r1Advice: cfg.r1Advice, metrics, instanceName: plan.engine });
      early.gateway.setBackend(backend);
      return running(early, backend);
    } else {
      if (plan.engine === "vllm" && !(await which("vllm", deps.pathValue))) throw missingEngine("vllm", cfg.python);
      if (plan.engine === "sglang" && !(await pythonHas(cfg.python, "sglang", deps.env))) throw missingEngine("sglang", cfg.python);
      const instances = plan.children.length
        ? plan.children.map((c) => {
            const sup = new Supervisor(
              { name: c.name, command: c.command, args: c.args, env: c.env, readyUrl: `http://127.0.0.1:${c.port}${c.readyPath}` },
              {
                onLog: deps.childLog,
                onState: (name, s: ChildState, detail) => {
                  if (s === "backoff") metrics.instanceRestarts.inc({ instance: name });
                  deps.note(`[${name}] ${s}${detail ? `: ${detail}` : ""}`);
                },
                backoffInitialMs: 500,
              },
            );
            supervisors.push(sup);
            // dsr children are probed on /ready, which also reports their engine's load and KV use
            const inst = new UpstreamInstance(c.name, `http://127.0.0.1:${c.port}`, { gate: () => sup.ready, probeIntervalMs: 1000, healthPath: c.readyPath === "/ready" ? "/ready" : "/health" });
            // several models: the router sends a request only to the children of its model
            return several ? Object.assign(inst, { modelIds: [c.servedName], modelsKnown: true }) : inst;
          })
        : plan.upstreams.map((u, i) => new UpstreamInstance(plan.upstreams.length > 1 ? `u${i}` : "u0", u, { apiKey: cfg.upstreamApiKey }));
      closers.push(() => Promise.all(supervisors.map((s) => s.stop(10_000))));
      const describeExtra = supervisors.length ? () => ({ children: supervisors.map((s) => ({ name: s.spec.name, state: s.state, pid: s.pid, restarts: s.restarts, last_exit: s.lastExit })) }) : undefined;
      if (supervisors.length && deps.forkWorkers && cfg.workers > 1) {
        // Gateway workers listen while the instances load too: each probes the children itself, on
        // the path that says "servable" (a dsr child's /ready, vLLM's /health)
        metrics.setModels(cfg.servedNames.slice(0, 1));
        metrics.setModels(several ? cfg.servedNames : cfg.servedNames.slice(0, 1));
        const spec = instances.map((i) => ({ name: i.name, url: i.origin, healthPath: i.healthPath, starting: true, models: several ? i.modelIds : undefined }));
        pool = await deps.forkWorkers({ workers: cfg.workers, instances: spec, servedNames: cfg.servedNames, upstreamModel: childModel, multiModel: several, https: !!cfg.gateway.tls });
        deps.note(`listening at ${pool.url} while the instances start (/health 200; /ready 503 until one is ready)`);
      } else if (supervisors.length) {
        // Listen while the instances load (minutes for vLLM on a large model): /health answers, /ready
        // and /metrics say how far they are, and a request gets 503 with Retry-After, not a refused
        // connection.
        for (const i of instances) i.startProbing();
        backend = new ProxyBackend({ instances, servedNames: cfg.servedNames, upstreamModel: childModel, multiModel: several, reasoningFields: cfg.reasoningFields, affinity: cfg.affinity, metrics, ownedBy: "dsr", describeExtra });
        metrics.setModels(several ? cfg.servedNames : cfg.servedNames.slice(0, 1));
        early = await listen(backend);
        deps.note(`listening at ${early.url} while the instances start (/health 200; /ready 503 until one is ready)`);
      }
      if (supervisors.length) {
        // The first instance starts alone where it may convert the checkpoint (embedded) or profile
        // GPU memory beside a sibling (vLLM counts its allocation wrongly when both start together on
        // one GPU, facts §5.1); instances with GPUs of their own start together.
        deps.note(`waiting for ${supervisors.length} ${plan.engine} instance(s) to become ready…`);
        const together = plan.engine !== "embedded" && plan.children.every((c) => c.ownGpus);
        supervisors[0].start();
        if (!together) await supervisors[0].waitReady(cfg.readyTimeoutMs, deps.signal);
        for (const s of supervisors.slice(1)) s.start();
        await Promise.all(supervisors.map((s) => s.waitReady(cfg.readyTimeoutMs, deps.signal)));
        // probed again now, not at the next tick: "serving" is said once a request would be served
        await Promise.all(instances.map((i) => i.probe()));
      }
      let upstreamModel: string | undefined;
      let multi: string[] | undefined;
      if (plan.engine === "upstream") {
        ({ upstreamModel, multi } = await discoverModels(instances, cfg.servedNames, deps.note));
        // an upstream that did not answer yet is asked again once its probe passes
        if (multi) for (const i of instances) i.learnModels = true;
      } else {
        upstreamModel = childModel;
        if (several) multi = cfg.servedNames;
        await Promise.all(instances.map((i) => i.fetchModels().catch(() => undefined))); // their cards' max_model_len, for /v1/models
      }
      if (pool) {
        await pool.probe(); // the workers see the instances ready before "serving" is said
        await Promise.all(instances.map((i) => i.close())); // the workers have their own
        return pooled(pool);
      }
      if (early) return running(early, backend!);
      if (!cfg.servedNames.length && !upstreamModel && !multi) {
        // Nothing answered yet (an upstream started after the gateway, as containers may be): serve
        // whatever the upstreams list once their probes pass, each model under its own name; until
        // then a request gets 503 "no model is known yet" with Retry-After.
        multi = [];
        for (const i of instances) i.learnModels = true;
        deps.note(`no upstream answered GET /v1/models yet (${plan.upstreams.join(", ")}): their models are served as they answer (--served-model-name names one in advance)`);
      }
      const servedNames = cfg.servedNames.length ? cfg.servedNames : multi ?? [upstreamModel!];
      if (!cfg.servedNames.length) cfg.servedNames.push(...servedNames);
      metrics.setModels(multi ?? servedNames.slice(0, 1), !!multi);
      if (multi?.length) deps.note(`serving ${multi.length} models, each on ${plan.engine === "upstream" ? "the upstreams that list it" : "its own instances"}`);
      if (deps.forkWorkers && cfg.workers > 1) {
        const spec = instances.map((i) => ({ name: i.name, url: i.origin, healthPath: i.healthPath, models: i.modelsKnown ? i.modelIds : undefined }));
        pool = await deps.forkWorkers({ workers: cfg.workers, instances: spec, servedNames, upstreamModel, multiModel: !!multi, https: !!cfg.gateway.tls });
        await Promise.all(instances.map((i) => i.close()));
        return pooled(pool);
      }
      for (const i of instances) i.startProbing();
      backend = new ProxyBackend({
        instances,
        servedNames,
        upstreamModel,
        multiModel: !!multi,
        reasoningFields: cfg.reasoningFields,
        affinity: cfg.affinity,
        metrics,
        ownedBy: "dsr",
        describeExtra,
      });
    }
  } catch (e) {
    if (early) await early.gateway.drain(0).catch(() => undefined);
    if (pool) await pool.stop(0).catch(() => undefined);
    for (const c of closers) await c().catch(() => undefined);
    throw e;
  }
  return running(await listen(backend), backend);

  function pooled(p: WorkerPool): RunningServe {
    return {
      url: p.url,
      inFlight: () => p.inFlight(),
      reload: () => p.reload(),
      plan,
      async shutdown(graceMs) {
        for (const s of supervisors) s.holdRestarts();
        const cancelled = await p.stop(graceMs);
        for (const c of closers) await c().catch(() => undefined);
        return cancelled;
      },
    };
  }

  function running(g: { gateway: Gateway; url: string }, b: Backend): RunningServe {
    return {
      url: g.url,
      inFlight: () => g.gateway.inFlight,
      reload: (s) => g.gateway.reload(s),
      plan,
      async shutdown(graceMs) {
        for (const s of supervisors) s.holdRestarts();
        const cancelled = await g.gateway.drain(graceMs);
        await b.close().catch(() => undefined);
        for (const c of closers) await c().catch(() => undefined);
        return cancelled;
      },
    };
  }
}

/**
 * What the upstreams serve, from GET /v1/models asked of all at once. One model, when every upstream
 * that answers lists the first one's first model: any instance takes any request, under the served
 * names. Otherwise each listed model is served under its own name and goes only to the upstreams that
 * list it (`multi`); with --served-model-name (names for one model) that is refused.
 */
async function discoverModels(instances: UpstreamInstance[], servedNames: readonly string[], note: (l: string) => void): Promise<{ upstreamModel?: string; multi?: string[] }> {
  const lists = await Promise.all(
    instances.map((i) =>
      i.fetchModels().then(
        (ids) => (note(`upstream ${i.origin} serves ${ids.join(", ") || "no model"}`), ids),
        (e: Error) => (note(`upstream ${i.origin}: ${e.message}`), i.markFailed(e.message), undefined),
      ),
    ),
  );
  const model = lists.find((ids) => ids?.length)?.[0];
  if (model === undefined || lists.every((ids) => ids === undefined || ids.includes(model))) return { upstreamModel: model };
  if (servedNames.length) {
    const served = instances.map((i, k) => (lists[k] ? `${i.origin} serves ${lists[k]!.join(", ") || "no model"}` : undefined)).filter(Boolean);
    throw new DsrError("DSR_UPSTREAM_MODELS_DIFFER", `--served-model-name names one model, but the upstreams serve different ones (${served.join("; ")})`, {
      exitCode: ExitCode.usage,
      hint: `leave --served-model-name out to serve each model under its own name, or list only the upstreams that serve ${model}`,
    });
  }
  return { multi: [...new Set(lists.flatMap((ids) => ids ?? []))] };
}

const round2 = (x: number) => Math.floor(x * 100) / 100;

/** The --gpu-memory-utilization an instance gets: its share of the fraction (0.9 by default) where GPUs are shared or a fraction was given, else none (the engine's default). */
function memoryShare(cfg: ServeConfig, sharing: number): number | undefined {
  const util = cfg.engineFlags.gpuMemoryUtilization;
  return sharing > 1 || util !== undefined ? round2((util ?? 0.9) / sharing) : undefined;
}
