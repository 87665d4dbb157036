/**
 * `dsr chat MODEL [PROMPT]`: chat on the embedded engine (or, with --engine torch, dsr's PyTorch
 * worker). One-shot with a prompt, an interactive readline chat otherwise. Streams tokens; R1 reasoning (<think>…</think>) is printed dimmed and
 * apart from the answer (--no-think hides it); ends with tokens/s. A safetensors checkpoint is
 * converted to ONNX on first use and cached.
 */
import { createInterface } from "node:readline/promises";
import type { Command } from "commander";
import { DsrError, usageError } from "../engine/errors.js";
import { defaultOnnxCacheDir, openEmbeddedEngine } from "../engine/runtime/embedded/index.js";
import type { FinishReason, SamplingParams, TokenEngine } from "../engine/runtime/types.js";
import { ReasoningSplitter, type ChatMessage, type TextModel } from "../engine/text/index.js";
import { Progress } from "../ui/progress.js";
import type { CommandContext } from "./context.js";

interface ChatFlags {
  temperature?: string;
  topP?: string;
  topK?: string;
  maxTokens?: string;
  seed?: string;
  system?: string;
  think: boolean;
  weights?: string;
  threads?: string;
  maxContext?: string;
  engine: string;
  python: string;
  device: string;
}

function num(flag: string, v: string | undefined, check: (n: number) => boolean, what: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || !check(n)) throw usageError(`${flag} ${v}: must be ${what}`);
  return n;
}

export function register(program: Command, ctx: () => CommandContext): void {
  program
    .command("chat")
    .summary("chat with a model in the terminal on the embedded engine (or the torch worker)")
    .description(
      "Chat with a model on the embedded CPU engine (onnxruntime). MODEL is a safetensors checkpoint (converted to ONNX on " +
        "first use and cached under $XDG_CACHE_HOME/dsr/onnx) or a `dsr convert --to onnx` folder. With PROMPT: answer once " +
        "and exit; without: an interactive chat (Ctrl-D to leave).",
    )
    .argument("<model>", "model folder: safetensors checkpoint or dsr ONNX folder")
    .argument("[prompt]", "one-shot prompt")
    .option("--temperature <t>", "sampling temperature, 0 = greedy (default: generation_config.json)")
    .option("--top-p <p>", "nucleus sampling mass (default: generation_config.json)")
    .option("--top-k <k>", "sample from the k most likely tokens (0 = off)")
    .option("--max-tokens <n>", "most tokens to generate (default: 2048, within the context)")
    .option("--seed <n>", "sampling seed: the same seed gives the same answer")
    .option("--system <text>", "system message")
    .option("--no-think", "hide the <think> reasoning (it is still generated)")
    .option("--weights <w>", "weights when converting a checkpoint: fp32, fp16, int8, int4 (default: fp32 up to 200M parameters, else int4)")
    .option("--threads <n>", "onnxruntime threads (default: all cores)")
    .option("--max-context <n>", "context length in tokens (default: min(model, 4096))")
    .option("--engine <name>", "embedded (onnxruntime on the CPU) or torch (dsr's PyTorch worker, docs/worker-protocol.md)", "embedded")
    .option("--python <exe>", "python with PyTorch, for --engine torch", "python3")
    .option("--device <dev>", "torch worker device: auto, cuda, cuda:N, cpu", "auto")
    .addHelpText(
      "after",
      '\nExamples:\n  dsr chat ./DeepSeek-R1-Distill-Qwen-1.5B "How many primes are below 30?"\n  dsr chat ./DeepSeek-R1-Distill-Qwen-1.5B          # interactive\n' +
        '  dsr --json chat ./r1-onnx "What is 905 - 268? Please reason step by step, and put your final answer within \\boxed{}." --temperature 0',
    )
    .action(async (model: string, prompt: string | undefined, flags: ChatFlags) => runChat(model, prompt, flags, ctx()));
}

async function runChat(model: string, prompt: string | undefined, flags: ChatFlags, ctx: CommandContext): Promise<void> {
  const { out, signal } = ctx;
  if (flags.weights && !["fp32", "fp16", "int8", "int4"].includes(flags.weights)) throw usageError(`--weights ${flags.weights}: expected fp32, fp16, int8 or int4`);
  const temperature = num("--temperature", flags.temperature, (n) => n >= 0 && n <= 5, "a number from 0 to 5");
  const topP = num("--top-p", flags.topP, (n) => n > 0 && n <= 1, "in (0, 1]");
  const topK = num("--top-k", flags.topK, (n) => Number.isInteger(n) && n >= 0, "an integer ≥ 0");
  const maxTokens = num("--max-tokens", flags.maxTokens, (n) => Number.isInteger(n) && n >= 1, "an integer ≥ 1");
  const seed = num("--seed", flags.seed, (n) => Number.isInteger(n) && n >= 0, "an integer ≥ 0");
  const threads = num("--threads", flags.threads, (n) => Number.isInteger(n) && n >= 1 && n <= 256, "an integer from 1 to 256");
  const maxContext = num("--max-context", flags.maxContext, (n) => Number.isInteger(n) && n >= 16, "an integer ≥ 16");
  if (!prompt && out.json) throw usageError("--json needs a PROMPT (one-shot mode)", 'dsr --json chat MODEL "question"');

  if (flags.engine !== "embedded" && flags.engine !== "torch") throw usageError(`--engine ${flags.engine}: expected embedded or torch`);
  const t0 = performance.now();
  const { engine, text } = flags.engine === "torch" ? await openTorch(model, flags, threads, maxContext, ctx) : await openEmbedded(model, flags, threads, maxContext, ctx);
  out.debug(`engine ready in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const d = text.generationDefaults;
  const sampling: SamplingParams = {
    temperature: temperature ?? d.temperature ?? 0.6,
    topP: topP ?? d.topP ?? 1,
    topK: topK ?? d.topK ?? 0,
    minP: 0,
    seed,
    presencePenalty: 0,
    frequencyPenalty: 0,
    repetitionPenalty: d.repetitionPenalty ?? 1,
  };
  const session = { engine, text, sampling, maxTokens: maxTokens ?? d.maxNewTokens ?? 2048, think: flags.think, ctx };
  try {
    const messages: ChatMessage[] = flags.system ? [{ role: "system", content: flags.system }] : [];
    if (prompt) {
      messages.push({ role: "user", content: prompt });
      const r = await turn(session, messages);
      out.result({
        reasoning: r.reasoning,
        answer: r.answer,
        finish_reason: r.finish,
        usage: { prompt_tokens: r.promptTokens, completion_tokens: r.completionTokens, total_tokens: r.promptTokens + r.completionTokens },
        tokens_per_second: r.tokensPerSecond,
        time_to_first_token_s: r.ttft,
      });
      return;
    }
    await interactive(session, messages);
  } finally {
    await engine.close();
  }
}

async function openEmbedded(model: string, flags: ChatFlags, threads: number | undefined, maxContext: number | undefined, ctx: CommandContext): Promise<{ engine: TokenEngine; text: TextModel }> {
  const { out, signal } = ctx;
  const progress = new Progress(out, "items");
  let bar: ReturnType<Progress["bar"]> | undefined;
  const opened = await openEmbeddedEngine(model, {
    threads,
    maxContext,
    maxBatch: 1,
    weights: flags.weights as "fp32" | "fp16" | "int8" | "int4" | undefined,
    cacheDir: defaultOnnxCacheDir(ctx.env.XDG_CACHE_HOME),
    signal,
    onProgress: (p) => {
      if (!bar) {
        out.note(`converting ${model} to ONNX (first use; cached for next time)…`);
        bar = progress.bar("convert (weights)", p.total);
      }
      bar.update(p.done);
    },
  }).finally(() => {
    bar?.stop();
    progress.stop();
  });
  const { info } = opened;
  out.debug(`engine: ${info.onnxDir} (${info.weights}, context ${info.maxContext}, ${info.threads} threads${info.inWorker ? ", worker thread" : ""})`);
  return opened;
}

async function openTorch(model: string, flags: ChatFlags, threads: number | undefined, maxContext: number | undefined, ctx: CommandContext): Promise<{ engine: TokenEngine; text: TextModel }> {
  if (flags.weights) throw usageError("--weights applies to the embedded engine's conversion; the torch worker loads the checkpoint as it is");
  const { openTorchEngine } = await import("../engine/runtime/torch/index.js");
  const opened = await openTorchEngine(model, { python: flags.python, env: ctx.env, device: flags.device, maxBatch: 1, maxContext, threads, onLog: (l) => ctx.out.debug(`[torch] ${l}`) });
  ctx.out.debug(`engine: torch worker on ${opened.info.device}, ${opened.info.dtype}, context ${opened.info.maxContext}`);
  return opened;
}

interface Session {
  engine: TokenEngine;
  text: TextModel;
  sampling: SamplingParams;
  maxTokens: number;
  think: boolean;
  ctx: CommandContext;
}

interface TurnResult {
  reasoning: string;
  answer: string;
  finish: FinishReason | undefined;
  promptTokens: number;
  completionTokens: number;
  tokensPerSecond: number;
  ttft: number;
}

/** One assistant turn: streams to stdout (unless --json) and returns the split text and usage. */
async function turn(s: Session, messages: ChatMessage[]): Promise<TurnResult> {
  const { out, signal } = s.ctx;
  const promptIds = s.text.encode(s.text.applyChatTemplate(messages, { addGenerationPrompt: true }));
  const stdout = out.stdout as NodeJS.WriteStream;
  const live = !out.json && !out.quiet;
  const dim = out.color && stdout.isTTY === true;
  const decoder = s.text.createDecoder();
  const splitter = new ReasoningSplitter({ implicitOpen: s.text.promptOpensThink });
  let reasoning = "";
  let answer = "";
  let inReasoning = false;
  let endsWithNewline = true;
  const show = (part: { reasoning: string; content: string }) => {
    reasoning += part.reasoning;
    answer += part.content;
    if (!live) return;
    if (part.reasoning && s.think) {
      if (!inReasoning) {
        stdout.write(dim ? "\u001b[2m" : "<think>\n");
        inReasoning = true;
      }
      const r = reasoning.length === part.reasoning.length ? part.reasoning.trimStart() : part.reasoning;
      if (r) {
        stdout.write(r);
        endsWithNewline = r.endsWith("\n");
      }
    }
    if (part.content) {
      if (inReasoning) {
        const nl = endsWithNewline ? "" : "\n";
        stdout.write(dim ? `\u001b[0m${nl}\n` : `${nl}</think>\n\n`);
        inReasoning = false;
      }
      stdout.write(part.content);
    }
  };
  const t0 = performance.now();
  let first = 0;
  let n = 0;
  let finish: FinishReason | undefined;
  const controller = new AbortController();
  const onAbort = () => controller.abort();
  signal.addEventListener("abort", onAbort, { once: true });
  try {
    for await (const chunk of s.engine.submit({ promptIds, sampling: s.sampling, maxTokens: s.maxTokens, stopIds: s.text.eosTokenIds, signal: controller.signal })) {
      if (chunk.ids.length && !first) first = performance.now();
      n += chunk.ids.length;
      show(splitter.push(decoder.push(chunk.ids)));
      if (chunk.finish) finish = chunk.finish;
    }
  } finally {
    signal.removeEventListener("abort", onAbort);
  }
  show(splitter.push(decoder.flush()));
  show(splitter.flush());
  if (live && inReasoning) stdout.write(dim ? "\u001b[0m\n" : "\n</think>\n");
  if (live) stdout.write("\n");
  if (finish === "abort" && signal.aborted) throw new DsrError("DSR_INTERRUPTED", "chat interrupted", { exitCode: 130 });
  const end = performance.now();
  const decodeSecs = first ? (end - first) / 1000 : 0;
  const tokensPerSecond = n > 1 && decodeSecs > 0 ? (n - 1) / decodeSecs : 0;
  const ttft = first ? (first - t0) / 1000 : 0;
  out.note(out.dim(`${n} tokens · ${tokensPerSecond.toFixed(1)} tok/s · first token ${ttft.toFixed(2)} s · prompt ${promptIds.length} tokens${finish === "length" ? " · stopped at --max-tokens" : ""}`));
  return { reasoning: reasoning.trim(), answer: answer.trim(), finish, promptTokens: promptIds.length, completionTokens: n, tokensPerSecond, ttft };
}

async function interactive(s: Session, messages: ChatMessage[]): Promise<void> {
  const { out, signal } = s.ctx;
  const tty = (process.stdin as NodeJS.ReadStream).isTTY === true;
  const rl = createInterface({ input: process.stdin, output: out.stdout as NodeJS.WriteStream, terminal: tty });
  const leave = () => rl.close();
  rl.on("SIGINT", leave); // Ctrl-C at the prompt leaves; during an answer it interrupts (exit 130)
  signal.addEventListener("abort", leave, { once: true });
  out.note(out.dim("interactive chat — Ctrl-D to leave, /reset to clear the history"));
  rl.setPrompt(out.bold("> "));
  rl.prompt();
  try {
    for await (const line of rl) {
      const q = line.trim();
      if (q === "/reset") {
        messages.splice(messages[0]?.role === "system" ? 1 : 0);
        out.note(out.dim("history cleared"));
      } else if (q) {
        messages.push({ role: "user", content: q });
        const r = await turn(s, messages);
        messages.push({ role: "assistant", content: r.answer });
      }
      rl.prompt();
    }
  } finally {
    signal.removeEventListener("abort", leave);
    rl.close();
  }
}
