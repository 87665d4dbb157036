"""Baseline for bench/torch-engine.ts: the same loads through transformers' generate() (eager PyTorch,
its default attention), printed as one JSON document.

  python3 bench/hf_generate.py --model DIR [--prompt 128] [--decode 128] [--batches 1,8,32,64]

Per batch size B: B random prompts (same length, no padding) generated together, greedy, exactly
--decode new tokens (min_new_tokens = max_new_tokens); TTFT is a separate generate() of one token.
One warm-up run first. CUDA is synchronised around every timing."""

import argparse
import json
import time

import torch
import transformers
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompt", type=int, default=128)
ap.add_argument("--decode", type=int, default=128)
ap.add_argument("--batches", default="1,8,32,64")
a = ap.parse_args()

model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16).cuda().eval()
g = torch.Generator().manual_seed(1)


def timed(ids: torch.Tensor, n: int) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    torch.cuda.synchronize()
    assert out.shape[1] == ids.shape[1] + n
    return time.perf_counter() - t0


def ids_for(b: int) -> torch.Tensor:
    return torch.randint(0, 32000, (b, a.prompt), generator=g).cuda()


timed(ids_for(1), 8)  # warm-up
results = []
for b in [int(x) for x in a.batches.split(",")]:
    ttft = timed(ids_for(b), 1)
    wall = timed(ids_for(b), a.decode)
    results.append({"batch": b, "wallS": round(wall, 3), "outputTokPerS": round(b * a.decode / wall), "ttftMs": round(ttft * 1000, 3), "msPerDecodeStep": round((wall - ttft) / (a.decode - 1) * 1000, 3)})
print(json.dumps({"bench": "hf-generate", "model": a.model, "transformers": transformers.__version__, "torch": torch.__version__, "promptTokens": a.prompt, "decodeTokens": a.decode, "results": results}, indent=2))
