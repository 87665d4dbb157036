"""A dense decoder (the Qwen2 and Llama layouts of the R1-Distill models) with a slot KV cache.

Each running sequence owns one slot: rows of a [slots, kv_heads, context, head_dim] cache per layer.
forward() takes a batch of (slot, start position, new tokens) and returns the last position's
logits, so one call serves a prompt chunk (one row, many tokens) and a decode step (many rows, one
token each). The architecture numbers and the rotary frequencies arrive already normalised from the
gateway (src/engine/runtime/torch/), which owns config.json parsing.
"""

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
    def __init__(self, arch: dict, w: dict, device: torch.device, dtype: torch.dtype, slots: int, context: int):
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
        shape = (slots, self.kv_heads, context, self.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(self.layers)]

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
    def forward(self, tokens: list[list[int]], starts: list[int], slots: list[int]) -> torch.Tensor:
        """Rows of T new tokens each at positions starts[b] … starts[b]+T-1 of slots[b] → the last
        position's logits [B, V] in fp32. Plain lists in: the caller knows them, and reading a span
        back from a GPU tensor would cost a sync."""
        B, T = len(tokens), len(tokens[0])
        H, KV, D, G = self.heads, self.kv_heads, self.head_dim, self.group
        span = max(starts) + T  # keys 0 … span-1 are read
        ids = torch.tensor(tokens, device=self.device)
        slots = torch.tensor(slots, device=self.device)
        pos = torch.tensor(starts, device=self.device)[:, None] + torch.arange(T, device=self.device)  # [B, T]
        cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)  # [B, 1, T, D]
        # query t of row b sees keys j ≤ start[b] + t; queries of one kv head's group share its keys
        visible = torch.arange(span, device=self.device)[None, None, :] <= pos[:, :, None]  # [B, T, S]
        mask = visible.repeat(1, G, 1).unsqueeze(1)  # [B, 1, G*T, S]
        h = self.embed[ids]
        with _attention_backends():
            h = self._layers(h, B, T, pos, slots, span, cos, sin, mask)
        last = _rms(h[:, -1], self.norm, self.eps)
        return F.linear(last, self.lm_head).float()

    def _layers(self, h, B, T, pos, slots, span, cos, sin, mask):
        H, KV, D, G = self.heads, self.kv_heads, self.head_dim, self.group
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
        return h
