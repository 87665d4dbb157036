import { describe, expect, it } from "vitest";
import { parseByteSize, parseIntFlag, parseTokenCount } from "../../src/commands/flags.js";

describe("shared numeric flag parsers", () => {
  it("reads sizes the same way for every subcommand", () => {
    expect(parseByteSize("5GB")).toBe(5e9);
    expect(parseByteSize("64MiB", "--part-size")).toBe(64 * 2 ** 20);
    expect(parseByteSize("64M", "--part-size")).toBe(64 * 2 ** 20); // curl/dd spelling: binary
    expect(parseByteSize("4mb", "--max-body")).toBe(4e6);
    expect(() => parseByteSize("4x", "--max-body")).toThrowError(/--max-body: cannot read "4x"/);
    expect(() => parseByteSize("0", "--max-body")).toThrowError(expect.objectContaining({ exitCode: 2 }));
  });
  it("checks integer ranges and names the flag", () => {
    expect(parseIntFlag("16", "--connections", 1, 256)).toBe(16);
    expect(() => parseIntFlag("0", "--connections", 1, 256)).toThrowError("--connections 0: expected an integer from 1 to 256");
    expect(() => parseIntFlag("1.5", "--gpus", 1)).toThrowError("--gpus 1.5: expected an integer ≥ 1");
    expect(() => parseIntFlag("", "--gpus", 1)).toThrowError(expect.objectContaining({ exitCode: 2 }));
  });

  it("token counts as vLLM reads them: k, m, g decimal (fractions allowed), K, M, G binary", () => {
    expect(["32768", "32k", "32K", "25.6k", "1m", "1M", " 4k "].map((v) => parseTokenCount(v, "--max-model-len"))).toEqual([32768, 32000, 32768, 25600, 1_000_000, 1_048_576, 4000]);
    for (const bad of ["", "0", "1.5", "32kb", "-1", "k", "0.0001k"]) expect(() => parseTokenCount(bad, "--max-model-len"), bad).toThrowError(expect.objectContaining({ exitCode: 2, message: expect.stringContaining(`--max-model-len ${bad}: expected a token count`) }));
  });
});
