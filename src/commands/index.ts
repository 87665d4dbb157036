/**
 * The ordered table of subcommands. Each module exports `register(program, ctx)` and is loaded only
 * when its subcommand runs (or shows its help), so `dsr --help` and one subcommand never pay for
 * the others' dependencies (onnxruntime, redis, prom-client, tokenizers…). The bundle is split per
 * dynamic import (scripts/build.mjs). Subcommands not built yet are registered by registerNotBuilt.
 */
import type { Command } from "commander";
import type { CommandContext } from "./context.js";
import { registerNotBuilt } from "./not-built.js";

export type Register = (program: Command, ctx: () => CommandContext) => void;

/** A subcommand module: registers itself, and may rewrite its command line before commander parses it. */
export interface CommandModule {
  register: Register;
  /** `argv` as commander should see it (`cmd`: the registered subcommand). */
  rewriteArgv?: (cmd: Command, argv: string[]) => string[];
}

export interface CommandEntry {
  name: string;
  summary: string;
  load?: () => Promise<CommandModule>;
}

export const COMMANDS: CommandEntry[] = [
  { name: "pull", summary: "download a model from Hugging Face or ModelScope: parallel, resumable, verified", load: () => import("./pull.js") },
  { name: "inspect", summary: "shards, dtypes, parameters, integrity and GPU memory fit of a local or remote checkpoint", load: () => import("./inspect.js") },
  { name: "convert", summary: "FP8→BF16 and dtype casts, re-sharding, ONNX for the embedded engine", load: () => import("./convert.js") },
  { name: "quantize", summary: "AWQ / GPTQ 4-bit and INT8 with real calibration, in formats vLLM loads" },
  { name: "serve", summary: "OpenAI-compatible gateway over the embedded engine, a torch worker, vLLM or SGLang", load: () => import("./serve.js") },
  { name: "chat", summary: "chat with a model in the terminal on the embedded engine", load: () => import("./chat.js") },
  { name: "bench", summary: "load-test an endpoint with vLLM-compatible metrics, SLO goodput and reports" },
];

/**
 * Registers every command: the one named by `selected` in full (its module is loaded), the others
 * as name + summary only, which is all the top-level help shows. Returns `argv` as the selected
 * command wants it parsed.
 */
export async function registerCommands(program: Command, ctx: () => CommandContext, selected: string | undefined, argv: string[]): Promise<() => string[]> {
  let rewrite = () => argv;
  for (const c of COMMANDS) {
    if (!c.load) registerNotBuilt(program, c.name, c.summary);
    else if (c.name === selected) {
      const m = await c.load();
      m.register(program, ctx);
      const cmd = program.commands.find((x) => x.name() === c.name)!;
      if (m.rewriteArgv) rewrite = () => m.rewriteArgv!(cmd, argv);
    } else program.command(c.name).description(c.summary).allowUnknownOption().allowExcessArguments();
  }
  return rewrite;
}

/** The subcommand argv names: the first argument that is not a (boolean) global flag; `help X` names X. */
export function selectedCommand(args: readonly string[]): string | undefined {
  const positional = args.filter((a) => !a.startsWith("-"));
  return positional[0] === "help" ? positional[1] : positional[0];
}
