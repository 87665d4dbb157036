/**
 * The ordered table of subcommands. Each module exports `register(program, ctx)`; subcommands of the
 * mission that are not built yet are registered by registerNotBuilt and exit 2.
 */
import type { Command } from "commander";
import type { CommandContext } from "./context.js";
import { registerNotBuilt } from "./not-built.js";
import { register as registerConvert } from "./convert.js";
import { register as registerPull } from "./pull.js";
import { register as registerInspect } from "./inspect.js";
import { register as registerServe } from "./serve.js";
import { register as registerChat } from "./chat.js";

type Register = (program: Command, ctx: () => CommandContext) => void;

export const COMMANDS: { name: string; summary: string; register?: Register }[] = [
  { name: "pull", summary: "download a model from Hugging Face or ModelScope: parallel, resumable, verified", register: registerPull },
  { name: "inspect", summary: "shards, dtypes, parameters, integrity and GPU memory fit of a local or remote checkpoint", register: registerInspect },
  { name: "convert", summary: "FP8→BF16 and dtype casts, re-sharding, ONNX for the embedded engine", register: registerConvert },
  { name: "quantize", summary: "AWQ / GPTQ 4-bit and INT8 with real calibration, in formats vLLM loads" },
  { name: "serve", summary: "OpenAI-compatible gateway over the embedded engine, a torch worker, vLLM or SGLang", register: registerServe },
  { name: "chat", summary: "chat with a model in the terminal on the embedded engine", register: registerChat },
  { name: "bench", summary: "load-test an endpoint with vLLM-compatible metrics, SLO goodput and reports" },
];

export function registerCommands(program: Command, ctx: () => CommandContext): void {
  for (const c of COMMANDS) {
    if (c.register) c.register(program, ctx);
    else registerNotBuilt(program, c.name, c.summary);
  }
}
