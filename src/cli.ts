/**
 * The dsr program: global flags, subcommands, exit codes. This is the only place that touches
 * process.argv, signals and process.exit; commands receive a CommandContext.
 */
import { Command, CommanderError } from "commander";
import { registerCommands, selectedCommand } from "./commands/index.js";
import type { CommandContext } from "./commands/context.js";
import { ExitCode } from "./engine/errors.js";
import { Output } from "./ui/output.js";
import { VERSION } from "./version.js";

export async function main(argv: string[]): Promise<number> {
  const program = new Command("dsr");
  const controller = new AbortController();
  let ctx: CommandContext | undefined;
  const getCtx = (): CommandContext => {
    if (!ctx) {
      const o = program.opts<{ json?: boolean; quiet?: boolean; verbose?: boolean; color?: boolean }>();
      ctx = {
        out: new Output({ json: !!o.json, quiet: !!o.quiet, verbose: !!o.verbose, color: o.color !== false }),
        signal: controller.signal,
        env: process.env,
      };
    }
    return ctx;
  };

  program
    .description("DeepSeek-R1 family, from model hub to measured production endpoint")
    .version(VERSION, "-V, --version")
    .option("--json", "machine-readable JSON output on stdout")
    .option("-q, --quiet", "print nothing but errors")
    .option("-v, --verbose", "more detail, and stack traces on errors")
    .option("--no-color", "disable colors")
    .showHelpAfterError("(run with --help for usage)")
    .exitOverride()
    .addHelpText(
      "after",
      "\nExit codes: 0 ok, 1 failure, 2 usage, 3 integrity or validation failure, 130 interrupted.",
    );
  const parsedArgv = await registerCommands(program, getCtx, selectedCommand(argv.slice(2)), argv);
  for (const c of program.commands) c.exitOverride();

  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupts++;
    if (interrupts > 1) process.exit(ExitCode.interrupted); // second Ctrl-C: leave now
    controller.abort(new Error(sig));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    await program.parseAsync(parsedArgv());
    return process.exitCode === undefined ? ExitCode.ok : Number(process.exitCode);
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === "commander.helpDisplayed" || e.code === "commander.version" || e.code === "commander.help") return ExitCode.ok;
      return ExitCode.usage; // commander already printed the message
    }
    const code = getCtx().out.error(e);
    // Work cut short by Ctrl-C/SIGTERM exits 130 whatever error the cancellation surfaced as.
    return controller.signal.aborted ? ExitCode.interrupted : code;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}

// `dsr … | head` closes stdout early: that is the reader's choice, not an error.
process.stdout.on("error", (e: NodeJS.ErrnoException) => {
  if (e.code === "EPIPE") process.exit(process.exitCode === undefined ? 0 : Number(process.exitCode));
  throw e;
});

const code = await main(process.argv);
// Servers keep the loop alive themselves; everything else should exit with its code promptly.
process.exitCode = code;
