"""train.py on CPU with tiny bins: loss falls, a resumed run equals an uninterrupted one, mixing weights are
honoured, batches are a pure function of (seed, step, micro, rank), bad configs / bins / checkpoints are clear
errors, and make_base + init_from starts exactly where the base is."""
import json
import os

import numpy as np
import pytest
import torch

from data.files import BinWriter
from data.tokenizer import get_tokenizer
from train import get_batch, make_base, resolve, train

TINY = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4, device="cpu", compile=False,
            eval_tokens=256, eval_interval=1000, log_interval=1, ckpt_interval=1000, warmup_frac=0.1)


def write_bin(path, docs):
    w = BinWriter(str(path), get_tokenizer("byte"))
    for d in docs:
        w.write(d)
    w.close()
    return str(path)


def text_bin(tmp_path, name="a.bin", text="the cat sat on the mat. "):
    tok = get_tokenizer("byte")
    return write_bin(tmp_path / "d" / name, [tok.encode(text * 12) + [tok.eot]] * 4)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def events(out_dir, kind):
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [e for e in map(json.loads, f) if e["event"] == kind]


def test_loss_falls_on_a_repetitive_bin(tmp_path):
    b = text_bin(tmp_path)
    out = str(tmp_path / "run")
    s = train(out_dir=out, train_bins=[b], val_bins={"a": b}, max_steps=40, learning_rate=1e-2, min_lr=1e-3, **TINY)
    ev = events(out, "eval")
    assert ev[0]["step"] == 0 and ev[-1]["step"] == 40
    assert ev[-1]["val"]["a"] < ev[0]["val"]["a"] - 2.0  # from ~ln(320) to well below: it learned the text
    assert s["val"]["a"] == ev[-1]["val"]["a"] and s["steps"] == 40 and s["tokens"] == 40 * 4 * 32
    assert s["done"] and os.path.exists(s["ckpt"]) and s["latent"] is False
    assert [e["step"] for e in events(out, "train")] == list(range(1, 41))


def test_resumed_run_equals_uninterrupted(tmp_path):
    b = text_bin(tmp_path)
    kw = dict(train_bins=[b], val_bins={"a": b}, max_steps=6, dropout=0.1, **TINY)  # dropout: its RNG resumes too
    full = train(out_dir=str(tmp_path / "full"), **kw)
    part = str(tmp_path / "part")
    s = train(out_dir=part, stop_after=3, **kw)
    ck = torch.load(os.path.join(part, "ckpt.pt"), weights_only=False)
    assert not s["done"] and ck["step"] == 3 and not ck["done"] and ck["optimizer"] is not None
    with pytest.raises(ValueError, match="learning_rate"):  # another config must not continue this run
        train(out_dir=part, **{**kw, "learning_rate": 5e-4})
    # the log is replaced whole on resuming, never rewritten in place (a second name of the old file keeps it)
    log = os.path.join(part, "log.jsonl")
    old_log = open(log).read()
    os.link(log, tmp_path / "old_log.jsonl")
    s = train(out_dir=part, **kw)
    assert s["done"] and s["steps"] == 6
    assert (tmp_path / "old_log.jsonl").read_text() == old_log
    assert same_weights(weights(full["ckpt"]), weights(s["ckpt"]))
    # the training curve is the same too, and the log holds each step once
    loss = lambda d: [(e["step"], e["loss"]) for e in events(d, "train")]
    assert loss(part) == loss(str(tmp_path / "full")) and len(loss(part)) == 6
    # a finished run is not trained again: its summary comes back and the checkpoint is untouched
    mtime = os.path.getmtime(s["ckpt"])
    assert train(out_dir=part, **kw) == s and os.path.getmtime(s["ckpt"]) == mtime


def test_mixing_weights_are_honoured(tmp_path):
    lo = write_bin(tmp_path / "d" / "lo.bin", [list(range(0, 100)) * 3])     # tokens < 100
    hi = write_bin(tmp_path / "d" / "hi.bin", [list(range(100, 200)) * 3])   # tokens >= 100
    cfg = resolve(**{**TINY, "batch_size": 8, "train_bins": [lo, hi]})
    rows = np.concatenate([get_batch(cfg, [lo, hi], [0.8, 0.2], step, 0)[0].numpy() for step in range(200)])
    assert ((rows < 100).all(1) | (rows >= 100).all(1)).all()  # a row never straddles two bins
    frac = (rows[:, 0] < 100).mean()
    assert abs(frac - 0.8) < 0.04, frac  # 1600 rows: 4 standard deviations (0.01 each)
    # windows cover the bin, not one spot
    assert len(np.unique(rows[rows[:, 0] < 100, 0])) > 50


def test_batches_are_a_pure_function_of_seed_step_micro_rank(tmp_path):
    b = text_bin(tmp_path, text="abcdefghijklmnopqrstuvwxyz0123456789")
    cfg = resolve(**{**TINY, "train_bins": [b]})
    x, y = get_batch(cfg, [b], [1.0], 5, 1, 0)
    assert torch.equal(x, get_batch(cfg, [b], [1.0], 5, 1, 0)[0])
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    for other in [(6, 1, 0), (5, 0, 0), (5, 1, 1)]:
        assert not torch.equal(x, get_batch(cfg, [b], [1.0], *other)[0])
    assert not torch.equal(x, get_batch({**cfg, "seed": 1}, [b], [1.0], 5, 1, 0)[0])


def test_config_typo_is_an_error(tmp_path):
    b = text_bin(tmp_path)
    with pytest.raises(ValueError, match="unknown config key --learnig_rate; did you mean --learning_rate"):
        train(out_dir=str(tmp_path / "r"), train_bins=[b], learnig_rate=1e-3)
    cfg_file = tmp_path / "bad.py"
    cfg_file.write_text("batch_size = 4\nn_layers = 2\n")
    with pytest.raises(ValueError, match=f"{cfg_file}.*unknown config key --n_layers; did you mean --n_layer"):
        train(str(cfg_file), out_dir=str(tmp_path / "r"), train_bins=[b])
    with pytest.raises(TypeError, match="batch_size"):
        train(out_dir=str(tmp_path / "r"), train_bins=[b], batch_size="4")


def test_bin_of_another_tokenizer_or_too_short_is_an_error(tmp_path):
    b = text_bin(tmp_path)
    meta_path = tmp_path / "d" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "tokenizer": "gpt2"}))
    with pytest.raises(ValueError, match="a.bin: tokenized with 'gpt2'"):
        train(out_dir=str(tmp_path / "r"), train_bins=[b], max_steps=1, **TINY)
    short = write_bin(tmp_path / "s" / "short.bin", [list(range(20))])
    with pytest.raises(ValueError, match="short.bin: 20 tokens, fewer than block_size"):
        train(out_dir=str(tmp_path / "r"), train_bins=[short], max_steps=1, **TINY)
    with pytest.raises(ValueError, match="train_weights"):
        train(out_dir=str(tmp_path / "r"), train_bins=[short], train_weights=[0.5, 0.5],
              max_steps=1, **{**TINY, "block_size": 8})


def test_checkpoint_of_another_tokenizer_is_an_error(tmp_path):
    b = text_bin(tmp_path)
    base = str(tmp_path / "base.pt")
    make_base(base, **TINY)
    ck = torch.load(base, weights_only=False)
    torch.save({**ck, "tokenizer": "gpt2"}, base)
    with pytest.raises(ValueError, match="base.pt: checkpoint of tokenizer 'gpt2'"):
        train(out_dir=str(tmp_path / "r"), train_bins=[b], init_from=base, max_steps=1, **TINY)


def test_make_base_then_init_from_starts_at_the_base(tmp_path):
    b = text_bin(tmp_path)
    base = str(tmp_path / "base.pt")
    info = make_base(base, seed=3, **TINY)
    assert info["ckpt"] == base and info["params"] > 0
    # zero steps from the base: the checkpoint holds exactly the base weights
    s0 = train(out_dir=str(tmp_path / "zero"), train_bins=[b], init_from=base, max_steps=0, seed=3, **TINY)
    assert same_weights(weights(base), weights(s0["ckpt"]))
    # and the base is the seeded scratch init: training from either gives the same weights
    a = train(out_dir=str(tmp_path / "a"), train_bins=[b], init_from=base, max_steps=2, seed=3, **TINY)
    c = train(out_dir=str(tmp_path / "c"), train_bins=[b], max_steps=2, seed=3, **TINY)
    assert same_weights(weights(a["ckpt"]), weights(c["ckpt"]))
    ck = torch.load(a["ckpt"], weights_only=False)
    assert ck["tokenizer"] == "byte" and ck["model_args"]["n_embd"] == 32 and ck["step"] == 2 and ck["done"]
