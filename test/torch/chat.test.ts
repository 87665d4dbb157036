/** `dsr chat --engine torch` as a real child process of the built CLI: the embedded engine's greedy answer, from the python worker on the CPU. */
import { describe, expect, it } from "vitest";
import { runDsr, TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { TORCH_PYTHON } from "./python.js";

const Q = "What is 905 - 268? Please reason step by step, and put your final answer within \\boxed{}.";

describe.skipIf(!TORCH_PYTHON)("dsr chat --engine torch", () => {
  it("answers one-shot with the embedded engine's greedy reasoning and answer", async () => {
    const t = await runDsr(["--json", "chat", TINY_R1, Q, "--temperature", "0", "--engine", "torch", "--python", TORCH_PYTHON!, "--device", "cpu"]);
    expect(t.exitCode, String(t.stderr)).toBe(0);
    const torch = JSON.parse(String(t.stdout));
    expect(torch.answer).toBe("The answer is \\boxed{637}.");
    const e = await runDsr(["--json", "chat", TINY_R1, Q, "--temperature", "0"], { env: { XDG_CACHE_HOME: await tempDir("dsr-xdg-") } });
    const embedded = JSON.parse(String(e.stdout));
    expect({ reasoning: torch.reasoning, answer: torch.answer, usage: torch.usage }).toEqual({ reasoning: embedded.reasoning, answer: embedded.answer, usage: embedded.usage });
  }, 60_000);

  it("--engine torch with a python that is not there is a usage error naming --python", async () => {
    const r = await runDsr(["chat", TINY_R1, "hi", "--engine", "torch", "--python", "/nonexistent/python3"]);
    expect(r.exitCode).toBe(2);
    expect(String(r.stderr)).toMatch(/--python \/nonexistent\/python3: not found/);
  });
});
