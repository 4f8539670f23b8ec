"""
Training beside nanoGPT, in one run (not a test): tokens/s of one training step (forward, backward, AdamW step)
of this project's GPT against karpathy/nanoGPT's model.py at the same shape, each with its own optimizer setup
(both: AdamW, weight decay on 2-D tensors only, fused on a GPU). Same random batch, same threads; the two take
turns, repeatedly, and each reports its median. nanoGPT's vocabulary is given our padded size (a multiple of 64,
as nanoGPT recommends), so the two models have the same tensors. The default preset uses rotary positions, which
nanoGPT lacks: it is timed as a third line, beside the learned-position model of the same shape.

Shapes: the default mathworld model (n_layer 4, n_head 4, n_embd 128, vocab 421, T 256, batch 8) and GPT-2-124M
(T 256, batch 2 on a CPU; T 1024, batch 16 on a GPU). On a GPU: bf16 autocast and torch.compile for both.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT   # only its model.py is read
    python bench/bench_train_peer.py --nanogpt=/tmp/nanoGPT
    python bench/bench_train_peer.py --nanogpt=/tmp/nanoGPT --quick  # tiny shapes, a few seconds on CPU
"""
import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import GPT, GPTConfig  # noqa: E402
from train import make_optimizer  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--nanogpt", default=os.environ.get("NANOGPT", ""),
               help="a nanoGPT checkout (a directory holding its model.py), or that model.py itself")
p.add_argument("--quick", action="store_true", help="tiny shapes, a smoke run")
p.add_argument("--reps", type=int, default=5, help="timed steps of each model (after the warm-up steps)")
p.add_argument("--warmup", type=int, default=2, help="untimed steps of each model first (compilation settles)")
p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for both models")
p.add_argument("--compile", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
               help="torch.compile both models (default: on a GPU only)")
args = p.parse_args()
path = os.path.join(args.nanogpt, "model.py") if os.path.isdir(args.nanogpt) else args.nanogpt
if not os.path.isfile(path):
    sys.exit("bench_train_peer.py needs nanoGPT's model.py, which is not part of this project: "
             "git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT, then --nanogpt=/tmp/nanoGPT")
spec = importlib.util.spec_from_file_location("nanogpt_model", path)
nanogpt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nanogpt)

torch.set_num_threads(args.threads)
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
use_compile = cuda if args.compile is None else args.compile
ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
sync = torch.cuda.synchronize if cuda else (lambda: None)
OPT = dict(weight_decay=0.1, learning_rate=3e-4, beta1=0.9, beta2=0.95)

SHAPES = {  # name: (n_layer, n_head, n_embd, vocab, T, batch)
    "default (mathworld)": (4, 4, 128, 421, 256, 8),
    "gpt2-124M": (12, 12, 768, 50261, 1024, 16) if cuda else (12, 12, 768, 50261, 256, 2),
}
if args.quick:
    SHAPES = {"tiny": (2, 2, 64, 101, 64, 4)}
    args.reps, args.warmup = 2, 1
print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} | {args.threads} threads | "
      f"{'bf16 autocast' if cuda else 'float32'} | compile {use_compile} | nanoGPT from {path} | "
      f"median of {args.reps} interleaved steps after {args.warmup} warm-up")

for name, (L, H, C, V, T, B) in SHAPES.items():
    torch.manual_seed(0)
    ours = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C)).to(device)
    rope = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, rope_theta=10000.0)).to(device)
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter counts
        theirs = nanogpt.GPT(nanogpt.GPTConfig(block_size=T, vocab_size=ours.padded_vocab, n_layer=L, n_head=H,
                                               n_embd=C, dropout=0.0, bias=True)).to(device)
        models = {"ours": (ours, make_optimizer(ours, OPT, device)),
                  "nanoGPT": (theirs, theirs.configure_optimizers(OPT["weight_decay"], OPT["learning_rate"],
                                                                   (OPT["beta1"], OPT["beta2"]), device))}
    if name != "gpt2-124M":
        models["ours, rotary positions (the default preset)"] = (rope, make_optimizer(rope, OPT, device))
    n_params = {k: sum(p.numel() for p in m.parameters()) for k, (m, _) in models.items()}
    assert n_params["ours"] == n_params["nanoGPT"], n_params  # the same tensors, tied embedding counted once
    x, y = torch.randint(0, V, (2, B, T), generator=torch.Generator().manual_seed(0)).to(device)
    steps = {}
    for k, (m, opt) in models.items():
        fwd = torch.compile(m) if use_compile else m

        def step(fwd=fwd, opt=opt):
            with ctx:
                _, loss = fwd(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[k] = step
    times = {k: [] for k in steps}
    for turn in range(args.warmup + args.reps):
        for k, step in steps.items():
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            if turn >= args.warmup:
                times[k].append(time.perf_counter() - t0)
    print(f"\n{name}: n_layer {L} n_head {H} n_embd {C} vocab {V} (padded {ours.padded_vocab}) | "
          f"{n_params['ours'] / 1e6:.1f}M parameters | batch {B} x T {T} = {B * T:,} tokens/step")
    base = B * T / statistics.median(times["ours"])
    for k, ts in times.items():
        tps = B * T / statistics.median(ts)
        print(f"  {k:45s} {statistics.median(ts) * 1000:9.1f} ms/step {tps:12,.0f} tokens/s   ours/this "
              f"{base / tps:5.2f}", flush=True)
    del models, steps, ours, rope, theirs
    if cuda:
        torch.cuda.empty_cache()
