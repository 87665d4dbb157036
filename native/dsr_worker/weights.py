"""Reads safetensors shards straight into torch tensors on the target device.

Hand-written (a header and byte ranges) rather than the `safetensors` package: Debian's python3-torch,
which the tests use, comes without it, and the format is small (docs/FORMATS.md)."""

from __future__ import annotations

import json
import mmap
import struct

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


class WeightError(Exception):
    def __init__(self, code: str, message: str, hint: str):
        super().__init__(message)
        self.code, self.hint = code, hint


def load_shards(files: list[str], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path in files:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # copy-on-write: torch wants a writable buffer
        try:
            (n,) = struct.unpack("<Q", mm[:8])
            header = json.loads(mm[8 : 8 + n])
            base = 8 + n
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                src = DTYPES.get(info["dtype"])
                if src is None:
                    raise WeightError(
                        "DSR_WORKER_DTYPE",
                        f"{path}: tensor {name} is {info['dtype']}; the torch worker loads F32, F16 and BF16 weights",
                        "convert first: dsr convert MODEL --to bf16 (FP8 DeepSeek checkpoints), or serve quantized checkpoints with --engine vllm",
                    )
                start, end = info["data_offsets"]
                count = (end - start) // torch.tensor([], dtype=src).element_size()
                t = torch.frombuffer(mm, dtype=src, count=count, offset=base + start).reshape(info["shape"])
                # .to() copies off the map (a new device or dtype); on CPU at the same dtype clone so the map can close
                moved = t.to(device=device, dtype=dtype)
                out[name] = moved.clone() if moved.data_ptr() == t.data_ptr() else moved
                t = moved = None  # views of the map must be gone before it closes
        finally:
            mm.close()
    return out
