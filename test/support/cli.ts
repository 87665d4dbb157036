/** Runs the built `dsr` binary as a real child process (tests need `npm run build` first; `npm test` does it). */
import { execa, type Options } from "execa";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

export const ROOT = dirname(dirname(dirname(fileURLToPath(import.meta.url))));
export const DSR_BIN = join(ROOT, "bin", "dsr");
export const FIXTURES = join(ROOT, "test", "fixtures");
export const TINY_R1 = join(FIXTURES, "models", "tiny-r1");
export const TINY_DSV3_FP8 = join(FIXTURES, "models", "tiny-deepseek-v3-fp8");

export function runDsr(args: string[], opts: Options = {}) {
  return execa(process.execPath, [DSR_BIN, ...args], { reject: false, all: false, ...opts });
}
