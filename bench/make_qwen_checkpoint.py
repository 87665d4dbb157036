"""Writes a random-weight checkpoint shaped like DeepSeek-R1-Distill-Qwen-1.5B (or --small) for the torch
worker's benchmarks: config.json, model.safetensors (bf16, seeded normal × 0.02, norms 1), and the
tokenizer files of a given model directory (tiny-r1's: the benchmarks feed token ids, the tokenizer
only has to load). Usage: python3 bench/make_qwen_checkpoint.py OUT_DIR TOKENIZER_DIR"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

out, tok = sys.argv[1], sys.argv[2]
cfg = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
    "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 131072, "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
    "hidden_act": "silu", "torch_dtype": "bfloat16", "bos_token_id": 2041, "eos_token_id": 2042,  # tiny-r1 tokenizer ids
}
os.makedirs(out, exist_ok=True)
H, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
D = H // cfg["num_attention_heads"]
KV = cfg["num_key_value_heads"] * D
g = torch.Generator(device="cuda").manual_seed(0)
w = {}
def rnd(*shape):
    return (torch.randn(*shape, generator=g, device="cuda", dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()
w["model.embed_tokens.weight"] = rnd(V, H)
w["lm_head.weight"] = rnd(V, H)
w["model.norm.weight"] = torch.ones(H, dtype=torch.bfloat16)
for i in range(L):
    p = f"model.layers.{i}."
    w[p + "self_attn.q_proj.weight"], w[p + "self_attn.q_proj.bias"] = rnd(H, H), rnd(H)
    w[p + "self_attn.k_proj.weight"], w[p + "self_attn.k_proj.bias"] = rnd(KV, H), rnd(KV)
    w[p + "self_attn.v_proj.weight"], w[p + "self_attn.v_proj.bias"] = rnd(KV, H), rnd(KV)
    w[p + "self_attn.o_proj.weight"] = rnd(H, H)
    w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"], w[p + "mlp.down_proj.weight"] = rnd(I, H), rnd(I, H), rnd(H, I)
    w[p + "input_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
    w[p + "post_attention_layernorm.weight"] = torch.ones(H, dtype=torch.bfloat16)
save_file(w, f"{out}/model.safetensors", metadata={"format": "pt"})
json.dump(cfg, open(f"{out}/config.json", "w"), indent=1)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f"{tok}/{f}", f"{out}/{f}")
print(json.dumps({"params": sum(t.numel() for t in w.values()), "dir": out}))
