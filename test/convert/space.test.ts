/** The free-space check reads the real filesystem (statfs) of the output folder. */
import { describe, expect, it } from "vitest";
import { ensureFreeSpace, freeBytes } from "../../src/engine/transform/space.js";
import { tempDir } from "../support/tmp.js";

describe("free-space check", () => {
  it("passes when the bytes fit and names the folder and both sizes when they do not", async () => {
    const dir = await tempDir();
    const free = await freeBytes(dir);
    expect(free).toBeGreaterThan(0);
    await expect(ensureFreeSpace(dir, 1)).resolves.toBeUndefined();
    const err = await ensureFreeSpace(dir, free + 1e12).catch((e) => e);
    expect(err.code).toBe("DSR_CONVERT_NO_SPACE");
    expect(err.message).toContain(dir);
    expect(err.message).toMatch(/writes [\d.]+ GB but the filesystem has [\d.]+ GB free/);
  });
});
