"""Entry point: python3 -m dsr_worker --socket PATH (started by `dsr serve --engine torch`).

Connects to the gateway's Unix socket, waits for the `open` frame, loads the weights, answers
`opened` (or `open-error`), then runs the scheduler until `close` or the socket's end. A reader
thread turns frames into a queue so that steps run while requests keep arriving."""

from __future__ import annotations

import argparse
import os
import queue
import socket
import sys
import threading
import time
import traceback

import torch

from . import PROTOCOL
from .engine import Engine
from .model import DenseDecoder
from .weights import WeightError, load_shards
from .wire import Wire

GiB = 1 << 30


def pick_device(want: str) -> torch.device:
    if want == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise WeightError("DSR_WORKER_NO_CUDA", f"--device {want}: PyTorch sees no CUDA GPU", "check nvidia-smi and that this python's torch is a CUDA build, or use --device cpu")
    return torch.device(want)


def pick_dtype(want: str, device: torch.device) -> torch.dtype:
    if want in ("auto", None):
        if device.type != "cuda":
            return torch.float32  # CPU bf16 matmuls are slow and inexact
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "half": torch.float16, "float32": torch.float32, "float": torch.float32}
    if want not in table:
        raise WeightError("DSR_WORKER_DTYPE", f"--dtype {want}: expected auto, bfloat16, float16 or float32", "pick one of those")
    return table[want]


def slots_for(arch: dict, msg: dict, device: torch.device, dtype: torch.dtype, weight_bytes: int) -> int:
    """Sequences that fit. On CUDA the KV cache gets what --gpu-memory-utilization leaves after the
    weights and a reserve for one step's activations (logits, sort buffers, a prefill chunk, the
    graphs' outputs); on the CPU, half the machine's memory after the weights. One row more than
    the answer is allocated: the scratch slot padded graph rows write to."""
    want, context = int(msg["maxBatch"]), int(msg["maxContext"])
    per_seq = context * DenseDecoder.kv_bytes_per_token(arch, dtype)
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        reserve = GiB + want * arch["vocab"] * 24 + 4 * int(msg["prefillChunk"]) * arch["intermediate"] * 8
        if msg.get("cudaGraphs", True):
            reserve += 12 * 2 * want * arch["vocab"] * 4  # each captured graph keeps its logits (≤ 12 span buckets)
        budget = float(msg["memoryFraction"]) * total - torch.cuda.memory_allocated(device) - reserve
        where = f"{float(msg['memoryFraction']):.2f} × {total / GiB:.1f} GiB of GPU memory"
    else:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        budget = total / 2 - weight_bytes
        where = f"half of the machine's {total / GiB:.1f} GiB"
    slots = min(want, int(budget // per_seq) - 1)
    if slots < 1:
        raise WeightError(
            "DSR_WORKER_MEMORY",
            f"no room for one sequence of {context} tokens: {per_seq / GiB:.2f} GiB of KV cache needed, {max(budget, 0) / GiB:.2f} GiB left of {where} after the weights",
            "lower --max-model-len, raise --gpu-memory-utilization, or use fewer --instances",
        )
    return slots


def open_model(msg: dict) -> tuple[DenseDecoder, dict]:
    t0 = time.perf_counter()
    if msg.get("protocol") != PROTOCOL:
        raise WeightError("DSR_WORKER_PROTOCOL", f"dsr speaks worker protocol {msg.get('protocol')}, this worker {PROTOCOL}", "reinstall dsr so native/ matches")
    device = pick_device(msg.get("device", "auto"))
    dtype = pick_dtype(msg.get("dtype", "auto"), device)
    if device.type == "cpu" and msg.get("threads"):
        torch.set_num_threads(int(msg["threads"]))
    arch = msg["arch"]
    weights = load_shards(msg["files"], device, dtype)
    weight_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    slots = slots_for(arch, msg, device, dtype, weight_bytes)
    model = DenseDecoder(arch, weights, device, dtype, slots, int(msg["maxContext"]), graphs=bool(msg.get("cudaGraphs", True)))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info = {
        "type": "opened",
        "protocol": PROTOCOL,
        "pid": os.getpid(),
        "vocab": arch["vocab"],
        "maxBatch": slots,
        "maxContext": model.context,
        "prefillChunk": int(msg.get("prefillChunk", 2048)),
        "kvBytesPerToken": DenseDecoder.kv_bytes_per_token(arch, dtype),
        "device": f"{device} ({name})",
        "dtype": str(dtype).removeprefix("torch."),
        "cudaGraphs": model.graphs is not None,
        "weightBytes": weight_bytes,
        "torch": torch.__version__,
        "loadMs": round((time.perf_counter() - t0) * 1000),
    }
    return model, info


def wire_error(e: BaseException) -> dict:
    if isinstance(e, WeightError):
        return {"code": e.code, "message": str(e), "hint": e.hint}
    if isinstance(e, getattr(torch.cuda, "OutOfMemoryError", MemoryError)):
        return {"code": "DSR_WORKER_OOM", "message": f"out of GPU memory: {str(e).splitlines()[0]}", "hint": "lower --max-num-seqs or --max-model-len, or raise --gpu-memory-utilization"}
    return {"code": "DSR_WORKER_FAILED", "message": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "hint": "see the worker's log lines above"}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python3 -m dsr_worker")
    ap.add_argument("--socket", required=True, help="Unix socket the gateway listens on")
    args = ap.parse_args()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(args.socket)
    wire = Wire(sock)
    first = wire.read()
    if first is None or first.get("type") != "open":
        print("dsr_worker: expected an open frame first", file=sys.stderr)
        return 2
    try:
        model, info = open_model(first)
    except Exception as e:  # noqa: BLE001 — every failure is reported to the gateway, then the process ends
        traceback.print_exc()
        wire.send({"type": "open-error", "error": wire_error(e)})
        return 1
    inbox: queue.Queue = queue.Queue()
    deferred: list = []  # what arrived while a step waited for a verdict: handled after the step

    def next_verdict() -> list | None:
        if None in deferred:
            return None  # the gateway is gone: no verdict will come (a step may wait for two)
        while (m := inbox.get()) is not None:
            if m["type"] == "verdict":
                return m["rows"]
            deferred.append(m)
        deferred.append(None)
        return None

    engine = Engine(model, wire, int(first.get("prefillChunk", 2048)), next_verdict, int(first.get("maskCache", 256)))
    wire.send(info)

    def reader() -> None:
        try:
            while (m := wire.read()) is not None:
                inbox.put(m)
        except (OSError, ValueError) as e:
            print(f"dsr_worker: reading the socket failed: {e}", file=sys.stderr)
        inbox.put(None)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        msgs, deferred[:] = deferred[:], []
        if not msgs and not engine.busy():
            msgs.append(inbox.get())
        while True:
            try:
                msgs.append(inbox.get_nowait())
            except queue.Empty:
                break
        for m in msgs:
            if m is None:
                return 0  # the gateway went away
            t = m["type"]
            if t == "submit":
                engine.submit(int(m["id"]), m["req"])
            elif t == "cancel":
                engine.cancel(int(m["id"]))
            elif t == "close":
                engine.close()
                wire.queue({"type": "closed"})
                wire.flush()
                return 0
        if engine.busy():
            try:
                engine.step()
            except Exception as e:  # noqa: BLE001 — a failed step fails its sequences, not the worker
                traceback.print_exc()
                engine.fail_all(wire_error(e))
        # after every step and every batch of messages (a cancel changes the counts too)
        wire.queue({"type": "stats", "stats": engine.stats(), "counters": engine.counters})
        wire.flush()


if __name__ == "__main__":
    sys.exit(main())
