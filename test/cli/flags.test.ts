import { describe, expect, it } from "vitest";
import { parseByteSize, parseIntFlag } from "../../src/commands/flags.js";

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
});
