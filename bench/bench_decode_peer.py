"""
Decoding beside Hugging Face, in one run (not a test): tokens/s of GPT.generate (temperature-1 sampling with the
log-prob of every token, as the E-step calls it) against transformers' generate on a GPT2LMHeadModel holding the
same weights (written by hf.export_hf), with a dynamic and a static cache, with and without the per-token
scores (output_scores, then compute_transition_scores for the log-probs ours returns). Same prompts, same
threads; the variants take turns, repeatedly, and each reports its median.

Two shapes: the default mathworld model (n_layer 4, n_head 4, n_embd 128, vocab 421, block 256; 64 prompts of
33..40 tokens, 32 new), here with learned positions since GPT-2 has no rotary ones, and GPT-2-124M (8 prompts of
57..64 tokens, 32 new). Prompts are ragged and left-padded on both sides. No stop token: every row decodes all
its new tokens. On a GPU both models hold bf16 weights, and ours also runs with compile_step (CUDA graphs).

    pip install transformers safetensors       # an optional benchmark extra
    python bench/bench_decode_peer.py
    python bench/bench_decode_peer.py --quick  # tiny shapes, a few seconds on CPU
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from hf import export_hf  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

try:
    from transformers import GPT2LMHeadModel
    from transformers.utils.logging import disable_progress_bar
except ImportError:
    sys.exit("bench_decode_peer.py compares against Hugging Face transformers, which is not installed: "
             "pip install transformers safetensors")

p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true", help="tiny shapes, a smoke run")
p.add_argument("--reps", type=int, default=5, help="timed turns of every variant (after one warm-up turn)")
p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for every variant")
args = p.parse_args()
disable_progress_bar()
torch.set_num_threads(args.threads)
cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
dtype = torch.bfloat16 if cuda else torch.float32
sync = torch.cuda.synchronize if cuda else (lambda: None)

SHAPES = {  # name: (config, prompts, longest prompt, new tokens)
    "default (mathworld)": (GPTConfig(block_size=256, vocab_size=421, n_layer=4, n_head=4, n_embd=128), 64, 40, 32),
    "gpt2-124M": (GPTConfig(block_size=1024, vocab_size=50261, n_layer=12, n_head=12, n_embd=768), 8, 64, 32),
}
if args.quick:
    SHAPES = {"tiny": (GPTConfig(block_size=64, vocab_size=101, n_layer=2, n_head=2, n_embd=64), 8, 16, 8)}
    args.reps = 2
print(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'} | {args.threads} threads | {dtype} weights | "
      f"median of {args.reps} interleaved turns")

for name, (cfg, B, P, new) in SHAPES.items():
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(ours, None, tmp)
        theirs = GPT2LMHeadModel.from_pretrained(tmp).to(device, dtype).eval()
    ours = ours.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(P - 7, P + 1, (B,), generator=g).tolist()
    prompts = [torch.randint(0, cfg.vocab_size, (n,), generator=g).tolist() for n in lengths]
    ids = torch.zeros(B, P, dtype=torch.long)
    mask = torch.zeros(B, P, dtype=torch.long)
    for i, pr in enumerate(prompts):  # left padding, as ours does inside generate
        ids[i, P - len(pr):], mask[i, P - len(pr):] = torch.tensor(pr), 1
    ids, mask = ids.to(device), mask.to(device)

    def run_ours(compile_step=False):
        return lambda: ours.generate(prompts, max_new_tokens=new, temperature=1.0, seed=0, compile_step=compile_step)

    def run_theirs(cache, scores):
        def run():
            # top_k=0, top_p=1.0: plain sampling from softmax(logits), as ours
            out = theirs.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=True, temperature=1.0,
                                  top_k=0, top_p=1.0, pad_token_id=0, cache_implementation=cache,
                                  output_scores=scores, return_dict_in_generate=scores)
            if scores:  # the log-prob of each sampled token, which ours returns
                theirs.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).tolist()
        return run

    variants = {"ours: GPT.generate, log-probs": run_ours()}
    if cuda:
        variants["ours: GPT.generate, log-probs, compile_step"] = run_ours(compile_step=True)
    variants.update({
        "HF generate, dynamic cache": run_theirs(None, False),
        "HF generate, dynamic cache, scores": run_theirs(None, True),
        "HF generate, static cache": run_theirs("static", False),
        "HF generate, static cache, scores": run_theirs("static", True),
    })
    times = {v: [] for v in variants}
    with torch.no_grad():
        for turn in range(args.reps + 1):  # turn 0 warms up (allocator, kernels, compilation)
            for v, fn in variants.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if turn > 0:
                    times[v].append(time.perf_counter() - t0)
    print(f"\n{name}: n_layer {cfg.n_layer} n_head {cfg.n_head} n_embd {cfg.n_embd} vocab {cfg.vocab_size} | "
          f"{B} prompts of {min(lengths)}..{max(lengths)} tokens, {new} new tokens each")
    base = B * new / statistics.median(times["ours: GPT.generate, log-probs"])
    for v, ts in times.items():
        tps = B * new / statistics.median(ts)
        print(f"  {v:45s} {tps:12,.0f} tokens/s   ours/this {base / tps:5.2f}", flush=True)
