/** What every command gets from the CLI: output, a cancellation signal (Ctrl-C), the environment. */
import type { Output } from "../ui/output.js";

export interface CommandContext {
  out: Output;
  /** Aborted on SIGINT/SIGTERM; long work checks it and saves state before exiting 130. */
  signal: AbortSignal;
  env: NodeJS.ProcessEnv;
}
