"""Continuous batching over the slot KV cache: sequences join between steps and leave when they
finish. A step is one decode token for every sequence already generating, then prompt chunks of the
oldest sequences still prefilling, up to a token budget; each step's tokens go out as one flush."""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

import torch

from .model import DenseDecoder
from .sampling import Drawn, MaskCache, RowState
from .wire import Wire


class Seq:
    __slots__ = ("id", "prompt", "slot", "filled", "max_tokens", "stop_ids", "sampler", "generated", "next", "constrained", "start_after", "dropped")

    def __init__(self, sid: int, prompt: list[int], max_tokens: int, stop_ids: list[int], sampler: RowState, constraint: dict | None):
        self.id, self.prompt, self.slot, self.filled = sid, prompt, -1, 0
        self.max_tokens, self.stop_ids, self.sampler = max_tokens, set(stop_ids), sampler
        self.generated, self.next = 0, -1
        # response_format: the gateway checks each token from the one after `startAfterId` (R1's
        # `</think>`; from the first without it) and ends the stream when the value is complete
        self.constrained = constraint is not None and constraint.get("startAfterId") is None
        self.start_after = constraint.get("startAfterId") if constraint is not None else None
        self.dropped = False  # the gateway ended the stream (verdict false); the row leaves after this step


def request_error(code: str, message: str, hint: str) -> dict:
    return {"code": code, "message": message, "hint": hint}


class Engine:
    def __init__(self, model: DenseDecoder, wire: Wire, prefill_chunk: int, next_verdict: Callable[[], list | None], mask_cache: int):
        """`next_verdict` waits for the gateway's next `verdict` and returns its rows (None: the gateway is gone)."""
        self.model, self.wire, self.prefill_chunk, self.next_verdict = model, wire, prefill_chunk, next_verdict
        self.masks = MaskCache(mask_cache, model.vocab, model.device)
        self.waiting: deque[Seq] = deque()
        self.prefilling: deque[Seq] = deque()
        self.decoding: list[Seq] = []
        self.free = list(range(model.slots - 1, -1, -1))
        self.by_id: dict[int, Seq] = {}
        self.counters = {"prefillTokens": 0, "decodeTokens": 0, "prefillMs": 0.0, "decodeMs": 0.0, "decodeSteps": 0, "checks": 0, "checkMs": 0.0, "redraws": 0}

    def busy(self) -> bool:
        return bool(self.prefilling or self.decoding or (self.waiting and self.free))

    def submit(self, sid: int, req: dict) -> None:
        m = self.model
        prompt = req.get("promptIds") or []
        if not prompt:
            return self._fail_id(sid, request_error("DSR_EMPTY_PROMPT", "request has an empty prompt", "send at least one token"))
        if len(prompt) >= m.context:
            return self._fail_id(sid, request_error("DSR_CONTEXT_OVERFLOW", f"prompt of {len(prompt)} tokens does not fit the worker context of {m.context} tokens", "shorten the prompt or raise --max-model-len"))
        bad = next((t for t in prompt if not isinstance(t, int) or t < 0 or t >= m.vocab), None)
        if bad is not None:
            return self._fail_id(sid, request_error("DSR_BAD_TOKEN", f"prompt token id {bad} is outside the vocabulary (0..{m.vocab - 1})", "tokenize with the model's own tokenizer"))
        max_tokens = max(0, min(int(req.get("maxTokens", 0)), m.context - len(prompt)))
        if max_tokens == 0:
            self.wire.queue({"type": "chunk", "id": sid, "chunk": {"ids": [], "finish": "length"}})
            self.wire.queue({"type": "end", "id": sid})
            return
        stops = req.get("stopIds") or []
        seq = Seq(sid, prompt, max_tokens, stops, RowState(req.get("sampling") or {}, prompt, m.vocab, m.device, stops), req.get("constraint"))
        self.by_id[sid] = seq
        self.waiting.append(seq)

    def cancel(self, sid: int) -> None:
        seq = self.by_id.get(sid)
        if seq is not None:
            self._finish(seq, {"ids": [], "finish": "abort"})

    def close(self) -> None:
        for seq in list(self.by_id.values()):
            self._finish(seq, {"ids": [], "finish": "abort"})

    def _fail_id(self, sid: int, err: dict) -> None:
        self.wire.queue({"type": "error", "id": sid, "error": err})

    def _finish(self, seq: Seq, chunk: dict) -> None:
        self.wire.queue({"type": "chunk", "id": seq.id, "chunk": chunk})
        self.wire.queue({"type": "end", "id": seq.id})
        self._release(seq)

    def _emit(self, seq: Seq, token: int, logprob: dict | None) -> None:
        if seq.dropped:
            return self._finish(seq, {"ids": [], "finish": "abort"})
        if token in seq.stop_ids:
            return self._finish(seq, {"ids": [], "finish": "stop", "stopId": token})
        seq.generated += 1
        seq.next = token
        if seq.start_after is not None and token == seq.start_after:
            seq.constrained, seq.start_after = True, None
        chunk = {"ids": [token]}
        if logprob is not None:
            chunk["logprobs"] = [logprob]
        if seq.generated >= seq.max_tokens:
            chunk["finish"] = "length"
            return self._finish(seq, chunk)
        self.wire.queue({"type": "chunk", "id": seq.id, "chunk": chunk})

    @torch.inference_mode()
    def step(self) -> None:
        while self.waiting and self.free:
            seq = self.waiting.popleft()
            seq.slot = self.free.pop()
            self.prefilling.append(seq)
        # decode first: the rows generating now must not wait behind a long prompt. Their tokens are
        # drawn now and made final after the prompts' forward, so that the gateway checks the
        # constrained ones (response_format) while it runs.
        decode = None
        if self.decoding:
            rows = list(self.decoding)
            t0 = time.perf_counter()
            logits = self.model.forward([[s.next] for s in rows], [s.filled for s in rows], [s.slot for s in rows])
            decode = (rows, self._draw(logits, rows))
            self.counters["decodeMs"] += (time.perf_counter() - t0) * 1000
        # prompts take a token budget per step: small beside decoding rows (it bounds their wait),
        # larger when nothing decodes. Chunks of several prompts go in one forward, padded to the
        # longest; the padding's keys land past each prompt, where its own next tokens overwrite
        # them before anything reads them.
        budget = self.prefill_chunk * (1 if self.decoding else 4)
        padded_cap = 2 * budget  # rows × the longest chunk: bounds the padding's waste
        rows, chunks = [], []
        for seq in self.prefilling:
            n = min(budget, len(seq.prompt) - seq.filled)
            if n <= 0 or (rows and max(chunks + [n]) * (len(rows) + 1) > padded_cap):
                break
            if rows and max(s.filled for s in rows + [seq]) + max(chunks + [n]) > self.model.context:
                break  # some row's padding would run past the cache; this one goes first next step
            rows.append(seq)
            chunks.append(n)
            budget -= n
        prompts = None
        if rows:
            t0 = time.perf_counter()
            T = max(chunks)
            tokens = [s.prompt[s.filled : s.filled + n] + [0] * (T - n) for s, n in zip(rows, chunks)]
            logits = self.model.forward(tokens, [s.filled for s in rows], [s.slot for s in rows], last=[n - 1 for n in chunks])
            done = []
            for i, (s, n) in enumerate(zip(rows, chunks)):
                s.filled += n
                self.counters["prefillTokens"] += n
                if s.filled == len(s.prompt):
                    done.append(i)
            if done:
                done_rows = [rows[i] for i in done]
                prompts = (done_rows, self._draw(logits[done], done_rows))
            elif self.model.device.type == "cuda":
                torch.cuda.synchronize()  # so prefillMs measures the chunk, not its launch
            self.counters["prefillMs"] += (time.perf_counter() - t0) * 1000
        if decode is not None:
            t0 = time.perf_counter()
            ids, lps = self._final(*decode)
            self.counters["decodeMs"] += (time.perf_counter() - t0) * 1000
            self.counters["decodeTokens"] += len(decode[0])
            self.counters["decodeSteps"] += 1
            for s, t, lp in zip(decode[0], ids, lps):
                s.filled += 1
                self._emit(s, t, lp)
        if prompts is not None:
            for s, t, lp in zip(prompts[0], *self._final(*prompts)):
                self.prefilling.remove(s)
                self.decoding.append(s)
                self._emit(s, t, lp)

    def _draw(self, logits: torch.Tensor, rows: list[Seq]) -> Drawn:
        """Draws the rows' tokens; the constrained ones go to the gateway at once (`check`), and
        _final() takes its verdict. One round trip per check, overlapped with whatever runs between."""
        constrained = [i for i, s in enumerate(rows) if s.constrained]
        d = Drawn(logits, [s.sampler for s in rows], constrained)
        if constrained:
            self.wire.queue({"type": "check", "rows": [x for i in constrained for x in (rows[i].id, d.ids[i])]})
            self.wire.flush()
        return d

    def _final(self, rows: list[Seq], d: Drawn) -> tuple[list[int], list[dict | None]]:
        if not d.constrained:
            return d.finish()
        checked = [rows[i] for i in d.constrained]
        t0 = time.perf_counter()
        verdicts = self.next_verdict()  # verdicts come in the order the checks went out
        self.counters["checks"] += 1
        self.counters["checkMs"] += (time.perf_counter() - t0) * 1000
        if verdicts is None or len(verdicts) != len(checked):
            verdicts = [False] * len(checked)  # the gateway is gone: nothing will read these rows
        resolved = []
        for s, v in zip(checked, verdicts):
            v = self.masks.resolve(v)
            if v is False:
                s.dropped = True
            elif v is not True:
                self.counters["redraws"] += 1
            resolved.append(v)
        return d.finish(resolved)

    def stats(self) -> dict:
        m = self.model
        used = sum(s.filled for s in self.by_id.values() if s.slot >= 0)
        return {
            "running": len(self.prefilling) + len(self.decoding),
            "waiting": len(self.waiting),
            "kvUsedTokens": used,
            "kvCapacityTokens": m.slots * m.context,
            "maxContext": m.context,
        }

    def fail_all(self, err: dict) -> None:
        """A step raised (out of memory, a CUDA error): its sequences end with the error; the worker lives on."""
        for seq in list(self.by_id.values()):
            self._fail_id(seq.id, err)
            self._release(seq)

    def _release(self, seq: Seq) -> None:
        self.by_id.pop(seq.id, None)
        for q in (self.waiting, self.prefilling):
            if seq in q:
                q.remove(seq)
        if seq in self.decoding:
            self.decoding.remove(seq)
        if seq.slot >= 0:
            self.free.append(seq.slot)
            seq.slot = -1
