"""
Benchmark of the E-step (sample_thoughts.py), not a test: chunks/s, decode tokens/s, and where the wall time
goes (generate / score / the rest), for the default embedded-corpus model shape with K=4 thoughts of up to
160 tokens. Random weights are fine for throughput (their thoughts stop at <|END_OF_LATENT|> about half the time).

    python bench/bench_estep.py                      # ~2000 synthetic math chunks; on a GPU: bf16 autocast
    python bench/bench_estep.py --ckpt=runs/default/m0/ckpt.pt --chunks=runs/default/data/boot.chunks.jsonl \
        --max_thought_tokens=48                      # em.py's first E-step, as the default run does it
    python bench/bench_estep.py --quick              # a tiny smoke run on CPU
"""
import argparse
import os
import random
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.files import chunk_rows, write_jsonl  # noqa: E402
from data.tokenizer import get_tokenizer  # noqa: E402
from common import save_checkpoint  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402
from sample_thoughts import sample_thoughts  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--quick", action="store_true")
p.add_argument("--byte_model", action="store_true", help="the earlier default: a byte-level 6x384 model and synthetic "
               "chunks of the same shape, as this script generated them before (to compare code versions)")
p.add_argument("--ckpt", default="", help="a checkpoint to use instead of a random model of the default shape")
p.add_argument("--chunks", default="", help="a chunk file to use instead of synthetic chunks")
p.add_argument("--n_docs", type=int, default=1000, help="synthetic documents (2 chunks each)")
p.add_argument("--K", type=int, default=4)
p.add_argument("--max_thought_tokens", type=int, default=160)
p.add_argument("--batch_size", type=int, default=128, help="chunks per generate call")
p.add_argument("--n_prefix", type=int, default=1, help="prefix chunks (em.py's default: 1)")
p.add_argument("--limit", type=int, default=None, help="only the first LIMIT documents of --chunks")
args = p.parse_args()
if args.quick:
    args.n_docs, args.max_thought_tokens, args.batch_size = 20, 32, 16
device = "cuda" if torch.cuda.is_available() else "cpu"
device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def synthetic_chunks(path, n_docs):
    # the embedded corpus's shape: a problem chunk, then a result chunk whose skipped steps are the thought
    rng = random.Random(0)
    rows = []
    for d in range(n_docs):
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        texts = [f"Problem:\nWhat is ({a} + {b}) * {c}?\n", f"Final Answer: {(a + b) * c}\n\n"]
        rows += chunk_rows(f"s{d}", texts)
    write_jsonl(path, rows)


with tempfile.TemporaryDirectory() as tmp:
    ckpt = args.ckpt
    if not ckpt:
        # random weights of the default model's shape (config/train_mathworld.py), or the earlier byte-level default
        tok_name = "byte" if args.byte_model else "mathworld"
        V = get_tokenizer(tok_name).n_vocab
        cfg = GPTConfig(block_size=1024, vocab_size=V, n_layer=6, n_head=6, n_embd=384) if args.byte_model else \
            GPTConfig(block_size=256, vocab_size=V, n_layer=4, n_head=4, n_embd=128, rope_theta=10000.0)
        if args.quick:
            cfg = GPTConfig(block_size=256, vocab_size=V, n_layer=2, n_head=2, n_embd=64)
        torch.manual_seed(0)
        ckpt = os.path.join(tmp, "random.pt")
        save_checkpoint(ckpt, GPT(cfg), tok_name, latent=True, config={})
    chunks = args.chunks
    if not chunks:
        chunks = os.path.join(tmp, "chunks.jsonl")
        synthetic_chunks(chunks, args.n_docs)
    print(f"device: {device_name}; model: {ckpt if args.ckpt else cfg}; chunks: {chunks if args.chunks else 'synthetic'}")
    print(f"K={args.K} max_thought_tokens={args.max_thought_tokens} batch_size={args.batch_size} n_prefix={args.n_prefix} "
          f"{'bf16 autocast' if device == 'cuda' else 'float32'}")
    s = sample_thoughts(ckpt, chunks, os.path.join(tmp, "estep"), K=args.K, max_thought_tokens=args.max_thought_tokens,
                        batch_size=args.batch_size, limit=args.limit, shard_size=1 << 30, n_prefix=args.n_prefix)
    f = s["timing_fractions"]
    print(f"{s['chunks']} chunks in {s['wall_s']:.1f} s: {s['chunks_per_s']:.1f} chunks/s, "
          f"{s['decode_tokens_per_s']:.0f} decode tokens/s (sampled thought tokens per second of generate)")
    print(f"wall time: decode {f['decode']:.1%}, score {f['score']:.1%}, other {f['other']:.1%}; "
          f"truncated samples {s['truncation']:.1%}, mean chosen thought {s['thought_tokens']:.0f} tokens")
