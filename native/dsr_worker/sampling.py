"""Token sampling for a batch of rows, on the device, with the gateway's semantics
(src/engine/runtime/embedded/sampler.ts): repetition penalty over prompt + output, presence and
frequency penalties over output, then the logit bias and min_tokens; then greedy, or temperature → top-k → min-p → top-p, each cut on
what the previous left; a seeded request draws from its own generator so its tokens do not depend
on the rest of the batch. Logprobs are of the penalised distribution at temperature 1."""

from __future__ import annotations

import base64

import torch


class RowState:
    """What sampling remembers about one sequence."""

    def __init__(self, p: dict, prompt: list[int], vocab: int, device: torch.device, stop_ids: list[int] | None = None):
        self.temperature = float(p.get("temperature", 1.0))
        self.top_p = float(p.get("topP", 1.0))
        self.top_k = int(p.get("topK", 0))
        self.min_p = float(p.get("minP", 0.0))
        self.rep = float(p.get("repetitionPenalty", 1.0))
        self.presence = float(p.get("presencePenalty", 0.0))
        self.frequency = float(p.get("frequencyPenalty", 0.0))
        self.logprobs = p.get("logprobs")
        self.gen = None
        if p.get("seed") is not None:
            self.gen = torch.Generator(device=device)
            self.gen.manual_seed(int(p["seed"]) & 0xFFFFFFFFFFFFFFFF)
        self.seen = self.counts = None
        if self.rep != 1:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt, device=device)] = True
        if self.presence != 0 or self.frequency != 0:
            self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        # vLLM's min_tokens: the stop ids (EOS included) cannot be drawn before that many tokens
        self.min_tokens = int(p.get("minTokens") or 0)
        self.generated = 0
        held = [t for t in stop_ids or [] if 0 <= t < vocab]
        self.stops = torch.tensor(held, dtype=torch.long, device=device) if self.min_tokens and held else None
        # OpenAI's logit_bias, [[id, bias], ...]: added after the penalties
        self.bias = None
        if p.get("logitBias"):
            ids, vals = zip(*p["logitBias"])
            self.bias = (torch.tensor(ids, dtype=torch.long, device=device), torch.tensor(vals, dtype=torch.float32, device=device))

    def accept(self, token: int) -> None:
        self.generated += 1
        if self.seen is not None:
            self.seen[token] = True
        if self.counts is not None:
            self.counts[token] += 1

    def penalise(self, row: torch.Tensor) -> None:
        if self.seen is not None:
            row.copy_(torch.where(self.seen, torch.where(row > 0, row / self.rep, row * self.rep), row))
        if self.counts is not None:
            row.sub_(self.presence * (self.counts > 0).float() + self.frequency * self.counts)
        if self.bias is not None:
            row.index_add_(0, self.bias[0], self.bias[1].to(row.dtype))
        if self.stops is not None and self.generated < self.min_tokens:
            row.index_fill_(0, self.stops, float("-inf"))


def _cut(x: torch.Tensor, rows: list[RowState]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted descending logits / temperature with cut tokens at -inf, and their token ids."""
    t = torch.tensor([r.temperature for r in rows], device=x.device)[:, None]
    vals, idx = torch.sort(x / t, dim=-1, descending=True)
    rank = torch.arange(x.shape[1], device=x.device)[None, :]
    k = torch.tensor([r.top_k if r.top_k > 0 else x.shape[1] for r in rows], device=x.device)[:, None]
    drop = rank >= k
    min_p = torch.tensor([r.min_p for r in rows], device=x.device)[:, None]
    # p ≥ minP·p_max  ⇔  logit ≥ max + ln(minP)
    drop |= (min_p > 0) & (vals < vals[:, :1] + torch.log(min_p.clamp_min(1e-30)))
    vals = vals.masked_fill(drop, float("-inf"))
    top_p = torch.tensor([r.top_p for r in rows], device=x.device)[:, None]
    p = vals.softmax(-1)
    # the shortest prefix whose mass reaches top_p (the first token always stays)
    drop = (p.cumsum(-1) - p >= top_p) & (top_p < 1)
    return vals.masked_fill(drop, float("-inf")), idx


def unpack_mask(bits: str, vocab: int, device: torch.device) -> torch.Tensor:
    """A verdict's base64 bitmask (token i is bit i & 7 of byte i >> 3) → bool [vocab]."""
    raw = torch.frombuffer(bytearray(base64.b64decode(bits)), dtype=torch.uint8).to(device)
    shifts = torch.arange(8, dtype=torch.uint8, device=device)
    return ((raw[:, None] >> shifts) & 1).flatten()[:vocab].bool()


class MaskCache:
    """The masks verdicts name, by id, least recently used first: the gateway keeps the same list by
    the same rule (remote-constraints.ts `held`), so it sends a mask's bits only once."""

    def __init__(self, size: int, vocab: int, device: torch.device):
        self.size, self.vocab, self.device = size, vocab, device
        self.masks: dict[int, torch.Tensor] = {}

    def resolve(self, v):
        """A verdict → True, False, or the bool mask to draw again under."""
        if v is True or v is False:
            return v
        if isinstance(v, list):
            mid, bits = v
            mask = self.masks[mid] = unpack_mask(bits, self.vocab, self.device)
            if len(self.masks) > self.size:
                del self.masks[next(iter(self.masks))]
            return mask
        mask = self.masks.pop(v)
        self.masks[v] = mask
        return mask


def _draw(x: torch.Tensor, rows: list[RowState]) -> torch.Tensor:
    """One token per row of penalised logits: argmax for greedy rows, else temperature and the cuts,
    then a draw (from the row's own generator when it has a seed)."""
    out = x.argmax(-1)
    hot = [i for i, r in enumerate(rows) if r.temperature > 0]
    if hot:
        sel = torch.tensor(hot, device=x.device)
        vals, idx = _cut(x[sel], [rows[i] for i in hot])
        probs = vals.softmax(-1)
        shared = [j for j, i in enumerate(hot) if rows[i].gen is None]
        picks = torch.empty(len(hot), dtype=torch.long, device=x.device)
        if shared:
            s = torch.tensor(shared, device=x.device)
            picks[s] = torch.multinomial(probs[s], 1).squeeze(1)
        for j, i in enumerate(hot):
            if rows[i].gen is not None:
                picks[j] = torch.multinomial(probs[j], 1, generator=rows[i].gen)[0]
        out[sel] = idx.gather(1, picks[:, None]).squeeze(1)
    return out


class Drawn:
    """A batch's tokens, drawn but not final until finish(): the rows listed in `constrained` wait for
    the gateway's verdicts on their tokens (remote-constraints.ts), which the caller may ask for while
    other work runs."""

    def __init__(self, logits: torch.Tensor, rows: list[RowState], constrained: list[int]):
        """logits [B, V] fp32, edited in place by the penalties."""
        for i, r in enumerate(rows):
            r.penalise(logits[i])
        self.logits, self.rows, self.constrained = logits, rows, constrained
        self.out = _draw(logits, rows)
        self.ids: list[int] = self.out.tolist()

    def finish(self, verdicts: list | None = None) -> tuple[list[int], list[dict | None]]:
        """The final token ids and their logprobs. `verdicts`, one per constrained row: True, a bool
        mask to draw again under, or False (the row is being dropped: any token will do). Refused rows
        are drawn again together, as the embedded sampler's accept-or-redraw: greedy gets the best
        allowed token, sampling the cut distribution of what is allowed."""
        logits, rows, out = self.logits, self.rows, self.out
        redo = [(i, v) for i, v in zip(self.constrained, verdicts or ()) if isinstance(v, torch.Tensor)]
        if redo:
            sel = torch.tensor([i for i, _ in redo], device=logits.device)
            allowed = torch.stack([m for _, m in redo])
            out[sel] = _draw(logits[sel].masked_fill(~allowed, float("-inf")), [rows[i] for i, _ in redo])
            self.ids = out.tolist()
        ids = self.ids
        lps: list[dict | None] = [None] * len(rows)
        want = [i for i, r in enumerate(rows) if r.logprobs is not None]
        if want:
            sel = torch.tensor(want, device=logits.device)
            lp = logits[sel].log_softmax(-1)
            n = max(int(rows[i].logprobs) for i in want)
            top_v, top_i = lp.topk(max(n, 1), dim=-1)
            chosen = lp.gather(1, out[sel][:, None]).squeeze(1).tolist()
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for j, i in enumerate(want):
                k = int(rows[i].logprobs)
                lps[i] = {"id": ids[i], "logprob": chosen[j], "top": [{"id": top_i[j][m], "logprob": top_v[j][m]} for m in range(k)]}
        for i, r in enumerate(rows):
            r.accept(ids[i])
        return ids, lps

