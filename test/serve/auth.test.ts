/** API keys: the key file's format (optional names, comments) and the check's answer (the key's name, or a 401). */
import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import { apiKey, ApiKeys, parseKeyFile } from "../../src/engine/serve/auth.js";

describe("API keys", () => {
  it("a key file: one key per line, an optional name after it, # comments and blank lines ignored", () => {
    const keys = parseKeyFile("# team keys\nsk-a team-a\n\n  sk-b   ops on call  # rotated weekly\r\nsk-c\n");
    const hashed = `key-${createHash("sha256").update("sk-c").digest("hex").slice(0, 8)}`;
    expect(keys).toEqual([
      { key: "sk-a", name: "team-a" },
      { key: "sk-b", name: "ops on call" },
      { key: "sk-c", name: hashed },
    ]);
  });

  it("check answers the name of the key presented (Bearer or x-api-key), 401 otherwise; nothing configured: undefined", () => {
    const keys = new ApiKeys([apiKey("sk-a", "team-a"), apiKey("sk-b")]);
    expect(keys.check({ authorization: "Bearer sk-a" })).toBe("team-a");
    expect(keys.check({ "x-api-key": "sk-b" })).toBe(apiKey("sk-b").name);
    expect(() => keys.check({ authorization: "Bearer sk-z" })).toThrow(expect.objectContaining({ status: 401, message: "invalid API key" }));
    expect(() => keys.check({})).toThrow(expect.objectContaining({ status: 401 }));
    expect(new ApiKeys([]).check({})).toBeUndefined();
  });
});
