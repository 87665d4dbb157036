/** Subcommands of the mission that are not built yet: they say so and exit 2, with no fake behaviour. */
import type { Command } from "commander";
import { DsrError, ExitCode } from "../engine/errors.js";

export function registerNotBuilt(program: Command, name: string, summary: string): void {
  program
    .command(name)
    .description(`${summary} (not built yet)`)
    .allowUnknownOption()
    .allowExcessArguments()
    .helpOption(false)
    .action(() => {
      throw new DsrError("DSR_NOT_BUILT", `dsr ${name} is not built yet`, {
        exitCode: ExitCode.usage,
        hint: "see the README for the subcommands available in this version",
      });
    });
}
