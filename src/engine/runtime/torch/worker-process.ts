/**
 * Starts the torch worker (`python -m dsr_worker`, native/) and connects to it: dsr listens on a
 * Unix socket in a private temp directory, the worker connects, and the two speak length-prefixed
 * JSON frames (docs/worker-protocol.md). The worker's stdout and stderr go to `onLog` line by line;
 * a worker that exits before connecting is reported with its last lines (a missing torch module, a
 * CUDA error). A socket rather than stdio because library prints on stdout could not corrupt it.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { DsrError, ExitCode } from "../../errors.js";
import type { FromEngine } from "../engine-protocol.js";
import type { EnginePort } from "../message-engine.js";
import type { EngineStats } from "../types.js";
import { encodeFrame, FrameReader } from "./frames.js";

export interface TorchProcessOptions {
  python: string;
  env: NodeJS.ProcessEnv;
  onLog: (line: string) => void;
  /** How long the worker may take to start python and connect (not to load weights). */
  connectTimeoutMs?: number;
}

/** native/ (holding the dsr_worker package), found by walking up from this module: src/… or dist/. */
export function nativeDir(): string {
  for (let d = dirname(fileURLToPath(import.meta.url)); ; d = dirname(d)) {
    if (existsSync(join(d, "native", "dsr_worker", "__main__.py"))) return join(d, "native");
    if (dirname(d) === d) throw new DsrError("DSR_NO_WORKER", "native/dsr_worker is missing from this dsr installation", { hint: "reinstall dsr (the package ships native/)" });
  }
}

const TAIL = 20;

export async function startTorchWorker(o: TorchProcessOptions): Promise<EnginePort<EngineStats>> {
  const dir = await mkdtemp(join(tmpdir(), "dsr-torch-"));
  const path = join(dir, "worker.sock");
  const server = createServer();
  await new Promise<void>((resolve, reject) => server.once("error", reject).listen(path, resolve));
  const tail: string[] = [];
  const log = (line: string) => {
    tail.push(line);
    if (tail.length > TAIL) tail.shift();
    o.onLog(line);
  };
  const child = spawn(o.python, ["-m", "dsr_worker", "--socket", path], {
    env: { ...o.env, PYTHONPATH: [nativeDir(), o.env.PYTHONPATH].filter(Boolean).join(delimiter), PYTHONUNBUFFERED: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  for (const s of [child.stdout!, child.stderr!]) createInterface({ input: s }).on("line", log);
  const exited = new Promise<string>((resolve) => {
    child.once("error", (e: NodeJS.ErrnoException) => resolve(e.code === "ENOENT" ? "not-found" : e.message));
    child.once("exit", (code, sig) => resolve(sig ? `signal ${sig}` : `code ${code}`));
  });
  const cleanup = async () => {
    server.close();
    await rm(dir, { recursive: true, force: true });
  };
  let timer: NodeJS.Timeout | undefined;
  const socket = await Promise.race([
    new Promise<Socket>((resolve) => server.once("connection", resolve)),
    exited.then((why): never => {
      throw startError(o.python, why, tail);
    }),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new DsrError("DSR_WORKER_START", `the torch worker (${o.python}) did not connect within ${(o.connectTimeoutMs ?? 120_000) / 1000} s`, { hint: "check that python starts here; its last lines are above" })), o.connectTimeoutMs ?? 120_000);
    }),
  ]).catch(async (e) => {
    child.kill("SIGKILL");
    await cleanup();
    throw e;
  }).finally(() => clearTimeout(timer));
  await cleanup(); // connected: the socket file and the listener are no longer needed
  return socketPort(socket, child, exited, tail);
}

function startError(python: string, why: string, tail: string[]): DsrError {
  if (why === "not-found") return new DsrError("DSR_NO_PYTHON", `--python ${python}: not found`, { exitCode: ExitCode.usage, hint: "install python3 with PyTorch, or pass --python /path/to/python" });
  const last = tail.join("\n");
  if (/No module named '?torch'?/.test(last)) {
    return new DsrError("DSR_NO_TORCH", `${python} has no torch module`, { exitCode: ExitCode.usage, hint: "install PyTorch for that python (pip install torch), or pass --python with one that has it" });
  }
  return new DsrError("DSR_WORKER_START", `the torch worker exited before connecting (${why})${tail.length ? `: ${tail[tail.length - 1]}` : ""}`, { hint: "its output is above; --python picks another interpreter" });
}

function socketPort(socket: Socket, child: ChildProcess, exited: Promise<string>, tail: string[]): EnginePort<EngineStats> {
  let onMessage: (m: FromEngine) => void = () => {};
  let onGone: (why: string) => void = () => {};
  let gone = false;
  let terminating = false;
  const goneOnce = (why: string) => {
    if (gone || terminating) return;
    gone = true;
    onGone(why);
  };
  const reader = new FrameReader();
  socket.on("data", (b: Buffer) => {
    let msgs: Record<string, unknown>[];
    try {
      msgs = reader.push(b);
    } catch (e) {
      goneOnce(`broke the protocol: ${(e as Error).message}`);
      child.kill("SIGKILL");
      return;
    }
    for (const m of msgs) onMessage(m as FromEngine);
  });
  socket.on("error", () => {}); // "close" follows and reports it
  const exitedWhy = (why: string) => goneOnce(`exited (${why})${tail.length ? `: ${tail[tail.length - 1]}` : ""}`);
  void exited.then(exitedWhy);
  // a closed connection usually means the process is ending: give its exit a moment to explain why
  socket.on("close", () => {
    const t = setTimeout(() => {
      goneOnce("closed its connection");
      child.kill("SIGKILL");
    }, 1000);
    void exited.then(() => clearTimeout(t));
  });
  return {
    send: (m) => {
      if (!socket.destroyed) socket.write(encodeFrame(m));
    },
    onMessage: (cb) => (onMessage = cb),
    onGone: (cb) => (onGone = cb),
    terminate: async () => {
      terminating = true;
      socket.end();
      const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
      clearTimeout(killer);
      socket.destroy();
    },
  };
}
