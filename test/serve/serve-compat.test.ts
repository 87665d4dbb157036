/**
 * `dsr serve` takes a `vllm serve` / `sglang.launch_server` command line and vLLM's `--config` YAML
 * (src/commands/serve-compat.ts): the rewriting itself against the real registered serve command
 * (fuzzed too), what `--dry-run` then runs, the refusals that name the flag, and `--chat-template` /
 * `chat_template_kwargs` on the embedded engine with tiny-r1.
 */
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { Command } from "commander";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { register } from "../../src/commands/serve.js";
import { rewriteServeArgs } from "../../src/commands/serve-compat.js";
import type { CommandContext } from "../../src/commands/context.js";
import { DsrError } from "../../src/engine/errors.js";
import { runDsr, TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { startServe, type ServeProc } from "./helpers.js";

const serveCommand = (): Command => {
  const program = new Command("dsr");
  register(program, () => ({}) as CommandContext);
  return program.commands.find((c) => c.name() === "serve")!;
};
const cmd = serveCommand();
const rewrite = (args: string[], files: Record<string, string> = {}) =>
  rewriteServeArgs(cmd, args, (f) => {
    if (!(f in files)) throw new Error(`ENOENT: no such file, open '${f}'`);
    return files[f]!;
  });

describe("rewriting a vllm serve / sglang command line", () => {
  it("renames their spellings, finds MODEL however it is given, and keeps vLLM-only flags for a vLLM child", () => {
    const r = rewrite(["m/R1", "-tp", "8", "--pipeline-parallel-size=2", "-dp", "2", "--seed", "0", "--hf-overrides={\"a\":1}", "--enable-prefix-caching", "--port", "9000", "--served-model-name", "r1", "r1-alias"]);
    expect(r.args).toEqual(["m/R1", "--tp", "8", "--pp", "2", "--instances", "2", "--vllm-arg=--seed", "--vllm-arg=0", "--vllm-arg=--hf-overrides", '--vllm-arg={"a":1}', "--vllm-arg=--enable-prefix-caching", "--port", "9000", "--served-model-name", "r1", "--served-model-name", "r1-alias"]);
    expect(rewrite(["--model", "m/R1", "--tensor-parallel-size", "2"]).args).toEqual(["m/R1", "--tp", "2"]);
    expect(rewrite(["--model-path", "m/R1", "--tp-size", "4", "--context-length", "4096", "--mem-fraction-static", "0.8", "--max-running-requests", "32", "--chunked-prefill-size", "2048"]).args).toEqual(["m/R1", "--tp", "4", "--max-model-len", "4096", "--gpu-memory-utilization", "0.8", "--max-num-seqs", "32", "--max-num-batched-tokens", "2048"]);
  });

  it("--lora-modules takes several adapters after MODEL, as vLLM does; all go to a vLLM child", () => {
    expect(rewrite(["m", "--enable-lora", "--lora-modules", "a=/p/a", "b=/p/b", "--port", "1"]).args).toEqual(["m", "--vllm-arg=--enable-lora", "--vllm-arg=--lora-modules", "--vllm-arg=a=/p/a", "--vllm-arg=b=/p/b", "--port", "1"]);
  });

  it("drops the other front's logging flags with a note each, values included; leaves dsr's own order and `--` alone", () => {
    const r = rewrite(["m", "--disable-log-requests", "--uvicorn-log-level", "warning", "--enable-reasoning", "--swap-space=4", "--grace", "5", "--", "-tp"]);
    expect(r.args).toEqual(["m", "--grace", "5", "--", "-tp"]);
    expect(r.notes).toEqual([
      "ignored --disable-log-requests: dsr logs requests only with --log-file",
      "ignored --uvicorn-log-level warning: dsr has no uvicorn; -q and -v set its own output",
      "ignored --enable-reasoning: removed from vLLM; dsr splits reasoning by default, see --reasoning-field",
      "ignored --swap-space 4: removed from vLLM (v0.18), so not passed on",
    ]);
  });

  it("--served-model-name takes several names only after MODEL: before it, the next word is dsr's MODEL", () => {
    expect(rewrite(["--served-model-name", "r1", "./m"]).args).toEqual(["--served-model-name", "r1", "./m"]);
    expect(rewrite(["./m", "--served-model-name", "a", "b", "--port", "1"]).args).toEqual(["./m", "--served-model-name", "a", "--served-model-name", "b", "--port", "1"]);
  });

  it("--config YAML: keys in either spelling, true/false/lists/mappings, model; the command line wins", () => {
    const yaml = "model: m/from-config\ntensor_parallel_size: 2\nport: 9000\nenforce-eager: true\nr1-advice: false\ntrust-remote-code: false\napi-key: [k1, k2]\nhf-overrides: {a: 1}\nenable_prefix_caching: false\nuvicorn-log-level: info\n";
    const r = rewrite(["--config", "c.yaml", "--port", "9100"], { "c.yaml": yaml });
    expect(r.args).toEqual(["m/from-config", "--tp", "2", "--port", "9000", "--enforce-eager", "--no-r1-advice", "--api-key", "k1", "--api-key", "k2", '--vllm-arg=--hf-overrides', '--vllm-arg={"a":1}', "--vllm-arg=--no-enable-prefix-caching", "--port", "9100"]);
    expect(r.notes[0]).toMatch(/^flags from --config c\.yaml: /);
    expect(r.notes).toContain("ignored --uvicorn-log-level info: dsr has no uvicorn; -q and -v set its own output");
    // a MODEL on the command line wins over the file's
    expect(rewrite(["m/cli", "--config=c.yaml"], { "c.yaml": "model: m/file\nport: 1\n" }).args).toEqual(["--port", "1", "m/cli"]);
  });

  it("a --config that is missing, not YAML, not a mapping or names another config is a usage error naming it", () => {
    const fails = (files: Record<string, string>, msg: RegExp) => {
      try {
        rewrite(["--config", "c.yaml"], files);
        expect.unreachable();
      } catch (e) {
        expect(e).toBeInstanceOf(DsrError);
        expect((e as DsrError).exitCode).toBe(2);
        expect((e as Error).message).toMatch(msg);
      }
    };
    fails({}, /^--config c\.yaml: ENOENT/);
    fails({ "c.yaml": "port: [1\n" }, /^--config c\.yaml: not YAML/);
    fails({ "c.yaml": "- a\n- b\n" }, /^--config c\.yaml: expected a mapping/);
    fails({ "c.yaml": "config: other.yaml\n" }, /cannot name another/);
    expect(() => rewrite(["--config"])).toThrow(/--config needs a file/);
    expect(() => rewrite(["m", "-tp"])).toThrow(/-tp needs a value/);
  });

  it("fuzz: any argument list rewrites or fails with a usage error, and every token it was given is accounted for", () => {
    const pool = ["m", "./x", "-tp", "--tp", "2", "--seed", "--served-model-name", "a", "--disable-log-requests", "--uvicorn-log-level", "--model", "--config", "c.yaml", "--", "-", "=", "--port=1", "--enable-prefix-caching", "--hf-overrides", "{}", "--max-model-len", "-dp", "--model-path", ""];
    let seed = 7;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed % n);
    for (let k = 0; k < 3000; k++) {
      const args = Array.from({ length: rnd(9) }, () => pool[rnd(pool.length)]!);
      try {
        const r = rewrite(args, { "c.yaml": "port: 1\nseed: 3\n" });
        expect(r.args.every((a) => typeof a === "string")).toBe(true);
      } catch (e) {
        expect(e, JSON.stringify(args)).toBeInstanceOf(DsrError);
        expect((e as DsrError).exitCode).toBe(2);
      }
    }
  });
});

describe("dsr serve with a vllm serve command line", () => {
  it("--dry-run: the vLLM child gets the translated flags, the vLLM-only ones and the reasoning parser; dropped ones are noted", async () => {
    const r = await runDsr(["--json", "serve", "deepseek-ai/DeepSeek-R1", "--engine", "vllm", "--dry-run", "-tp", "8", "--max-model-len", "32768", "--enable-reasoning", "--reasoning-parser", "deepseek_r1", "--disable-log-requests", "--seed", "0", "--no-enable-prefix-caching", "--chat-template", "{{ messages[0].content }}", "--otlp-traces-endpoint", "grpc://localhost:4317", "--collect-detailed-traces", "model"]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const a = JSON.parse(String(r.stdout)).children[0].args as string[];
    expect(a).toEqual(["serve", "deepseek-ai/DeepSeek-R1", "--host", "127.0.0.1", "--port", expect.any(String), "--tensor-parallel-size", "8", "--max-model-len", "32768", "--served-model-name", "DeepSeek-R1", "--reasoning-parser", "deepseek_r1", "--chat-template", "{{ messages[0].content }}", "--otlp-traces-endpoint", "grpc://localhost:4317", "--seed", "0", "--no-enable-prefix-caching", "--collect-detailed-traces", "model"]);
    const plain = await runDsr(["serve", "m/R1", "--engine", "vllm", "--dry-run", "--enable-reasoning", "--disable-log-requests"]);
    expect(plain.stderr).toContain("ignored --enable-reasoning: removed from vLLM");
    expect(plain.stderr).toContain("ignored --disable-log-requests: dsr logs requests only with --log-file");
    expect(plain.stdout).toMatch(/^vllm serve m\/R1 .* --reasoning-parser deepseek_r1$/m);
    const s = await runDsr(["--json", "serve", "m/R1", "--engine", "sglang", "--dry-run", "--reasoning-parser", "deepseek_r1", "--mem-fraction-static", "0.7"]);
    const sa = JSON.parse(String(s.stdout)).children[0].args as string[];
    expect(sa[sa.indexOf("--reasoning-parser") + 1]).toBe("deepseek-r1");
    expect(sa[sa.indexOf("--mem-fraction-static") + 1]).toBe("0.7");
  });

  it("engine-specific flags are refused where they would be lost, naming the flag", async () => {
    const fails = async (args: string[], msg: string) => {
      const r = await runDsr(["serve", ...args, "--dry-run"]);
      expect(r.exitCode, String(r.stderr)).toBe(2);
      expect(r.stderr).toContain(msg);
    };
    await fails(["m", "--engine", "embedded", "--seed", "0"], "--seed is a vllm serve engine flag, passed to vLLM children only, and this serve runs the embedded engine");
    await fails(["--upstream", "http://127.0.0.1:9", "--enable-prefix-caching"], "--enable-prefix-caching is a vllm serve engine flag");
    await fails(["m", "--engine", "embedded", "--reasoning-parser", "granite"], "--reasoning-parser granite: the embedded engine splits <think> blocks (deepseek_r1, qwen3)");
    await fails(["m", "--engine", "vllm", "--reasoning-parser", "qwen3", "--reasoning-field", "none"], "--reasoning-parser qwen3 with --reasoning-field none");
    await fails(["--upstream", "http://127.0.0.1:9", "--chat-template", "t.jinja"], "--chat-template: an --upstream server renders its own chat template");
    await fails(["m", "--engine", "vllm", "--chat-template", "missing.jinja"], "--chat-template missing.jinja: no such file, and not a Jinja template");
    await fails(["m", "--engine", "embedded", "--chat-template", "{% if %}"], "--chat-template --chat-template: the template does not parse");
  });
});

describe("--chat-template and chat_template_kwargs on the embedded engine", () => {
  let gw: ServeProc;
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir();
    // tiny-r1's own template with a system line a request's kwargs can fill in
    const tpl = "{% if persona %}[persona: {{ persona }}]{% endif %}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}";
    await writeFile(join(dir, "persona.jinja"), tpl);
    gw = await startServe([TINY_R1, "--chat-template", join(dir, "persona.jinja")], { env: { XDG_CACHE_HOME: await tempDir() }, timeoutMs: 90_000 });
  }, 120_000);
  afterAll(async () => {
    if (gw?.proc.exitCode === null) await gw.stop();
  });

  const post = async (path: string, body: object) => (await fetch(`${gw.url}${path}`, { method: "POST", body: JSON.stringify(body) })).json() as Promise<Record<string, unknown>>;
  const prompt = async (body: object) => (await post("/detokenize", { tokens: (await post("/tokenize", body)).tokens })).prompt;

  it("renders the given template, with the request's chat_template_kwargs as variables; generation uses the same prompt", async () => {
    const messages = [{ role: "user", content: "What is 1 + 1?" }];
    expect(gw.log()).toContain(`chat template: ${join(dir, "persona.jinja")}`);
    expect(await prompt({ messages })).toBe("<｜User｜>What is 1 + 1?<｜Assistant｜><think>\n");
    expect(await prompt({ messages, chat_template_kwargs: { persona: "terse" } })).toBe("[persona: terse]<｜User｜>What is 1 + 1?<｜Assistant｜><think>\n");
    // the kwargs may not replace the messages
    expect(await prompt({ messages, chat_template_kwargs: { messages: [] } })).toBe("<｜User｜>What is 1 + 1?<｜Assistant｜><think>\n");
    const sdk = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: "none", maxRetries: 0 });
    const plain = await sdk.chat.completions.create({ model: "tiny-r1", messages: messages as never, max_tokens: 4, temperature: 0 });
    const withKw = await sdk.chat.completions.create({ model: "tiny-r1", messages: messages as never, max_tokens: 4, temperature: 0, chat_template_kwargs: { persona: "terse" } } as never);
    expect(withKw.usage!.prompt_tokens).toBe((await post("/tokenize", { messages, chat_template_kwargs: { persona: "terse" } })).count);
    expect(withKw.usage!.prompt_tokens).toBeGreaterThan(plain.usage!.prompt_tokens);
  });

  it("other /v1 routes are a 404 on a token engine, saying what it serves", async () => {
    const r = await fetch(`${gw.url}/v1/embeddings`, { method: "POST", body: JSON.stringify({ model: "tiny-r1", input: "x" }) });
    expect(r.status).toBe(404);
    expect(((await r.json()) as { error: { message: string } }).error.message).toContain("this engine serves /v1/chat/completions and /v1/completions");
  });

  it("add_generation_prompt false and continue_final_message are refused on generation, naming the field", async () => {
    const r = await fetch(`${gw.url}/v1/chat/completions`, { method: "POST", body: JSON.stringify({ messages: [{ role: "user", content: "x" }], add_generation_prompt: false }) });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { param: string } }).error.param).toBe("add_generation_prompt");
  });
});
