/**
 * Engine choice and child command lines: `--dry-run` prints exactly what would run (and never a flag
 * current vLLM rejects); a missing engine is a clear error naming what to install; `--engine vllm`
 * really supervises children — here a stand-in `vllm` executable on PATH that starts a real OpenAI
 * server on the port it is given (there is no GPU here), behind a stand-in `nvidia-smi`.
 */
import { describe, expect, it } from "vitest";
import { chmod, copyFile, mkdir, readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { placeInstances } from "../../src/engine/runtime/launchers.js";
import { ROOT, runDsr, TINY_R1 } from "../support/cli.js";
import { tempDir } from "../support/tmp.js";
import { freePort, startServe } from "./helpers.js";
import { startStandin, type Standin } from "../support/standin-upstream.js";
import { servedRepoFromDir, startHubServer } from "../support/hub-server.js";
import { TORCH_PYTHON } from "../torch/python.js";

const BARE_PATH = "/usr/local/bin:/usr/bin:/bin";

async function fakeGpuBin(gpus = 1): Promise<{ dir: string; argsFile: string }> {
  const dir = await tempDir();
  const argsFile = join(dir, "vllm-args.txt");
  await writeFile(join(dir, "nvidia-smi"), `#!/bin/sh\nfor i in $(seq 0 ${gpus - 1}); do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done\n`);
  // `vllm serve MODEL --host H --port P … --served-model-name NAME …` → a real OpenAI server on P
  await writeFile(
    join(dir, "vllm"),
    `#!/bin/bash
echo "$@" >> ${argsFile}
echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" >> ${argsFile}.env
port=""; name=""; adapters=()
while [ $# -gt 0 ]; do case "$1" in --port) port=$2; shift;; --served-model-name) name=$2; shift;; --lora-modules) adapters+=(--adapter "\${2%%=*}"); shift;; esac; shift; done
cd ${ROOT} && exec ${process.execPath} --import tsx test/support/standin-upstream.ts --port "$port" --model "$name" --tokens 5 --pace-ms 1 "\${adapters[@]}"
`,
  );
  await chmod(join(dir, "nvidia-smi"), 0o755);
  await chmod(join(dir, "vllm"), 0o755);
  return { dir, argsFile };
}

/** nvidia-smi for one GPU of `mib` MiB: its -L list and its --query-gpu CSV. */
async function oneGpuSmi(dir: string, name: string, mib: number): Promise<void> {
  await writeFile(join(dir, "nvidia-smi"), `#!/bin/sh\ncase "$1" in -L) echo "GPU 0: ${name} (UUID: GPU-a)";; *) echo "0, GPU-a, ${name}, ${mib}";; esac\n`);
  await chmod(join(dir, "nvidia-smi"), 0o755);
}

/** tiny-r1 with a 32k context, so that a small GPU's KV cache holds less than the whole of it. */
async function tinyR1With32k(dir: string): Promise<string> {
  const model = join(dir, "tiny-r1-32k");
  await mkdir(model);
  for (const f of await readdir(TINY_R1)) await copyFile(join(TINY_R1, f), join(model, f));
  const cfg = JSON.parse(await readFile(join(model, "config.json"), "utf8"));
  await writeFile(join(model, "config.json"), JSON.stringify({ ...cfg, max_position_embeddings: 32768 }));
  return model;
}

describe("engine launchers", () => {
  it("--dry-run vllm: translated flags, memory fraction split across instances, no removed flags", async () => {
    const r = await runDsr(["--json", "serve", "/models/DeepSeek-R1-Distill-Qwen-7B", "--engine", "vllm", "--dry-run", "--instances", "2", "--tp", "2", "--max-model-len", "8192", "--gpu-memory-utilization", "0.8", "--max-num-seqs", "64", "--max-num-batched-tokens", "4096", "--dtype", "bfloat16", "--quantization", "awq", "--trust-remote-code", "--download-dir", "/data/hf", "--served-model-name", "r1"]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const j = JSON.parse(String(r.stdout));
    expect(j.engine).toBe("vllm");
    expect(j.children).toHaveLength(2);
    const a = j.children[0].args as string[];
    expect(j.children[0].command).toBe("vllm");
    expect(a.slice(0, 2)).toEqual(["serve", "/models/DeepSeek-R1-Distill-Qwen-7B"]);
    const flag = (f: string) => a[a.indexOf(f) + 1];
    expect(flag("--tensor-parallel-size")).toBe("2");
    expect(flag("--gpu-memory-utilization")).toBe("0.4");
    expect(flag("--max-model-len")).toBe("8192");
    expect(flag("--max-num-seqs")).toBe("64");
    expect(flag("--max-num-batched-tokens")).toBe("4096");
    expect(flag("--reasoning-parser")).toBe("deepseek_r1");
    expect(flag("--served-model-name")).toBe("r1");
    expect(flag("--host")).toBe("127.0.0.1");
    expect(a).toContain("--trust-remote-code");
    for (const banned of ["--enable-reasoning", "--swap-space", "--api-key"]) expect(a).not.toContain(banned);
    expect(j.children[0].ready_path).toBe("/health");
    expect(j.children[0].port).not.toBe(j.children[1].port);
  });

  it("--dry-run sglang: its own spellings and /health_generate readiness; plain text prints pasteable lines", async () => {
    const r = await runDsr(["serve", "m/R1", "--engine", "sglang", "--dry-run", "--tp", "4", "--max-model-len", "4096", "--max-num-seqs", "32", "--max-num-batched-tokens", "2048", "--gpu-memory-utilization", "0.85"]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    expect(r.stderr).toContain("engine: sglang (--engine sglang)");
    expect(r.stdout).toMatch(/^python3 -m sglang\.launch_server --model-path m\/R1 --host 127\.0\.0\.1 --port \d+ --tp-size 4 --context-length 4096 --mem-fraction-static 0\.85 --max-running-requests 32 --chunked-prefill-size 2048 --served-model-name R1 --reasoning-parser deepseek-r1 --enable-metrics$/m);
  });

  it("auto picks the embedded engine without a GPU and says why; torch with --tp is a usage error", async () => {
    const r = await runDsr(["serve", "m", "--dry-run"], { env: { PATH: BARE_PATH } });
    expect(r.stderr).toContain("engine: embedded (auto: no GPU visible; using the embedded CPU engine)");
    const t = await runDsr(["serve", "m", "--engine", "torch", "--tp", "2", "--dry-run"]);
    expect(t.exitCode).toBe(2);
    expect(t.stderr).toMatch(/--tp \/ --pp are not built into the torch worker yet/);
    const bad = await runDsr(["serve", "m", "--instances", "many", "--dry-run"]);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain("--instances many: expected auto or an integer from 1 to 64");
  });

  it("--dry-run torch --instances 2: dsr children with the torch flags and the memory fraction split", async () => {
    const r = await runDsr(["--json", "serve", "/models/R1-Distill-Qwen-1.5B", "--engine", "torch", "--dry-run", "--instances", "2", "--gpu-memory-utilization", "0.8", "--max-num-seqs", "32", "--max-num-batched-tokens", "256", "--dtype", "float16", "--python", "/opt/py/bin/python3", "--max-model-len", "8192"]);
    expect(r.exitCode, String(r.stderr)).toBe(0);
    const j = JSON.parse(String(r.stdout));
    expect(j.engine).toBe("torch");
    expect(j.children).toHaveLength(2);
    const a = j.children[0].args as string[];
    const flag = (f: string) => a[a.indexOf(f) + 1];
    expect(flag("--engine")).toBe("torch");
    expect(flag("--instances")).toBe("1");
    expect(flag("--gpu-memory-utilization")).toBe("0.4");
    expect(flag("--max-num-seqs")).toBe("32");
    expect(flag("--max-num-batched-tokens")).toBe("256");
    expect(flag("--dtype")).toBe("float16");
    expect(flag("--python")).toBe("/opt/py/bin/python3");
    expect(flag("--device")).toBe("auto");
    expect(flag("--max-model-len")).toBe("8192");
    expect(j.children[0].ready_path).toBe("/ready");
  });

  it("placement: instances get GPUs of their own while there are enough, then share them with the fraction split", () => {
    const gpus = ["0", "1", "2", "3"];
    expect(placeInstances(4, gpus, 1)).toEqual(gpus.map((d) => ({ devices: d, sharing: 1 })));
    expect(placeInstances(2, gpus, 2)).toEqual([{ devices: "0,1", sharing: 1 }, { devices: "2,3", sharing: 1 }]);
    expect(placeInstances(3, ["0", "1"], 1)).toEqual([{ devices: "0", sharing: 2 }, { devices: "1", sharing: 1 }, { devices: "0", sharing: 2 }]);
    expect(placeInstances(2, ["0"], 1)).toEqual([{ devices: "0", sharing: 2 }, { devices: "0", sharing: 2 }]);
    expect(placeInstances(2, ["0", "1", "2"], 4)).toEqual([{ sharing: 2 }, { sharing: 2 }]); // tp 4 needs more than there is
    expect(placeInstances(2, [], 1)).toEqual([{ sharing: 2 }, { sharing: 2 }]);
  });

  it("--dry-run on a 4-GPU host: vllm --tp 2 ×2 on GPUs 0,1 and 2,3 with the whole fraction; torch ×3 on 2 visible GPUs shares one; --instances auto", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "nvidia-smi"), `#!/bin/sh
for i in 0 1 2 3; do echo "GPU $i: NVIDIA H100 80GB HBM3 (UUID: GPU-$i)"; done
`);
    await chmod(join(dir, "nvidia-smi"), 0o755);
    const env = { PATH: `${dir}:${BARE_PATH}` };
    const v = JSON.parse(String((await runDsr(["--json", "serve", "m/R1-Distill-Llama-70B", "--engine", "vllm", "--dry-run", "--instances", "2", "--tp", "2"], { env })).stdout));
    expect(v.children.map((c: { env: Record<string, string> }) => c.env.CUDA_VISIBLE_DEVICES)).toEqual(["0,1", "2,3"]);
    for (const c of v.children) expect(c.args).not.toContain("--gpu-memory-utilization"); // each owns its GPUs: vLLM's default
    const plain = await runDsr(["serve", "m/R1-Distill-Llama-70B", "--engine", "vllm", "--dry-run", "--instances", "2", "--tp", "2", "--gpu-memory-utilization", "0.85"], { env });
    expect(String(plain.stdout)).toMatch(/^CUDA_VISIBLE_DEVICES=2,3 vllm serve m\/R1-Distill-Llama-70B .*--gpu-memory-utilization 0\.85 /m);
    // the user narrowed the GPUs to two: three torch workers, two on the first
    const t = JSON.parse(String((await runDsr(["--json", "serve", "m/R1-Distill-Qwen-7B", "--engine", "torch", "--dry-run", "--instances", "3"], { env: { ...env, CUDA_VISIBLE_DEVICES: "2,3" } })).stdout));
    const shares = t.children.map((c: { env: Record<string, string>; args: string[] }) => [c.env.CUDA_VISIBLE_DEVICES, c.args.includes("--gpu-memory-utilization") ? c.args[c.args.indexOf("--gpu-memory-utilization") + 1] : "default"]);
    expect(shares).toEqual([["2", "0.45"], ["3", "default"], ["2", "0.45"]]);
    // --instances auto: one per GPU group
    const auto = await runDsr(["--json", "serve", "m/R1-Distill-Llama-70B", "--engine", "vllm", "--dry-run", "--instances", "auto", "--tp", "2"], { env });
    expect(JSON.parse(String(auto.stdout)).reason).toBe("--engine vllm; --instances auto: 2 (4 GPU(s), 2 per instance)");
    expect(JSON.parse(String(auto.stdout)).children.map((c: { env: Record<string, string> }) => c.env.CUDA_VISIBLE_DEVICES)).toEqual(["0,1", "2,3"]);
    const autoTorch = JSON.parse(String((await runDsr(["--json", "serve", "m", "--engine", "torch", "--dry-run", "--instances", "auto"], { env })).stdout));
    expect(autoTorch.children).toHaveLength(4);
    expect((await runDsr(["serve", "m", "--engine", "embedded", "--dry-run", "--instances", "auto"], { env })).stdout).toContain("# embedded engine in process");
    // CUDA_VISIBLE_DEVICES=-1 hides every GPU, as CUDA reads it: nothing placed, auto picks the CPU engine
    const hidden = JSON.parse(String((await runDsr(["--json", "serve", "m", "--engine", "vllm", "--dry-run", "--instances", "2"], { env: { ...env, CUDA_VISIBLE_DEVICES: "-1" } })).stdout));
    expect(hidden.children.map((c: { env: Record<string, string> }) => c.env)).toEqual([{}, {}]);
    expect(JSON.parse(String((await runDsr(["--json", "serve", "m", "--dry-run"], { env: { ...env, CUDA_VISIBLE_DEVICES: "-1" } })).stdout)).engine).toBe("embedded");
    // a torch worker told its device is not moved
    const pinned = JSON.parse(String((await runDsr(["--json", "serve", "m", "--engine", "torch", "--dry-run", "--instances", "2", "--device", "cuda:1"], { env })).stdout));
    expect(pinned.children.map((c: { env: Record<string, string> }) => c.env)).toEqual([{}, {}]);
  });

  it.skipIf(!TORCH_PYTHON)("auto picks the torch worker when a GPU is visible, PyTorch is there and vllm is not", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "nvidia-smi"), `#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n`);
    await chmod(join(dir, "nvidia-smi"), 0o755);
    const r = await runDsr(["serve", "m", "--dry-run", "--python", TORCH_PYTHON!], { env: { PATH: `${dir}:${BARE_PATH}` } });
    expect(r.stderr).toContain(`engine: torch (auto: 1 GPU(s) and PyTorch in ${TORCH_PYTHON}, no vllm on PATH; using the torch worker)`);
  });

  it("a missing vllm is a usage error that names what to install", async () => {
    const r = await runDsr(["serve", "some/model", "--engine", "vllm"], { env: { PATH: BARE_PATH } });
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain("--engine vllm: the `vllm` command is not installed");
    expect(r.stderr).toContain("pip install vllm");
  });

  it("auto picks vllm when it is installed and a GPU is visible, supervises N children, proxies through them", async () => {
    const { dir, argsFile } = await fakeGpuBin();
    const g = await startServe(["org/DeepSeek-R1-Distill-Qwen-1.5B", "--instances", "2", "--gpu-memory-utilization", "0.9"], { env: { PATH: `${dir}:${process.env.PATH}` }, timeoutMs: 45_000 });
    try {
      expect(g.log()).toContain("engine: vllm (auto: vllm installed and 1 GPU(s) visible)");
      const lines = (await readFile(argsFile, "utf8")).trim().split("\n");
      expect(lines).toHaveLength(2);
      for (const l of lines) expect(l).toMatch(/^serve org\/DeepSeek-R1-Distill-Qwen-1\.5B --host 127\.0\.0\.1 --port \d+ --gpu-memory-utilization 0\.45 --served-model-name DeepSeek-R1-Distill-Qwen-1\.5B --reasoning-parser deepseek_r1$/);
      const r = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "DeepSeek-R1-Distill-Qwen-1.5B", prompt: "x" }) });
      expect((await r.json()).choices[0].text).toBe(" t0 t1 t2 t3 t4");
      const ready = await (await fetch(`${g.url}/ready`)).json();
      expect(ready.children.map((c: { state: string }) => c.state)).toEqual(["ready", "ready"]);
      // one GPU shared: the second instance starts only once the first is ready
      expect(g.log().indexOf("[i1] starting")).toBeGreaterThan(g.log().indexOf("[i0] ready"));
    } finally {
      expect(await g.stop()).toBe(0);
    }
  }, 60_000);

  for (const workers of [1, 2]) {
    it(`several models, --workers ${workers}: a vLLM child per model on GPUs of its own, each served under its name and routed by the request's model`, async () => {
      const { dir, argsFile } = await fakeGpuBin(2);
      const g = await startServe(["org/R1-Distill-Qwen-7B", "org/R1-Distill-Qwen-1.5B", "--engine", "vllm", "--workers", String(workers), "--log-file", join(dir, "req.log")], { env: { PATH: `${dir}:${process.env.PATH}` }, timeoutMs: 45_000 });
      try {
        const lines = (await readFile(argsFile, "utf8")).trim().split("\n").sort();
        expect(lines[0]).toMatch(/^serve org\/R1-Distill-Qwen-1\.5B .*--served-model-name R1-Distill-Qwen-1\.5B /);
        expect(lines[1]).toMatch(/^serve org\/R1-Distill-Qwen-7B .*--served-model-name R1-Distill-Qwen-7B /);
        for (const l of lines) expect(l).not.toContain("--gpu-memory-utilization"); // a GPU each: vLLM's default
        expect((await readFile(`${argsFile}.env`, "utf8")).trim().split("\n").sort()).toEqual(["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]);
        const models = (await (await fetch(`${g.url}/v1/models`)).json()) as { data: { id: string }[] };
        expect(models.data.map((m) => m.id).sort()).toEqual(["R1-Distill-Qwen-1.5B", "R1-Distill-Qwen-7B"]);
        // each stand-in answers only the name it was started with: a wrong route would be a 404
        for (const model of ["R1-Distill-Qwen-7B", "R1-Distill-Qwen-1.5B", "R1-Distill-Qwen-7B"]) {
          const r = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model, prompt: "x" }) });
          expect(r.status).toBe(200);
          expect(((await r.json()) as { model: string }).model).toBe(model);
        }
        const none = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ prompt: "x" }) });
        expect(none.status).toBe(200); // no model: the first one
        expect((await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "R1-Distill-Llama-8B", prompt: "x" }) })).status).toBe(404);
        const metrics = await (await fetch(`${g.url}/metrics`)).text();
        expect(metrics).toMatch(/dsr:request_success_total\{[^}]*model_name="R1-Distill-Qwen-7B"[^}]*\} 3/); // with the request that named no model
      } finally {
        expect(await g.stop()).toBe(0);
      }
    }, 60_000);
  }

  it("--served-model-name aliases over a vLLM child: the child knows one name, the gateway maps the others to it", async () => {
    const { dir } = await fakeGpuBin(1);
    const g = await startServe(["org/R1-Distill-Qwen-7B", "--engine", "vllm", "--served-model-name", "r1", "--served-model-name", "r1-alias"], { env: { PATH: `${dir}:${process.env.PATH}` }, timeoutMs: 45_000 });
    try {
      for (const model of ["r1", "r1-alias"]) {
        for (const stream of [false, true]) {
          const r = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model, prompt: "x", stream }) });
          expect(r.status, `${model} stream=${stream}`).toBe(200);
          expect(await r.text()).toContain(" t4");
        }
      }
    } finally {
      expect(await g.stop()).toBe(0);
    }
  }, 60_000);

  it("a vllm serve line with LoRA adapters: the child gets them, and the gateway serves each adapter's id as it is", async () => {
    const { dir, argsFile } = await fakeGpuBin(1);
    const g = await startServe(["org/R1-Distill-Qwen-7B", "--engine", "vllm", "--enable-lora", "--lora-modules", "sql=/loras/sql", "--served-model-name", "r1", "--workers", "2"], { env: { PATH: `${dir}:${process.env.PATH}` }, timeoutMs: 45_000 });
    try {
      expect(await readFile(argsFile, "utf8")).toMatch(/--enable-lora --lora-modules sql=\/loras\/sql/);
      const models = (await (await fetch(`${g.url}/v1/models`)).json()) as { data: { id: string }[] };
      expect(models.data.map((m) => m.id)).toEqual(["r1", "sql"]);
      for (let i = 0; i < 4; i++) {
        // both workers: each learnt the adapter
        const r = await fetch(`${g.url}/v1/completions`, { method: "POST", headers: { connection: "close" }, body: JSON.stringify({ model: i % 2 ? "sql" : "r1", prompt: "x" }) });
        expect(r.status).toBe(200);
        expect(((await r.json()) as { model: string }).model).toBe(i % 2 ? "sql" : "r1");
      }
    } finally {
      expect(await g.stop()).toBe(0);
    }
  }, 60_000);

  it("vLLM children of a local checkpoint: a context that would not fit the GPU's KV cache is cut to what does, and said; one given is kept, with a warning", async () => {
    const dir = await tempDir();
    const smi = (name: string, mib: number) => oneGpuSmi(dir, name, mib);
    const model = await tinyR1With32k(dir);
    const env = { PATH: `${dir}:${BARE_PATH}` };
    const plan = async (...extra: string[]) => {
      const r = await runDsr(["serve", model, "--engine", "vllm", "--dry-run", ...extra], { env });
      expect(r.exitCode, String(r.stderr)).toBe(0);
      const len = /--max-model-len (\d+)/.exec(String(r.stdout));
      return { len: len ? Number(len[1]) : undefined, notes: String(r.stderr) };
    };
    await smi("NVIDIA Test GPU", 1050);
    const cut = await plan();
    expect(cut.len).toBeGreaterThanOrEqual(2048);
    expect(cut.len).toBeLessThan(32768);
    expect(cut.len! % 1024).toBe(0);
    expect(cut.notes).toContain(`--max-model-len ${cut.len}: dsr's memory plan puts the KV cache at about`);
    // two instances on the one GPU: half the memory each, so a shorter context
    const shared = await plan("--instances", "2");
    expect(shared.len ?? 0).toBeLessThan(cut.len!);
    const given = await plan("--max-model-len", "32K");
    expect(given.len).toBe(32768);
    expect(given.notes).toMatch(/fewer than --max-model-len 32768: vLLM will likely refuse to start; \d+ would fit/);
    await smi("NVIDIA H100 80GB HBM3", 81559); // all of it fits: nothing added, nothing said
    const roomy = await plan();
    expect(roomy.len).toBeUndefined();
    expect(roomy.notes).not.toContain("memory plan");
  }, 60_000);

  it("a hub id not yet downloaded: the same plan from its safetensors headers over HTTP (a loopback hub); an unreachable hub only skips it", async () => {
    const dir = await tempDir();
    await oneGpuSmi(dir, "NVIDIA Test GPU", 1050);
    const model = await tinyR1With32k(dir);
    const hub = await startHubServer({ repos: [await servedRepoFromDir("org/tiny-r1-32k", model)] });
    try {
      const env = { PATH: `${dir}:${BARE_PATH}`, HF_ENDPOINT: hub.hfEndpoint, HF_HOME: join(dir, "hf"), HF_TOKEN: "" };
      const local = await runDsr(["serve", model, "--engine", "vllm", "--dry-run"], { env });
      const remote = await runDsr(["serve", "org/tiny-r1-32k", "--engine", "vllm", "--dry-run"], { env });
      expect(remote.exitCode, String(remote.stderr)).toBe(0);
      const len = (out: unknown) => /--max-model-len (\d+)/.exec(String(out))?.[1];
      expect(len(remote.stdout)).toBeDefined();
      expect(len(remote.stdout)).toBe(len(local.stdout)); // the same plan as from the files
      expect(hub.stats.rangeRequests).toBeGreaterThan(0); // headers, not the weights, were read
      const offline = await runDsr(["serve", "org/tiny-r1-32k", "--engine", "vllm", "--dry-run"], { env: { ...env, HF_HUB_OFFLINE: "1" } });
      expect(len(offline.stdout)).toBeUndefined();
      expect(offline.stderr).toContain("fit check skipped: HF_HUB_OFFLINE is set");
      const down = await runDsr(["serve", "org/tiny-r1-32k", "--engine", "vllm", "--dry-run"], { env: { ...env, HF_ENDPOINT: "http://127.0.0.1:9" } });
      expect(down.exitCode).toBe(0);
      expect(down.stderr).toContain("fit check skipped: org/tiny-r1-32k:");
    } finally {
      await hub.close();
    }
  }, 90_000);

  it("several models: --served-model-name and two models of one name are usage errors; PATH=NAME names them", async () => {
    const two = await runDsr(["serve", "a/x", "b/y", "--served-model-name", "r1", "--dry-run"]);
    expect(two.exitCode).toBe(2);
    expect(two.stderr).toContain("--served-model-name names one model, and several are given");
    const same = await runDsr(["serve", "a/x", "b/x", "--dry-run"]);
    expect(same.exitCode).toBe(2);
    expect(same.stderr).toContain("two models would both be served as x");
    // PATH=NAME names them apart
    const named = JSON.parse(String((await runDsr(["--json", "serve", "a/x=r1-a", "b/x=r1-b", "--engine", "vllm", "--dry-run"])).stdout));
    expect(named.children.map((c: { args: string[] }) => [c.args[1], c.args[c.args.indexOf("--served-model-name") + 1]])).toEqual([["a/x", "r1-a"], ["b/x", "r1-b"]]);
    const both = await runDsr(["serve", "a/x=r1", "--served-model-name", "z", "--dry-run"]);
    expect(both.exitCode).toBe(2);
    expect(both.stderr).toContain("a/x=r1 and --served-model-name both name the model");
  });

  it("two GPUs: each vllm child gets its own (CUDA_VISIBLE_DEVICES) and the whole fraction, and both start at once", async () => {
    const { dir, argsFile } = await fakeGpuBin(2);
    const g = await startServe(["org/DeepSeek-R1-Distill-Qwen-1.5B", "--engine", "vllm", "--instances", "2"], { env: { PATH: `${dir}:${process.env.PATH}` }, timeoutMs: 45_000 });
    try {
      for (const l of (await readFile(argsFile, "utf8")).trim().split("\n")) expect(l).not.toContain("--gpu-memory-utilization");
      expect((await readFile(`${argsFile}.env`, "utf8")).trim().split("\n").sort()).toEqual(["CUDA_VISIBLE_DEVICES=0", "CUDA_VISIBLE_DEVICES=1"]);
      expect(g.log()).toMatch(/\[i1\] starting[\s\S]*\[i0\] ready/);
    } finally {
      expect(await g.stop()).toBe(0);
    }
  }, 60_000);
});

describe("upstream discovery", () => {
  for (const workers of [1, 2]) {
    it(`--workers ${workers}: an upstream that is not up yet: the gateway starts, answers 503 until it is, then serves the model it lists`, async () => {
      const port = await freePort();
      const g = await startServe(["--upstream", `http://127.0.0.1:${port}`, "--workers", String(workers)]);
      let up: Standin | undefined;
      try {
        expect(g.log()).toContain(`no upstream answered GET /v1/models yet (http://127.0.0.1:${port})`);
        expect(g.log()).toMatch(/^serving the upstreams' models as they answer at /m);
        expect((await fetch(`${g.url}/ready`)).status).toBe(503);
        expect(((await (await fetch(`${g.url}/v1/models`)).json()) as { data: unknown[] }).data).toEqual([]);
        const early = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "late-r1", prompt: "x" }) });
        expect(early.status).toBe(503);
        expect(early.headers.get("retry-after")).toBe("1");
        up = await startStandin({ tokens: 3, paceMs: 1, model: "late-r1" }, port);
        // each worker learns on its own: its probe passes within a second, and it asks the upstream
        // for its models then; four requests on connections of their own reach both workers
        const four = async () => (await Promise.all([0, 1, 2, 3].map(async () => (await fetch(`${g.url}/v1/completions`, { method: "POST", headers: { connection: "close" }, body: JSON.stringify({ model: "late-r1", prompt: "x" }) })).status))).join();
        await expect.poll(four, { timeout: 15_000, interval: 200 }).toBe("200,200,200,200");
        expect(await (await fetch(`${g.url}/metrics`)).text()).toMatch(/dsr:request_success_total\{[^}]*model_name="late-r1"/);
      } finally {
        await g.stop();
        await up?.close();
      }
    }, 30_000);
  }

  it("with --served-model-name the gateway starts unready over an unreachable upstream", async () => {
    const g = await startServe(["--upstream", "http://127.0.0.1:9", "--served-model-name", "later"]);
    try {
      await expect.poll(async () => (await fetch(`${g.url}/ready`)).status, { timeout: 10_000 }).toBe(503);
      const r2 = await fetch(`${g.url}/v1/completions`, { method: "POST", body: JSON.stringify({ model: "later", prompt: "x" }) });
      expect([502, 503]).toContain(r2.status);
      expect((await r2.json()).error.code).toMatch(/no_healthy_instance|upstream_error/);
    } finally {
      await g.stop();
    }
  });
});

describe("engine that cannot start", () => {
  it("a child that keeps exiting before it is ready is given up on with its exit reason, exit 1", async () => {
    const dir = await tempDir();
    await writeFile(join(dir, "nvidia-smi"), `#!/bin/sh\necho "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"\n`);
    await writeFile(join(dir, "vllm"), `#!/bin/sh\necho "error: argument --bogus: unrecognized" >&2\nexit 2\n`);
    await chmod(join(dir, "nvidia-smi"), 0o755);
    await chmod(join(dir, "vllm"), 0o755);
    const r = await runDsr(["serve", "m/R1", "--engine", "vllm", "--port", "0"], { env: { PATH: `${dir}:${process.env.PATH}` }, timeout: 30_000 });
    expect(r.exitCode).toBe(1);
    expect(String(r.stderr)).toContain("[i0] error: argument --bogus: unrecognized");
    expect(String(r.stderr)).toMatch(/i0 \(vllm\) exited with code 2 5 times before becoming ready/);
  }, 40_000);
});
