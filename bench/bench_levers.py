"""
The speed levers of a CPU, one at a time (not a test): a training step of the default model (train.py's own step on
random tokens) as float32 with the tanh or the erf GELU, under bf16 autocast, and compiled; then the two kernels
they differ in (GELU forward + backward, the sampler's noise). Each variant is timed in turns with the others,
median of its steps, so a busy machine slows them alike. Prints what this CPU has (AVX2, AVX-512, AMX, bf16).

    python bench/bench_levers.py                 # 2 threads (the machine's cores), about 3 minutes
    python bench/bench_levers.py --compile       # also torch.compile (adds a minute of compilation)
"""
import argparse
import os
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import GPT, GPTConfig  # noqa: E402
from train import make_optimizer, resolve  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=torch.get_num_threads())
p.add_argument("--steps", type=int, default=15, help="timed steps of each variant, in turns")
p.add_argument("--compile", action="store_true")
args = p.parse_args()
torch.set_num_threads(args.threads)
print(f"torch {torch.__version__} | {args.threads} threads | CPU capability {torch.backends.cpu.get_cpu_capability()} | "
      f"bf16 matrix units (mkldnn): {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")

cfg = resolve(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config/train_mathworld.py"))
B, T, V = cfg["batch_size"], cfg["block_size"], 421  # the mathworld tokenizer's size
shape = {k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "rope_theta")}
variants = {"float32, tanh GELU (default)": ("gelu", nullcontext, False), "float32, erf GELU": ("gelu_exact", nullcontext, False),
            "bf16 autocast, erf GELU": ("gelu_exact", lambda: torch.autocast("cpu", dtype=torch.bfloat16), False)}
if args.compile:
    variants["float32, erf GELU, compiled"] = ("gelu_exact", nullcontext, True)
x, y = torch.randint(0, V, (2, B, T), generator=torch.Generator().manual_seed(0))
steps = {}
for name, (mlp, ctx, comp) in variants.items():
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=T, vocab_size=V, mlp=mlp, **shape))
    opt, fwd = make_optimizer(m, cfg, "cpu"), torch.compile(m) if comp else m

    def step(fwd=fwd, opt=opt, ctx=ctx):
        with ctx():
            _, loss = fwd(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    step(), step()  # warm-up (compilation)
    print(f"  warm-up of {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    steps[name] = step
times = {k: [] for k in steps}
for _ in range(args.steps):
    for k, step in steps.items():
        t0 = time.perf_counter()
        step()
        times[k].append(time.perf_counter() - t0)
print(f"training step of the default model ({B} x {T} tokens), median of {args.steps}:")
for k, ts in times.items():
    print(f"  {k:34s} {statistics.median(ts) * 1000:8.1f} ms  {B * T / statistics.median(ts):9,.0f} tokens/s")


def median_ms(f, n=30):
    f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000


h = torch.randn(B * T, 4 * cfg["n_embd"], requires_grad=True)
for form in ("tanh", "none"):
    fb = lambda: F.gelu(h, approximate=form).sum().backward()
    print(f"GELU ({'erf' if form == 'none' else 'tanh'} form) on {tuple(h.shape)}: forward {median_ms(lambda: F.gelu(h, approximate=form)):.2f} ms, "
          f"forward + backward {median_ms(fb):.2f} ms")
lp, g = torch.randn(512, 448).log_softmax(-1), torch.Generator().manual_seed(0)
print(f"sampling noise for 512 rows x 448 logits: exponential_ {median_ms(lambda: torch.empty_like(lp).exponential_(1, generator=g)):.2f} ms, "
      f"-log U {median_ms(lambda: torch.rand(lp.shape, generator=g).log_().neg_()):.2f} ms")
