"""dsr's PyTorch token worker: `dsr serve --engine torch` runs `python3 -m dsr_worker --socket PATH`.

The gateway owns text (tokenizer, chat template, stop strings, reasoning split); this process owns
the weights, the KV cache, batching and sampling, and answers in token ids. The wire protocol is
docs/worker-protocol.md.
"""

PROTOCOL = 2  # 2: check/verdict for response_format
