/** `dsr pull`: flags → engine pull/verify → progress bars on a TTY, per-file lines when piped, JSON with --json. */
import { Command, Option } from "commander";
import { integrityError, usageError } from "../engine/errors.js";
import {
  DEFAULT_CONNECTIONS,
  DEFAULT_PART_SIZE,
  hfHubCache,
  hubOptionsFromEnv,
  msCache,
  parseRepoSpec,
  pull,
  verifyDownload,
  type HubOptions,
  type HubSource,
  type LayoutSpec,
  type PullEvent,
  type PullPlan,
  type RepoRef,
  type RetryEvent,
} from "../engine/hub/index.js";
import { Progress, type Bar } from "../ui/progress.js";
import { formatBytes, formatDuration, renderTable } from "../ui/table.js";
import type { Output } from "../ui/output.js";
import type { CommandContext } from "./context.js";
import { VERSION } from "../version.js";
import { parseByteSize, parseIntFlag } from "./flags.js";

interface PullFlags {
  source?: HubSource;
  revision?: string;
  token?: string;
  endpoint?: string;
  include: string[];
  exclude: string[];
  dryRun?: boolean;
  verify?: boolean;
  connections: number;
  partSize: number;
  localDir?: string;
  cacheDir?: string;
  stallTimeout: number;
  hashThreads?: number;
}

const collect = (v: string, prev: string[]) => [...prev, v];

const positiveInt = (flag: string) => (v: string) => parseIntFlag(v, flag, 1, 256);

function parsePartSize(v: string): number {
  const n = parseByteSize(v, "--part-size");
  if (n < 1 << 16) throw usageError(`--part-size ${v}: must be at least 64KiB`);
  return n;
}

export function register(program: Command, ctx: () => CommandContext): void {
  program
    .command("pull")
    .description("download a model from Hugging Face or ModelScope: parallel, resumable, verified")
    .argument("<repo>", 'repo id: org/name, hf:org/name or ms:org/name, optionally @revision')
    .addOption(new Option("--source <hub>", "hub to use when the repo id has no prefix").choices(["hf", "modelscope"]))
    .option("--revision <rev>", "branch, tag or commit (the resolved commit is recorded)")
    .option("--token <token>", "access token (default: HF_TOKEN / $HF_HOME/token, or MODELSCOPE_API_TOKEN)")
    .option("--endpoint <url>", "hub endpoint (default: HF_ENDPOINT, or MODELSCOPE_DOMAIN / DSR_MODELSCOPE_ENDPOINT)")
    .option("--include <glob>", "only files matching this glob (repeatable)", collect, [])
    .option("--exclude <glob>", "skip files matching this glob (repeatable)", collect, [])
    .option("--dry-run", "list the files, sizes and disk space needed; download nothing")
    .option("--verify", "re-hash an existing download against the hub's listing; download nothing")
    .option("--connections <n>", "parallel HTTP connections", positiveInt("--connections"), DEFAULT_CONNECTIONS)
    .addOption(new Option("--part-size <size>", "split files larger than this into ranged parts").argParser(parsePartSize).default(DEFAULT_PART_SIZE, "64MiB"))
    .option("--local-dir <dir>", "write plain files into DIR instead of the hub cache")
    .option("--cache-dir <dir>", "cache root (default: HF_HUB_CACHE or $HF_HOME/hub; MODELSCOPE_CACHE for ModelScope)")
    .option("--stall-timeout <seconds>", "retry a connection that sends no bytes for this long", positiveInt("--stall-timeout"), 30)
    .option("--hash-threads <n>", "worker threads for SHA-256 (default: CPUs - 1, at most 4; 0 = main thread)", (v) => (v === "0" ? 0 : positiveInt("--hash-threads")(v)))
    .addHelpText(
      "after",
      [
        "",
        "Examples:",
        "  dsr pull deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "  dsr pull ms:deepseek-ai/DeepSeek-R1 --include '*.json' --include 'model-0000[1-4]*'",
        "  dsr pull deepseek-ai/DeepSeek-R1 --dry-run",
        "  dsr pull deepseek-ai/DeepSeek-R1 --verify",
        "",
        "Interrupted pulls (Ctrl-C, crash, reboot) resume where they stopped: run the same command again.",
        "Exit codes: 0 ok, 1 hub/network/disk error, 2 usage, 3 hash mismatch or --verify failure, 130 interrupted.",
      ].join("\n"),
    )
    .action(async (repo: string, flags: PullFlags) => {
      const c = ctx();
      const ref = parseRepoSpec(repo, flags.source ?? "hf");
      if (flags.revision) ref.revision = flags.revision;
      const endpoint = flags.endpoint?.replace(/\/+$/, "");
      const overrides: Partial<HubOptions> = {
        token: flags.token,
        userAgent: `dsr/${VERSION}`,
        stallTimeoutMs: flags.stallTimeout * 1000,
        ...(endpoint ? (ref.source === "hf" ? { hfEndpoint: endpoint } : { msEndpoint: endpoint }) : {}),
      };
      const hub = hubOptionsFromEnv(c.env, overrides);
      const layout: LayoutSpec = flags.localDir
        ? { kind: "local-dir", dir: flags.localDir }
        : ref.source === "modelscope"
          ? { kind: "ms-cache", cacheDir: flags.cacheDir ?? msCache(c.env) }
          : { kind: "hf-cache", cacheDir: flags.cacheDir ?? hfHubCache(c.env) };
      const common = { ref, hub, layout, include: flags.include, exclude: flags.exclude, signal: c.signal };
      if (flags.verify) return runVerify(c.out, common);
      await runPull(c.out, { ...common, dryRun: flags.dryRun, connections: flags.connections, partSize: flags.partSize, hashThreads: flags.hashThreads });
    });
}

function describeRef(p: { source: HubSource; repo: string; revision: string; commit: string }): string {
  return `${p.source === "hf" ? "hf" : "ms"}:${p.repo}@${p.revision}${p.revision !== p.commit ? ` (${p.commit.slice(0, 12)})` : ""}`;
}

function printPlan(out: Output, plan: PullPlan): void {
  const rows = plan.files.map((f) => [f.path, formatBytes(f.size), f.status === "resume" ? `resume (${formatBytes(f.haveBytes)} done)` : f.status]);
  out.line(renderTable([{ header: "file" }, { header: "size", align: "right" }, { header: "status" }], rows));
  out.line(
    `${plan.files.length} files, ${formatBytes(plan.totalBytes)} total; ${formatBytes(plan.needBytes)} to download, ` +
      `${formatBytes(plan.freeBytes)} free at the target${plan.needBytes > plan.freeBytes ? " — NOT ENOUGH SPACE" : ""}`,
  );
  out.line(`target: ${plan.modelPath}`);
}

async function runPull(out: Output, o: Parameters<typeof pull>[0]): Promise<void> {
  const progress = new Progress(out, "bytes");
  const bars = new Map<string, Bar>();
  let overall: Bar | undefined;
  let done = 0;
  const onEvent = (e: PullEvent) => {
    switch (e.type) {
      case "plan":
        if (!o.dryRun) {
          out.note(`pulling ${describeRef(e.plan)}: ${e.plan.files.length} files, ${formatBytes(e.plan.needBytes)} to download (${formatBytes(e.plan.haveBytes)} already here)`);
          if (e.plan.needBytes > 0) overall = progress.bar("total", e.plan.needBytes);
        }
        break;
      case "file-start":
        bars.set(e.path, progress.bar(e.path.split("/").pop()!, e.size));
        bars.get(e.path)!.update(e.haveBytes);
        break;
      case "bytes":
        done += e.n;
        overall?.update(done);
        bars.get(e.path)?.increment(e.n);
        break;
      case "file-done": {
        bars.get(e.path)?.stop();
        bars.delete(e.path);
        const rate = e.seconds > 0 ? `${formatBytes(e.downloadedBytes / e.seconds)}/s` : "";
        progress.log(`✓ ${e.path} ${formatBytes(e.size)} ${e.digest ? "verified" : "size checked"}${e.downloadedBytes ? ` in ${formatDuration(e.seconds)} ${rate}` : ""}`);
        break;
      }
      case "file-mismatch":
        progress.log(`✗ ${e.path}: hash mismatch (expected ${e.expected?.slice(0, 16)}…, got ${e.actual?.slice(0, 16)}…)${e.willRetry ? "; fetching it again" : ""}`);
        break;
      case "adopt":
        progress.log(`${e.ok ? "✓" : "✗"} ${e.path}: existing file ${e.ok ? "matches the hub's hash, kept" : "differs from the hub, replacing it"}`);
        break;
    }
  };
  // Retries are normal on a long pull; show them only with --verbose, above the bars.
  const onRetry = (e: RetryEvent) => {
    if (out.verbose) progress.log(`retry ${e.attempt}/${e.of - 1} in ${formatDuration(e.delayMs / 1000)}: ${e.file ?? e.repo}: ${e.reason}`);
  };
  let r;
  try {
    r = await pull({ ...o, hub: { ...o.hub, onRetry }, onEvent });
  } finally {
    progress.stop();
  }
  if (o.dryRun) {
    printPlan(out, r);
    out.result({ dryRun: true, ...r, downloadedBytes: undefined, seconds: undefined, bytesPerSecond: undefined, readBackBytes: undefined, refetched: undefined, splits: undefined });
    return;
  }
  out.result(r);
  out.line(
    r.downloadedBytes > 0
      ? `downloaded ${formatBytes(r.downloadedBytes)} in ${formatDuration(r.seconds)} (${formatBytes(r.bytesPerSecond)}/s), ${r.files.length} files verified`
      : `already complete: ${r.files.length} files, ${formatBytes(r.totalBytes)} (nothing downloaded)`,
  );
  out.line(`model: ${r.modelPath}`);
  out.line(`next:  dsr serve ${shellQuote(r.modelPath)}`);
}

async function runVerify(out: Output, o: Parameters<typeof verifyDownload>[0]): Promise<void> {
  const progress = new Progress(out, "bytes");
  const bar = progress.bar("verify", 1);
  let total = 0;
  const r = await verifyDownload({
    ...o,
    onBytes: (n) => bar.update((total += n)),
    onFile: (f) => {
      bar.setTotal(Math.max(total, 1));
      if (f.status !== "ok") progress.log(`${f.status === "unchecked" ? "?" : "✗"} ${f.path}: ${f.status}${f.status === "corrupt" ? ` (expected ${f.expected}, got ${f.actual}) — removed` : ""}`);
    },
  }).finally(() => progress.stop());
  out.result(r);
  out.line(`${r.ok} ok, ${r.corrupt} corrupt, ${r.missing} missing (${formatBytes(r.bytesHashed)} hashed in ${formatDuration(r.seconds)}) — ${r.modelPath}`);
  if (r.corrupt + r.missing > 0) {
    const err = integrityError("DSR_PULL_VERIFY_FAILED", `${r.repo}: ${r.corrupt} corrupt and ${r.missing} missing file(s), e.g. ${r.files.find((f) => f.status === "corrupt" || f.status === "missing")!.path}`, {
      hint: "run the same dsr pull without --verify to fetch them again (corrupt files were removed)",
    });
    if (out.json) process.exitCode = err.exitCode; // the JSON report above is the result
    else throw err;
  }
}

function shellQuote(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
}
