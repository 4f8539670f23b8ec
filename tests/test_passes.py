"""The M-step's reading of its corpus as the official loader reads it (data/files.py: build_passes_bin, train.py
sampler="passes"): every document once per pass in a shuffled order, the prior / posterior coin tossed anew for
every pass (or frozen, the ablation), a raw mix per document, and windows read front to back, exactly resumable."""
import re

import numpy as np
import pytest

from data.files import build_augmented_bin, build_passes_bin, build_raw_bin, open_bin, write_chunks, write_jsonl
from data.latent import augmented_document, raw_document
from data.tokenizer import get_tokenizer
from train import get_batch, train

TOK = get_tokenizer("byte")


@pytest.fixture
def corpus(tmp_path):
    docs = [(f"d{i}", [f"Problem {i}: {j} + {i}. " for j in range(3)]) for i in range(12)]
    chunks, thoughts = str(tmp_path / "c.chunks.jsonl"), str(tmp_path / "c.thoughts.jsonl")
    write_chunks(chunks, docs)
    write_jsonl(thoughts, ({"id": f"d{i}:{j}", "thought": f"{j}+{i}={i + j}"} for i in range(12) for j in range(3)))
    return tmp_path, chunks, thoughts, docs


def split_docs(ids):
    """A bin's documents, each ending with <|endoftext|>."""
    ends = np.nonzero(np.asarray(ids) == TOK.eot)[0]
    return [list(map(int, ids[a + 1 if k else 0:b + 1])) for k, (a, b) in enumerate(zip([-1, *ends[:-1]], ends))]


def all_coins(doc_texts, thoughts, seeds):
    """Every augmented spelling of a document over a set of coin seeds."""
    return {tuple(augmented_document(TOK, doc_texts, thoughts, s)) for s in seeds}


def test_each_pass_reads_every_document_once_with_fresh_coins(corpus):
    d, chunks, thoughts, docs = corpus
    one = build_augmented_bin(TOK, chunks, thoughts, str(d / "one.bin"), seed=5)
    info = build_passes_bin(TOK, [(chunks, thoughts)], str(d / "p.bin"), seed=5, min_tokens=3 * one["tokens"] + 1)
    got = split_docs(open_bin(str(d / "p.bin")))
    assert info["passes"] == 4 and len(got) == 4 * len(docs)
    frozen = split_docs(open_bin(str(d / "one.bin")))
    by_pass = [got[p * len(docs):(p + 1) * len(docs)] for p in range(4)]
    # each pass is a permutation of the corpus, and the passes are in different orders
    strip = lambda ids: re.search(r"Problem (\d+):", TOK.decode([t for t in ids if t < 256])).group(1)  # its doc
    for part in by_pass:
        assert sorted(map(strip, part)) == sorted(map(strip, frozen))
    assert len({tuple(map(strip, part)) for part in by_pass}) == 4
    # a chunk is written in both orders over the passes (36 chunks x 4 passes: all in one order has odds 2^-36 x 36)
    orders = {}
    for part in by_pass:
        for ids in part:
            prior = [ids[i + 1] == TOK.prior for i in np.nonzero(np.asarray(ids) == TOK.sol)[0]
                     if ids[i + 1] in (TOK.prior, TOK.eol)]  # the <SOL> that opens each chunk
            for n, p in enumerate(prior):
                orders.setdefault((strip(ids), n), set()).add(p)
    assert sum(len(o) == 2 for o in orders.values()) > len(orders) // 2


def test_frozen_coins_are_the_one_pass_bin_reshuffled(corpus):
    d, chunks, thoughts, _ = corpus
    build_augmented_bin(TOK, chunks, thoughts, str(d / "one.bin"), seed=3)
    frozen = sorted(map(tuple, split_docs(open_bin(str(d / "one.bin")))))
    build_passes_bin(TOK, [(chunks, thoughts)], str(d / "p.bin"), seed=3, min_tokens=2 * len(open_bin(str(d / "one.bin"))),
                     coin="frozen")
    got = split_docs(open_bin(str(d / "p.bin")))
    assert sorted(map(tuple, got[:len(frozen)])) == frozen and sorted(map(tuple, got[len(frozen):])) == frozen


def test_raw_parts_and_a_full_raw_mix_are_the_raw_documents(corpus):
    d, chunks, thoughts, docs = corpus
    build_raw_bin(TOK, chunks, str(d / "raw.bin"))
    raw = sorted(map(tuple, split_docs(open_bin(str(d / "raw.bin")))))
    for name, parts, mix in (("a.bin", [(chunks, None)], 0.0), ("b.bin", [(chunks, thoughts)], 1.0)):
        build_passes_bin(TOK, parts, str(d / name), seed=0, min_tokens=1, raw_mix=mix)
        assert sorted(map(tuple, split_docs(open_bin(str(d / name))))) == raw
    # half: some documents raw, the others augmented, counted per document
    build_passes_bin(TOK, [(chunks, thoughts)], str(d / "h.bin"), seed=0, min_tokens=20000, raw_mix=0.5)
    got = split_docs(open_bin(str(d / "h.bin")))
    n_raw = sum(tuple(g) in set(raw) for g in got)
    assert 0.3 < n_raw / len(got) < 0.7
    assert tuple(raw_document(TOK, "".join(docs[0][1]))) in set(raw)


def test_same_seed_same_bytes_and_bad_settings_are_errors(corpus):
    d, chunks, thoughts, _ = corpus
    for name in ("x.bin", "y.bin"):
        build_passes_bin(TOK, [(chunks, thoughts)], str(d / name), seed=9, min_tokens=5000)
    assert (d / "x.bin").read_bytes() == (d / "y.bin").read_bytes()
    with pytest.raises(ValueError, match="coin must be"):
        build_passes_bin(TOK, [(chunks, thoughts)], str(d / "z.bin"), seed=0, min_tokens=1, coin="fresh")
    with pytest.raises(ValueError, match="raw_mix"):
        build_passes_bin(TOK, [(chunks, thoughts)], str(d / "z.bin"), seed=0, min_tokens=1, raw_mix=1.5)
    write_jsonl(str(d / "few.jsonl"), [{"id": "d0:0", "thought": "x"}])
    with pytest.raises(ValueError, match="no thought for chunk d0:1"):
        build_passes_bin(TOK, [(chunks, str(d / "few.jsonl"))], str(d / "z.bin"), seed=0, min_tokens=1)
    assert not (d / "z.bin").exists()


def test_passes_sampler_reads_consecutive_windows_over_ranks_and_micro_steps(corpus):
    d, chunks, thoughts, _ = corpus
    build_passes_bin(TOK, [(chunks, thoughts)], str(d / "p.bin"), seed=0, min_tokens=4000)
    data = np.asarray(open_bin(str(d / "p.bin")), dtype=np.int64)
    cfg = dict(batch_size=2, block_size=16, grad_accum=2, seed=0, sampler="passes", tokenizer="byte")
    rows = []
    for step in range(3):
        for micro in range(2):
            for rank in range(2):
                x, y = get_batch(cfg, [str(d / "p.bin")], [1.0], step, micro, rank, world=2)
                assert np.array_equal(x[:, 1:].numpy(), y[:, :-1].numpy())
                rows += list(x.numpy())
    # 24 windows of 16 tokens: the bin's first 384 tokens in order, nothing read twice, nothing skipped
    assert np.array_equal(np.concatenate(rows), data[:24 * 16])


def test_passes_training_resumes_exactly_and_needs_one_bin(corpus):
    d, chunks, thoughts, _ = corpus
    b = str(d / "p.bin")
    build_passes_bin(TOK, [(chunks, thoughts)], b, seed=0, min_tokens=3000)
    kw = dict(train_bins=[b], sampler="passes", max_steps=6, n_layer=1, n_head=2, n_embd=32, block_size=32,
              batch_size=4, device="cpu", compile=False, log_interval=1, ckpt_interval=1000, tokenizer="byte")
    full = train(out_dir=str(d / "full"), **kw)
    train(out_dir=str(d / "part"), stop_after=4, **kw)
    part = train(out_dir=str(d / "part"), **kw)
    import torch
    a, b2 = (torch.load(s["ckpt"], weights_only=False)["model"] for s in (full, part))
    assert all(torch.equal(a[k], b2[k]) for k in a)
    with pytest.raises(ValueError, match="reads ONE bin"):
        train(out_dir=str(d / "two"), **{**kw, "train_bins": [b, b]})
