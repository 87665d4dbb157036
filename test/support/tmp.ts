/**
 * Temp directories removed when the test file finishes. vitest ignores afterAll registered inside a
 * test or hook, so one cleanup is registered when this module loads (collection time, per file:
 * test files are isolated) and tempDir() only records directories — safe to call anywhere.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";

const made: string[] = [];
afterAll(async () => {
  for (const d of made.splice(0)) await rm(d, { recursive: true, force: true });
});

export async function tempDir(prefix = "dsr-test-"): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  made.push(dir);
  return dir;
}
