"""model.py against the transformers package itself: Hugging Face GPT-2 and Llama checkpoints load here with equal
logits and equal greedy generations, and export_hf writes directories that transformers loads with equal logits
(a model loaded from Hugging Face, and a checkpoint trained here, with its tokenizer)."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not installed (optional: pip install transformers safetensors); "
                           "tests/test_model.py checks the same loaders and exporter against hand-written weights")

from common import load_checkpoint, save_checkpoint  # noqa: E402
from hf import export_hf, from_pretrained  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
V = 300  # the checkpoints' vocabulary; ours adds the four latent tokens
TOK = SimpleNamespace(n_vocab=V + 4)  # a stand-in tokenizer: only its size matters for loading weights


def hf_model(family):
    """A small random transformers model. The init is wider than the default so greedy argmaxes are not near ties."""
    torch.manual_seed(0)
    no_ids = dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)  # generation never stops early
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=V, n_positions=128, n_embd=64, n_layer=2, n_head=4,
                                      initializer_range=0.2, **no_ids)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                       rope_theta=500.0, rms_norm_eps=1e-5, initializer_range=0.2,
                                       tie_word_embeddings=family == "llama-tied", **no_ids)
        model = transformers.LlamaForCausalLM(cfg)
        with torch.no_grad():  # RMSNorm weights start at 1: move them so a swapped norm weight would show
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def hf_load(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def logits_equal(ours, theirs, ids):
    with torch.no_grad():
        a = ours(ids)[0][..., :V]
        b = theirs(ids).logits[..., :V]
    assert torch.allclose(a, b, atol=1e-4), (a - b).abs().max()


FAMILIES = ["gpt2", "llama", "llama-tied"]


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_checkpoint_loads_and_exports_back(tmp_path, family):
    hf = hf_model(family)
    hf.save_pretrained(tmp_path / "hf", safe_serialization=True)
    ours = from_pretrained(str(tmp_path / "hf"), TOK).eval()
    assert ours.config.tie_embeddings == (family != "llama")
    ids = torch.randint(0, V, (3, 40), generator=torch.Generator().manual_seed(1))
    logits_equal(ours, hf, ids)

    # greedy decoding: our cached, left-padded batch against transformers' generate on each prompt alone
    prompts = [[5, 17, 42], [7] * 9 + [250, 3], [99]]
    toks, _, _ = ours.generate(prompts, max_new_tokens=24, temperature=0)
    for p, t in zip(prompts, toks):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False, attention_mask=None)
        assert t == ref[0, len(p):].tolist()

    # and back: our export loads in transformers with the same logits
    export_hf(ours, None, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "vocab.json")  # no tokenizer of ours to write
    logits_equal(ours, hf_load(str(tmp_path / "out")), ids)


def test_sharded_and_bf16_llama_checkpoints_load(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path / "shards", safe_serialization=True, max_shard_size="40KB")
    assert os.path.exists(tmp_path / "shards" / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path / "shards") if f.endswith(".safetensors")]) > 1
    ids = torch.randint(0, V, (2, 30), generator=torch.Generator().manual_seed(2))
    logits_equal(from_pretrained(str(tmp_path / "shards"), TOK).eval(), hf, ids)
    # bfloat16 files: compared with transformers reading the same file as float32 (a bfloat16 model cast back to
    # float32 would keep its rotary frequencies rounded to bfloat16)
    hf.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
    logits_equal(from_pretrained(str(tmp_path / "bf16"), TOK).eval(), hf_load(str(tmp_path / "bf16")), ids)


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("tok_name", ["byte", "gpt2", "mathworld"])
def test_trained_checkpoint_exports_to_transformers(tmp_path, family, tok_name):
    """A few training steps here, saved as a checkpoint, exported by `python -m hf export`, loaded by
    transformers: equal logits, and the tokenizer encodes as ours does."""
    from data.tokenizer import get_tokenizer
    tok = get_tokenizer(tok_name)
    cfg = dict(block_size=64, vocab_size=tok.n_vocab, n_layer=2, n_head=4, n_embd=32)
    if family == "llama":
        cfg.update(rope_theta=10000.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", n_inner=80, n_kv_head=2,
                   bias=False, tie_embeddings=False)
    if family == "neox":  # em.py's default block: rotary positions with GPT-2's LayerNorm and GELU
        cfg.update(rope_theta=10000.0, tie_embeddings=tok_name != "byte")
    torch.manual_seed(0)
    model = GPT(GPTConfig(**cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.tensor(tok.encode("the latent thoughts behind a text explain how it was written. " * 12))
    for _ in range(3):
        x = torch.stack([data[i:i + 32] for i in (0, 7, 19)])
        y = torch.stack([data[i + 1:i + 33] for i in (0, 7, 19)])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = str(tmp_path / "ckpt.pt")
    save_checkpoint(ckpt, model, tok_name, latent=False, config={})
    out = str(tmp_path / "hf")
    subprocess.run([sys.executable, "-m", "hf", "export", f"--ckpt={ckpt}", f"--out={out}"], cwd=ROOT, check=True,
                   capture_output=True)
    hf = hf_load(out)
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                                 "neox": "GPTNeoXForCausalLM"}[family]
    ids = torch.randint(0, tok.n_vocab, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(model(ids)[0][..., :tok.n_vocab], hf(ids).logits, atol=1e-4)

    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello wörld 123\n\t x  <|START_OF_LATENT|> é😀 Problem:\nWhat is 12 + 345? She has 7 apples.\n"
    # documents are encoded without parsing special-token strings, which is split_special_tokens in transformers
    assert hf_tok(text, split_special_tokens=True).input_ids == tok.encode(text)
    assert hf_tok.decode(tok.encode(text)) == text
    latent = ["<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>"]
    assert hf_tok.convert_tokens_to_ids(latent) == tok.latent_ids
    assert hf_tok("a" + "".join(latent)).input_ids == tok.encode("a") + tok.latent_ids
    assert hf_tok.eos_token_id == tok.eot and len(hf_tok) == tok.n_vocab


def test_the_papers_setting_in_miniature_llama_weights_and_tokenizer_in_and_out(tmp_path):
    """A Llama-family directory (random LlamaForCausalLM weights and a SentencePiece-style tokenizer.json, as
    TinyLlama ships them): a corpus prepared with its tokenizer, continued pretraining by train.py from its weights,
    the checkpoint exported and loaded by transformers with equal logits and a tokenizer that encodes as ours."""
    from tests.test_tokenizer import llama_style_tokenizer_json
    from data.prepare import prepare_corpus
    from data.tokenizer import get_tokenizer
    from train import train
    d = tmp_path / "tinyllama"
    os.makedirs(d)
    llama_style_tokenizer_json(str(d / "tokenizer.json"))
    tok = get_tokenizer(str(d / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.n_vocab - 4, hidden_size=64, intermediate_size=96,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    texts = [f"Natalia sold {n} clips in April. She sold half as many in May. How many in all? " * 3 for n in range(40)]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    data = str(tmp_path / "data")
    prepare_corpus([str(src)], data, tokenizer=tok.name, workers=1, warm_fraction=0.0, val_fraction=0.0)
    s = train(out_dir=str(tmp_path / "run"), train_bins=[os.path.join(data, "boot_raw.bin")], init_from=str(d),
              tokenizer=tok.name, block_size=64, batch_size=4, max_steps=3, learning_rate=1e-3, eval_interval=100,
              log_interval=1)
    out = str(tmp_path / "hf")
    subprocess.run([sys.executable, "-m", "hf", "export", f"--ckpt={s['ckpt']}", f"--out={out}"], cwd=ROOT,
                   check=True, capture_output=True)
    ours, _ = load_checkpoint(s["ckpt"])
    hf = hf_load(out)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.vocab_size == tok.n_vocab
    ids = torch.randint(0, tok.n_vocab, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(ours.eval()(ids)[0][..., :tok.n_vocab], hf(ids).logits, atol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Natalia sold 48 clips.  Then <|START_OF_LATENT|> é😀\n"
    assert hf_tok(text, add_special_tokens=False, split_special_tokens=True).input_ids == tok.encode(text)
    latent = ["<|START_OF_LATENT|>", "<|END_OF_LATENT|>", "<|PRIOR_PREFIX|>", "<|POSTERIOR_PREFIX|>"]
    assert hf_tok.convert_tokens_to_ids(latent) == tok.latent_ids and hf_tok.eos_token_id == tok.eot
