import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { DSR_BIN, runDsr } from "../support/cli.js";
import { parseHeader } from "../../src/engine/tensors/safetensors.js";

describe("dsr program", () => {
  it("--help lists every subcommand of the mission and the exit codes", async () => {
    const r = await runDsr(["--help"]);
    expect(r.exitCode).toBe(0);
    for (const name of ["pull", "inspect", "convert", "quantize", "serve", "bench", "chat"]) {
      expect(r.stdout).toMatch(new RegExp(`^  ${name} `, "m"));
    }
    expect(r.stdout).toMatch(/Exit codes: 0 ok, 1 failure, 2 usage, 3 integrity/);
  });

  it("subcommand help loads that subcommand's options", async () => {
    const r = await runDsr(["help", "inspect"]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout).toMatch(/Usage: dsr inspect/);
    expect(r.stdout).toMatch(/--gpu/);
  });

  it("subcommands not built yet say so and exit 2", async () => {
    for (const name of ["quantize", "bench"]) {
      const r = await runDsr([name, "--concurrency", "100"]);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(new RegExp(`dsr ${name} is not built yet`));
    }
  });

  it("unknown flags and commands are usage errors (exit 2)", async () => {
    expect((await runDsr(["--bogus"])).exitCode).toBe(2);
    expect((await runDsr(["frobnicate"])).exitCode).toBe(2);
    expect((await runDsr(["inspect", "--no-such-flag", "x"])).exitCode).toBe(2);
  });

  it("errors are one line plus a hint; --json makes them JSON; --verbose adds the stack", async () => {
    const r = await runDsr(["inspect", "/nonexistent/model/dir"]);
    expect(r.exitCode).not.toBe(0);
    const lines = (r.stderr as string).trim().split("\n");
    expect(lines[0]).toMatch(/^error: .*\/nonexistent\/model\/dir/);
    expect(lines.length).toBeLessThanOrEqual(2);
    const j = await runDsr(["--json", "inspect", "/nonexistent/model/dir"]);
    expect(JSON.parse(j.stdout as string).error.code).toMatch(/^DSR_/);
    const v = await runDsr(["--verbose", "inspect", "/nonexistent/model/dir"]);
    expect((v.stderr as string).split("\n").length).toBeGreaterThan(lines.length);
  });

  it("a closed stdout pipe (dsr … | head) is not a crash", async () => {
    const child = spawn(process.execPath, [DSR_BIN, "--help"], { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.destroy();
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const code = await new Promise((res) => child.on("close", res));
    expect(stderr).not.toMatch(/EPIPE|Unhandled/);
    expect(code).toBe(0);
  });
});

describe("one-line errors from the safetensors core", () => {
  it("a JSON syntax error deep in a header stays on one line", () => {
    const text = '{"a":\n{"dtype":"F32",\n"shape":[1],\n"data_offsets":[0,4]\n,,}';
    try {
      parseHeader(new TextEncoder().encode(text), undefined, "f.safetensors");
      expect.unreachable();
    } catch (e) {
      expect((e as Error).message).not.toMatch(/\n/);
      expect((e as Error).message).toMatch(/^f\.safetensors: safetensors header is not valid JSON/);
    }
  });
});
