"""
Benchmark of train.py's training step (not a test): tokens/s and MFU for the GPT-2-124M preset and the default
mathworld preset, on a bin of random tokens, after warm-up steps (torch.compile and the allocator settle there).
It calls train.py's own pieces (presets, batches from a memmapped bin with pinned copies, fused AdamW) and its
step, train_step: bf16 autocast, micro-steps with gradient accumulation, clipping, no host sync until the timer stops.

    python bench/bench_train.py                  # on a GPU: bf16 autocast + torch.compile
    python bench/bench_train.py --quick          # a tiny smoke run on CPU
    python bench/bench_train.py --compile=False  # without torch.compile
"""
import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.files import BinWriter  # noqa: E402
from common import estimate_mfu, flops_per_token  # noqa: E402
from train import batches, build_model, make_optimizer, resolve, train_step  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true")
p.add_argument("--warmup", type=int, default=10)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
args = p.parse_args()
cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"
use_compile = cuda if args.compile is None else args.compile
ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
torch.set_float32_matmul_precision("high")  # TF32, as train.py
VOCAB = {"byte": 261, "mathworld": 421, "gpt2": 50261}  # tokenizer sizes (the gpt2 BPE files are not needed for random tokens)

PRESETS = {"gpt2-124M": ("config/train_gpt2_124m.py", {}),
           "default (mathworld)": ("config/train_mathworld.py", {"tokenizer": "mathworld"})}
if args.quick:
    PRESETS = {"tiny (cpu smoke)": ("config/train_cpu_smoke.py", {"grad_accum": 2})}
    args.warmup, args.steps = 2, 5
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} | torch {torch.__version__} | "
      f"dtype {'bfloat16 autocast' if cuda else 'float32'} | compile {use_compile} | TF32 on | "
      f"fused AdamW {cuda} | {args.warmup} warm-up + {args.steps} timed steps")

for name, (preset, extra) in PRESETS.items():
    with tempfile.TemporaryDirectory() as tmp:
        cfg = resolve(os.path.join(root, preset), **extra)
        B, A, T, V = cfg["batch_size"], cfg["grad_accum"], cfg["block_size"], VOCAB[cfg["tokenizer"]]
        # a bin of random tokens, written like any other (so get_batch reads it through a memmap)
        path = os.path.join(tmp, "random.bin")
        w = BinWriter(path, SimpleNamespace(name=cfg["tokenizer"], n_vocab=V))
        w.write(np.random.default_rng(0).integers(0, V, size=max(4 * B * (T + 1), 2_000_000)))
        w.close()
        cfg = {**cfg, "train_bins": [path]}
        torch.manual_seed(0)
        model = build_model(cfg, SimpleNamespace(name=cfg["tokenizer"], n_vocab=V)).to(dev)  # the preset's model
        optimizer = make_optimizer(model, cfg, "cuda" if cuda else "cpu")
        step_model = torch.compile(model) if use_compile else model
        data = batches(cfg, [1.0], 0, 0, dev)
        batch, loss = next(data), None

        def step():  # train.py's own step: micro-steps, clipping, AdamW
            global batch, loss
            loss, batch = train_step(step_model, optimizer, data, batch, cfg, ctx)

        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step()
        loss.item()  # sync: the warm-up (and compilation) is done
        t_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        loss.item()  # the only sync of the timed loop
        dt = time.perf_counter() - t0
        tps = args.steps * B * A * T / dt
        mfu = estimate_mfu(model, tps, T)
        print(f"{name}: {model.get_num_params() / 1e6:.1f}M params, n_layer {cfg['n_layer']} n_head {cfg['n_head']} "
              f"n_embd {cfg['n_embd']} T {T} vocab {V}, batch {B} x grad_accum {A} = {B * A * T:,} tokens/step | "
              f"{dt / args.steps * 1000:.1f} ms/step | {tps:,.0f} tokens/s | "
              f"{flops_per_token(model, T) * tps / 1e12:.1f} TFLOP/s | MFU {'-' if mfu is None else f'{100 * mfu:.1f}%'}"
              f" | warm-up {t_warm:.1f} s | final loss {loss.item() / A:.3f}", flush=True)
        del model, step_model, optimizer
        if cuda:
            torch.cuda.empty_cache()
