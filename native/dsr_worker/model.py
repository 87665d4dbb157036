"""A dense decoder (the Qwen2 and Llama layouts of the R1-Distill models) with a slot KV cache.

Each running sequence owns one slot: rows of a [slots, kv_heads, context, head_dim] cache per layer.
forward() takes a batch of (slot, start position, new tokens) and returns the last position's
logits, so one call serves a prompt chunk (one row, many tokens) and a decode step (many rows, one
token each). The architecture numbers and the rotary frequencies arrive already normalised from the
gateway (src/engine/runtime/torch/), which owns config.json parsing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SDPA = getattr(F, "scaled_dot_product_attention", None)  # torch >= 2.0
try:
    from torch.nn.attention import SDPBackend, sdpa_kernel  # torch >= 2.3

    # Not cuDNN: it builds a graph for every new key length (each decode step has one), ~2 ms of CPU
    # per call on an H100 — 28 layers made a 1.5B decode step 55 ms where the GPU worked 4 ms.
    def _attention_backends():
        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])
except ImportError:
    from contextlib import nullcontext as _attention_backends


def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


class DenseDecoder:
    def __init__(self, arch: dict, w: dict, device: torch.device, dtype: torch.dtype, slots: int, context: int, graphs: bool = False):
        self.device, self.dtype, self.slots, self.context = device, dtype, slots, context
        self.layers, self.heads, self.kv_heads = arch["layers"], arch["heads"], arch["kvHeads"]
        self.head_dim, self.eps, self.vocab = arch["headDim"], arch["eps"], arch["vocab"]
        self.group = self.heads // self.kv_heads
        self.embed = w.pop("model.embed_tokens.weight")
        head = w.pop("lm_head.weight", None)
        self.lm_head = self.embed if arch["tieEmbeddings"] or head is None else head
        self.norm = w.pop("model.norm.weight")
        self.blocks = []
        for i in range(self.layers):
            p = f"model.layers.{i}."
            qkv = [w.pop(f"{p}self_attn.{n}_proj.weight") for n in "qkv"]
            bias = [w.pop(f"{p}self_attn.{n}_proj.bias", None) for n in "qkv"]
            self.blocks.append(
                {
                    # q, k, v and gate, up are fused: one matmul each instead of three and two
                    "qkv": torch.cat(qkv),
                    "qkv_bias": torch.cat(bias) if all(b is not None for b in bias) else None,
                    "o": w.pop(f"{p}self_attn.o_proj.weight"),
                    "gate_up": torch.cat([w.pop(f"{p}mlp.gate_proj.weight"), w.pop(f"{p}mlp.up_proj.weight")]),
                    "down": w.pop(f"{p}mlp.down_proj.weight"),
                    "ln1": w.pop(f"{p}input_layernorm.weight"),
                    "ln2": w.pop(f"{p}post_attention_layernorm.weight"),
                }
            )
        inv = torch.tensor(arch["invFreq"], dtype=torch.float64)
        freqs = torch.outer(torch.arange(context, dtype=torch.float64), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(device=device, dtype=dtype)
        self.sin = emb.sin().to(device=device, dtype=dtype)
        # one more row than there are sequences: the scratch slot padded rows of a CUDA graph write to
        shape = (slots + 1, self.kv_heads, context, self.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.layers)]
        self.graphs = DecodeGraphs(self) if graphs and device.type == "cuda" else None

    @staticmethod
    def kv_bytes_per_token(arch: dict, dtype: torch.dtype) -> int:
        return 2 * arch["layers"] * arch["kvHeads"] * arch["headDim"] * torch.tensor([], dtype=dtype).element_size()

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = self.head_dim // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rot * sin

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if _SDPA is not None:
            return _SDPA(q, k, v, attn_mask=mask)
        s = (q.float() @ k.float().transpose(-1, -2)) * (self.head_dim**-0.5)
        s = s.masked_fill(~mask, float("-inf"))
        return (s.softmax(-1) @ v.float()).to(q.dtype)

    @torch.inference_mode()
    def forward(self, tokens: list[list[int]], starts: list[int], slots: list[int], last: list[int] | None = None) -> torch.Tensor:
        """Rows of T new tokens each at positions starts[b] … starts[b]+T-1 of slots[b] → logits [B, V]
        in fp32 at each row's position `last[b]` (default: the last). Plain lists in: the caller
        knows them, and reading a span back from a GPU tensor would cost a sync. Decode steps
        (T = 1) replay a CUDA graph when graphs are on."""
        if self.graphs is not None and len(tokens[0]) == 1:
            return self.graphs.run(tokens, starts, slots)
        t = lambda xs: torch.tensor(xs, device=self.device)  # noqa: E731
        return self.step(t(tokens), t(starts), t(slots), max(starts) + len(tokens[0]), None if last is None else t(last))

    def step(self, ids: torch.Tensor, starts: torch.Tensor, slots: torch.Tensor, span: int, last: torch.Tensor | None = None) -> torch.Tensor:
        """forward() on device tensors, reading keys 0 … span-1 (positions past a row's own are masked)."""
        B, T = ids.shape
        H, KV, D, G = self.heads, self.kv_heads, self.head_dim, self.group
        pos = starts[:, None] + torch.arange(T, device=self.device)  # [B, T]
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # [B, 1, T, D]
        # query t of row b sees keys j ≤ start[b] + t; queries of one kv head's group share its keys
        visible = torch.arange(span, device=self.device)[None, None, :] <= pos[:, :, None]  # [B, T, S]
        mask = visible.repeat(1, G, 1).unsqueeze(1)  # [B, 1, G*T, S]
        h = self.embed[ids]
        with _attention_backends():
            for i, blk in enumerate(self.blocks):
                x = _rms(h, blk["ln1"], self.eps)
                qkv = F.linear(x, blk["qkv"], blk["qkv_bias"])
                q, k, v = qkv.split([H * D, KV * D, KV * D], dim=-1)
                q = self._rope(q.view(B, T, H, D).transpose(1, 2), cos, sin)
                k = self._rope(k.view(B, T, KV, D).transpose(1, 2), cos, sin)
                v = v.view(B, T, KV, D)
                kc, vc = self.k[i], self.v[i]
                kc[slots[:, None], :, pos] = k.transpose(1, 2)
                vc[slots[:, None], :, pos] = v
                keys, values = kc[slots, :, :span], vc[slots, :, :span]  # [B, KV, S, D]
                o = self._attend(q.reshape(B, KV, G * T, D), keys, values, mask)
                o = o.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)
                h = h + F.linear(o, blk["o"])
                x = _rms(h, blk["ln2"], self.eps)
                gate, up = F.linear(x, blk["gate_up"]).chunk(2, dim=-1)
                h = h + F.linear(F.silu(gate) * up, blk["down"])
        h = h[:, -1] if last is None else h[torch.arange(B, device=self.device), last]
        return F.linear(_rms(h, self.norm, self.eps), self.lm_head).float()


def _buckets(limit: int, first: int) -> list[int]:
    """first, 2·first, 4·first … and limit itself (the last bucket)."""
    out, b = [], first
    while b < limit:
        out.append(b)
        b *= 2
    return out + [limit]


class DecodeGraphs:
    """CUDA graphs of the decode step, one per (batch bucket, key-span bucket), captured on first use.

    Eager PyTorch launches ~30 kernels per layer from Python: a 1.5B decode step took ~15 ms on an
    H100 at any batch size while the GPU worked ~4 ms. A replay launches them all at once. A batch is
    padded up to its bucket with rows that write to the cache's scratch slot; keys are read up to the
    span bucket and the mask hides the ones past each row's position."""

    def __init__(self, model: DenseDecoder):
        self.m = model
        self.batches = _buckets(model.slots, 1)
        self.spans = _buckets(model.context, min(256, model.context))
        self.inputs: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = None

    def run(self, tokens: list[list[int]], starts: list[int], slots: list[int]) -> torch.Tensor:
        n = len(tokens)
        bb = next(b for b in self.batches if b >= n)
        span = next(s for s in self.spans if s >= max(starts) + 1)
        graph, out = self.graphs.get((bb, span)) or self._capture(bb, span)
        ids, st, sl = self.inputs[bb]
        pad = bb - n
        ids.copy_(torch.tensor([t[0] for t in tokens] + [0] * pad).view(bb, 1))
        st.copy_(torch.tensor(starts + [0] * pad))
        sl.copy_(torch.tensor(slots + [self.m.slots] * pad))
        graph.replay()
        return out[:n]

    def _capture(self, bb: int, span: int):
        if bb not in self.inputs:
            dev = self.m.device
            self.inputs[bb] = (torch.zeros(bb, 1, dtype=torch.long, device=dev), torch.zeros(bb, dtype=torch.long, device=dev), torch.full((bb,), self.m.slots, dtype=torch.long, device=dev))
        ids, st, sl = self.inputs[bb]
        ids.zero_(), st.zero_(), sl.fill_(self.m.slots)  # warm-up and capture touch only the scratch slot
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.m.step(ids, st, sl, span)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.m.step(ids, st, sl, span)
        self.pool = graph.pool()
        self.graphs[(bb, span)] = (graph, out)
        return graph, out
