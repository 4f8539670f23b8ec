"""
Benchmark of model.py (not a test): decode tokens/s of batched KV-cache sampling, and prefill / teacher-forced
scoring tokens/s, for the GPT-2-124M shape and the default embedded-corpus model. bench/bench_decode_peer.py puts
decoding beside Hugging Face's generate.

    python bench/bench_model.py            # on a GPU: bf16 autocast
    python bench/bench_model.py --quick    # a tiny smoke run on CPU
"""
import argparse
import os
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import GPT, GPTConfig  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true")
args = p.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else nullcontext()
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

SHAPES = {  # name: (config, prompts, prompt length, new tokens, samples per prompt)
    "gpt2-124M": (GPTConfig(block_size=1024, vocab_size=50261, n_layer=12, n_head=12, n_embd=768), 64, 256, 256, 4),
    "default (mathworld)": (GPTConfig(block_size=512, vocab_size=261, n_layer=6, n_head=6, n_embd=384), 512, 200, 160, 4),
}
if args.quick:
    SHAPES = {"tiny": (GPTConfig(block_size=128, vocab_size=261, n_layer=2, n_head=2, n_embd=64), 8, 32, 32, 2)}


def timed(fn, reps=3):
    fn()  # warm-up (allocator, kernels)
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps


for name, (cfg, n_prompts, plen, new, K) in SHAPES.items():
    torch.manual_seed(0)
    model = GPT(cfg).to(device).eval()
    g = torch.Generator().manual_seed(0)
    lens = torch.randint(plen // 2, plen + 1, (n_prompts,), generator=g).tolist()  # ragged
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
    with ctx:
        # no stop tokens: every row decodes exactly `new` tokens, so tokens/s is well defined
        dt = timed(lambda: model.generate(prompts, num_samples=K, max_new_tokens=new, temperature=1.0, seed=0), 2)
        dec = n_prompts * K * new / dt
        seqs = [p + torch.randint(0, cfg.vocab_size, (new,), generator=g).tolist() for p in prompts[:64]]
        dt_s = timed(lambda: model.score(seqs, [len(p) for p in prompts[:64]]))
        sc = sum(map(len, seqs)) / dt_s
        idx = torch.randint(0, cfg.vocab_size, (32, plen), device=device)
        dt_p = timed(lambda: model(idx, last_only=True))
        pre = idx.numel() / dt_p
    print(f"{name:22s} {device}: decode (KV cache, {n_prompts}x{K} rows) {dec:12,.0f} tok/s | "
          f"prefill {pre:12,.0f} tok/s | score {sc:12,.0f} tok/s", flush=True)
