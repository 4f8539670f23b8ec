"""model.py: cached sampling == uncached, log-probs == a full forward, shared prefill == independent prefills,
stop tokens, seeds, scoring == a slow reference, checkpoints, from_pretrained. The sampling and scoring tests run
for both block families: GPT-2 and Llama (rotary positions, RMSNorm, SwiGLU, grouped-query attention)."""
import json
import os
import struct

import pytest
import torch
import torch.nn.functional as F

from common import estimate_mfu, load_checkpoint, peak_flops, save_checkpoint
from hf import _read_safetensors, _write_safetensors, export_hf, from_pretrained
from model import GPT, GPTConfig

V = 70  # not a multiple of 64: exercises the padded embedding rows
# Llama's switches; 4 query heads share 2 key/value heads, and the MLP width is not 4 * n_embd
LLAMA = dict(rope_theta=10000.0, norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", n_inner=48, n_head=4, n_kv_head=2,
             bias=False, tie_embeddings=False)
FAMILIES = ["gpt2", "llama"]


def tiny(family="gpt2", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(block_size=96, vocab_size=V, n_layer=2, n_head=2, n_embd=32)
    if family == "llama":
        cfg.update(LLAMA)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12], [13], [20, 21, 22, 23, 24]]


def full_logprobs(model, ids):
    """The slow reference: one plain forward over the whole sequence, log_softmax over the real vocabulary."""
    logits, _ = model(torch.tensor([ids]))
    return F.log_softmax(logits[0, :, :V].float(), -1)


def reference_greedy(model, prompt, max_new_tokens, stop_tokens=(), banned_tokens=()):
    """The test oracle for generate: greedy decoding of one prompt alone, without a cache (a full forward of the
    whole sequence for every new token), to the first stop token. Returns (tokens, log-probs)."""
    seq, lps = list(prompt), []
    for _ in range(max_new_tokens):
        logits = model(torch.tensor([seq]))[0][0, -1, :V].float()
        logits[list(banned_tokens)] = float("-inf")
        lp = F.log_softmax(logits, -1)
        seq.append(int(lp.argmax()))
        lps.append(lp[seq[-1]].item())
        if seq[-1] in stop_tokens:
            break
    return seq[len(prompt):], lps


def assert_equals_reference(model, prompts, max_new_tokens, stop_tokens=(), banned_tokens=(), num_samples=1):
    toks, lps, fin = model.generate(prompts, num_samples=num_samples, max_new_tokens=max_new_tokens, temperature=0,
                                    stop_tokens=stop_tokens, banned_tokens=banned_tokens)
    for r, (t, lp, f) in enumerate(zip(toks, lps, fin)):
        ref_t, ref_lp = reference_greedy(model, prompts[r // num_samples], max_new_tokens, stop_tokens, banned_tokens)
        assert t == ref_t and f == (ref_t[-1] in stop_tokens)
        assert torch.allclose(torch.tensor(lp), torch.tensor(ref_lp), atol=1e-5, rtol=0)
    return toks


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_greedy_equals_uncached_on_ragged_batch(family):
    # left padding must not leak into other rows: each row equals its prompt decoded alone without a cache
    assert_equals_reference(tiny(family), PROMPTS, max_new_tokens=40)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("compile_step", [False, True])
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo warns about torch.jit
def test_compaction_mid_decode_equals_uncached(family, compile_step, monkeypatch):
    """Rows that stop early are compacted out of the batch (every 16 steps, once half are done) while the others
    decode on: the survivors still equal the uncached oracle. With compile_step (here torch.compile is left out:
    the step runs as written) every step between compactions has the same shapes, attention reading the whole
    cache buffer; without it, attention reads the columns written so far."""
    m = tiny(family)
    with torch.no_grad():  # wider than the default init: greedy decoding wanders instead of repeating one token
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    prompts = [[i % V, (3 * i) % V] * (1 + i % 5) for i in range(1, 13)]  # 12 rows, lengths 2 to 10
    # stop on every token row 1 does not use in its first 30 steps: the other rows stop as soon as they leave
    # row 1's vocabulary, mostly within a few steps
    stop = set(range(V)) - set(reference_greedy(m, prompts[1], 30)[0])
    shapes, step = [], GPT.decode_step

    def recording_step(self, tok, pad, cache, col):
        shapes.append((tuple(tok.shape), tuple(pad.shape), tuple(cache.k.shape), cache.width(col, 1)))
        return step(self, tok, pad, cache, col)

    monkeypatch.setattr(GPT, "decode_step", recording_step)
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)
    toks, lps, fin = m.generate(prompts, max_new_tokens=60, temperature=0, stop_tokens=stop,
                                compile_step=compile_step)
    for p, t, lp, f in zip(prompts, toks, lps, fin):
        ref_t, ref_lp = reference_greedy(m, p, 60, stop)
        assert t == ref_t and f == (ref_t[-1] in stop)
        assert torch.allclose(torch.tensor(lp), torch.tensor(ref_lp), atol=1e-5, rtol=0)
    lengths = [len(t) for t in toks]
    assert sum(n <= 16 for n in lengths) >= len(prompts) // 2 and max(lengths) > 16, lengths
    # 12 rows for steps 1..15, fewer from step 16 on; the cache's length never changes
    sizes, T = [s[0][0] for s in shapes], max(map(len, prompts)) + 60
    assert sizes[:15] == [12] * 15 and sizes[15] < 12
    assert {s[2][3] for s in shapes} == {T}
    if compile_step:  # one shape per batch size
        assert len(set(shapes)) == len(set(sizes)) and {s[3] for s in shapes} == {T}
    else:
        assert [s[3] for s in shapes] == list(range(T - 59, T - 59 + len(shapes)))


@pytest.fixture
def fresh_dynamo():
    # compiled code is cached per code object across tests: each compile test starts and ends with none
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch._dynamo warns about torch.jit
def test_compiled_decode_step_equals_eager_and_compiles_a_bounded_number_of_times(family, fresh_dynamo,
                                                                                   monkeypatch):
    """generate(compile_step=True) with decode_step compiled for real, as on a GPU (fullgraph=True) but with a CPU
    backend: aot_eager, dynamo's graph functionalised by AOTAutograd as inductor receives it (the CUDA graphs of
    model.DECODE_COMPILE's mode "reduce-overhead" need a GPU). Calls of more distinct (batch, cache width) shapes
    than dynamo's recompile_limit, one of a single row and one whose batch shrinks mid-decode: each equals the eager
    generate with the same seed, and the step is compiled a few times in all, not once per shape (past the limit,
    fullgraph=True makes a new shape a hard error)."""
    import model as model_module
    assert model_module.DECODE_COMPILE["fullgraph"]  # the GPU's setting, which this test keeps
    compiles = []

    def counting_aot_eager(gm, example_inputs):
        compiles.append(len(example_inputs))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    monkeypatch.setattr(model_module, "DECODE_COMPILE", dict(backend=counting_aot_eager, fullgraph=True))
    m = tiny(family)
    calls = [(PROMPTS[:2], 1, 20), ([PROMPTS[1]], 3, 30), ([[7]] * 5, 2, 17), ([[9, 9, 9]], 1, 10),
             ([[1] * 10] * 3, 2, 25), (PROMPTS, 2, 12), ([[5, 6]] * 7, 1, 9), (PROMPTS[2:], 3, 21),
             ([[2] * 20], 2, 40), ([[3, 1, 4, 1, 5]] * 2, 4, 33)]
    shapes = {(len(p) * K, max(map(len, p)) + n) for p, K, n in calls}  # (batch, cache width) of each call
    assert len(shapes) == len(calls) > torch._dynamo.config.recompile_limit

    def compiled_equals_eager(prompts, **kw):
        got = m.generate(prompts, seed=5, compile_step=True, **kw)
        want = m.generate(prompts, seed=5, **kw)
        assert got[0] == want[0] and got[2] == want[2]
        for a, b in zip(got[1], want[1]):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5, rtol=0)
        return got[0]

    for prompts, K, n in calls:
        compiled_equals_eager(prompts, num_samples=K, max_new_tokens=n)
    # rows that stop drop out of the batch (compaction) while the others decode on, through the compiled step
    toks = compiled_equals_eager(PROMPTS, num_samples=3, max_new_tokens=50, stop_tokens=range(0, V, 12))
    lengths = [len(t) for t in toks]
    assert sum(n <= 16 for n in lengths) >= len(lengths) // 2 and max(lengths) > 16, lengths
    assert 1 <= len(compiles) <= 3, compiles  # the first shape, then symbolic batch and width, then one row
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == len(compiles)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_with_stops_equals_uncached(family):
    # K greedy rows per prompt are K copies of one decoding, each equal to the oracle, stop tokens included
    m = tiny(family)
    stop = list(range(0, V, 3))
    assert_equals_reference(m, PROMPTS, 50, stop_tokens=stop, banned_tokens=[1, 2, 4], num_samples=3)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_logprobs_equal_full_forward(family, temperature):
    m = tiny(family)
    toks, lps, _ = m.generate(PROMPTS, num_samples=2, max_new_tokens=30, temperature=temperature, seed=3)
    for r, (t, lp) in enumerate(zip(toks, lps)):
        p = PROMPTS[r // 2]
        ref = full_logprobs(m, p + t)
        expect = torch.tensor([ref[len(p) - 1 + i, tok].item() for i, tok in enumerate(t)])
        assert torch.allclose(torch.tensor(lp), expect, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_log_q_and_weights_stay_near_float32(family):
    # under bf16 autocast (a GPU's default; a CPU's with dtype=bfloat16) log q comes from the cached decode and log p
    # from a full forward, two kernels rounding differently: each token's log q within 0.05 nats of float32's,
    # and a thought's log w = log p - log q within 0.05 nats per token of float32's
    m = tiny(family, n_embd=64, n_head=4, **({"n_kv_head": 2, "n_inner": 96} if family == "llama" else {}))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        toks, lps, _ = m.generate(PROMPTS, num_samples=2, max_new_tokens=30, temperature=1.0, seed=3)
        logp16 = m.score([PROMPTS[r // 2] + t for r, t in enumerate(toks)], [len(PROMPTS[r // 2]) for r in range(8)])
    logp32 = m.score([PROMPTS[r // 2] + t for r, t in enumerate(toks)], [len(PROMPTS[r // 2]) for r in range(8)])
    for r, (t, lp) in enumerate(zip(toks, lps)):
        p = PROMPTS[r // 2]
        ref = full_logprobs(m, p + t)
        expect = torch.tensor([ref[len(p) - 1 + i, tok].item() for i, tok in enumerate(t)])
        assert (torch.tensor(lp) - expect).abs().max() < 0.05
        logw16, logw32 = logp16[r] - sum(lp), logp32[r] - expect.sum()
        assert abs(logw16 - logw32) < 0.05 * len(t)
        assert abs(logp32[r] - expect.sum()) < 1e-3  # the float32 sides agree exactly: scoring = sampling's log-probs


@pytest.mark.parametrize("family", FAMILIES)
def test_temperature_scales_the_recorded_distribution(family):
    m = tiny(family)
    toks, lps, _ = m.generate(PROMPTS[:1], max_new_tokens=10, temperature=0.5, seed=0)
    ref = F.log_softmax(m(torch.tensor([PROMPTS[0] + toks[0]]))[0][0, :, :V].float() / 0.5, -1)
    expect = [ref[len(PROMPTS[0]) - 1 + i, t].item() for i, t in enumerate(toks[0])]
    assert torch.allclose(torch.tensor(lps[0]), torch.tensor(expect), atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefill_matches_independent_prefills(family):
    m = tiny(family)
    K = 4
    shared = m.generate(PROMPTS, num_samples=K, max_new_tokens=25, temperature=1.0, seed=7)
    separate = m.generate([p for p in PROMPTS for _ in range(K)], num_samples=1, max_new_tokens=25,
                          temperature=1.0, seed=7)
    assert shared[0] == separate[0]
    for a, b in zip(shared[1], separate[1]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5)
    # the K samples of one prompt are not all the same (they are real samples)
    assert len({tuple(t) for t in shared[0][:K]}) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_tokens_end_rows_independently(family):
    m = tiny(family)
    stop = list(range(0, V, 3))  # a third of the vocabulary: rows stop at different steps
    toks, lps, fin = m.generate(PROMPTS, num_samples=3, max_new_tokens=50, temperature=1.0, stop_tokens=stop, seed=1)
    lengths = [len(t) for t in toks]
    assert len(set(lengths)) > 1
    for t, lp, f in zip(toks, lps, fin):
        assert len(t) == len(lp)
        assert f and t[-1] in stop and not any(x in stop for x in t[:-1])
    # no stop token: every row runs to max_new_tokens and is not finished
    toks, _, fin = m.generate(PROMPTS, max_new_tokens=17, temperature=1.0, seed=1)
    assert all(len(t) == 17 for t in toks) and not any(fin)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_dropped_mid_decode_keep_their_tokens(family):
    # many rows stop early and are compacted out of the batch; the survivors must match a run without stops
    m = tiny(family)
    toks, _, _ = m.generate(PROMPTS, num_samples=4, max_new_tokens=60, temperature=0)
    first = toks[0][0]
    stopped = m.generate(PROMPTS, num_samples=4, max_new_tokens=60, temperature=0, stop_tokens=[first])
    for full, cut in zip(toks, stopped[0]):
        n = full.index(first) + 1 if first in full else len(full)
        assert cut == full[:n]


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_sampling_is_reproducible(family):
    m = tiny(family)
    a = m.generate(PROMPTS, num_samples=2, max_new_tokens=20, seed=123)
    b = m.generate(PROMPTS, num_samples=2, max_new_tokens=20, seed=123)
    c = m.generate(PROMPTS, num_samples=2, max_new_tokens=20, seed=124)
    assert a[0] == b[0] and a[1] == b[1] and a[0] != c[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_banned_tokens_are_never_sampled(family):
    m = tiny(family)
    banned = list(range(10, V))
    toks, lps, _ = m.generate(PROMPTS, num_samples=2, max_new_tokens=20, seed=0, banned_tokens=banned)
    assert all(t < 10 for r in toks for t in r)
    # the recorded log-probs are of the distribution renormalised over the allowed tokens
    ref = full_logprobs(m, PROMPTS[0] + toks[0])[:, :10].log_softmax(-1)
    expect = [ref[len(PROMPTS[0]) - 1 + i, t].item() for i, t in enumerate(toks[0])]
    assert torch.allclose(torch.tensor(lps[0]), torch.tensor(expect), atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_too_long_is_a_clear_error(family):
    m = tiny(family)
    with pytest.raises(ValueError, match="block_size"):
        m.generate([[1] * 90], max_new_tokens=10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("share", [True, False])
def test_score_equals_slow_reference(family, share):
    m = tiny(family)
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [5, 5]]
    starts = [2, 1, 5, 1]
    got = m.score(seqs, starts, share=share)
    for s, st, g in zip(seqs, starts, got):
        ref = full_logprobs(m, s)
        expect = sum(ref[t - 1, s[t]].item() for t in range(st, len(s)))
        assert abs(g.item() - expect) < 1e-4
    with pytest.raises(ValueError):
        m.score([[1, 2]], [0])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("share", [True, False, None])
@pytest.mark.parametrize("max_logits", [None, 3000])
def test_shared_head_scoring_is_exact(family, share, max_logits):
    """K rows with one head (an E-step chunk's P) share one prefill; the sums equal a full forward of each row,
    with heads of different lengths, empty and long tails, and a head shared by rows that are not adjacent."""
    m = tiny(family)
    P1, P2 = [1, 2, 3, 4, 5, 6, 7], [9, 8]
    seqs = [P1 + [10, 11, 12], P2 + [13], P1 + [14] * 20, P2 + [15, 16, 17, 18], P1, [3, 3, 3, 3],
            P2 + [19] * 80, [2] * 85 + [3, 4]]  # a short head with a long tail beside a long head: block_size 96
    starts = [len(P1), len(P2), len(P1), len(P2), len(P1), 2, len(P2), 85]
    got = m.score(seqs, starts, max_logits=max_logits, share=share)  # 3000 logits: rows in several groups
    for s, st, g in zip(seqs, starts, got):
        ref = full_logprobs(m, s)
        expect = sum(ref[t - 1, s[t]].item() for t in range(st, len(s)))
        assert abs(g.item() - expect) < 1e-4, (s, st, g.item(), expect)
    assert m.score([[4]], [1], share=share).tolist() == [0.0]  # nothing to score


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_roundtrip_and_compiled_prefix(family, tmp_path):
    m = tiny(family)
    sd = {"_orig_mod." + k: v for k, v in m.state_dict().items()}  # as saved from a torch.compile'd model
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, m, "byte", latent=True, config={})
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    m2, ckpt = load_checkpoint(path)
    x = torch.tensor([PROMPTS[1]])
    assert torch.equal(m(x)[0], m2.eval()(x)[0]) and ckpt["latent"] is True
    torch.save({"model": sd, "model_args": vars(m.config), "tokenizer": "byte", "latent": True}, path)
    m2, ckpt = load_checkpoint(path)
    x = torch.tensor([PROMPTS[1]])
    assert torch.equal(m(x)[0], m2.eval()(x)[0]) and ckpt["latent"] is True
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        load_checkpoint(str(tmp_path / "bad.pt"))
    # files that are not checkpoints at all: errors naming the path, not bare unpickling errors
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    (tmp_path / "cut.pt").write_bytes(open(path, "rb").read()[:1000])
    torch.save([1, 2], tmp_path / "list.pt")
    for name in ("notes.pt", "cut.pt", "list.pt"):
        with pytest.raises(ValueError, match=f"{name}: not"):
            load_checkpoint(str(tmp_path / name))


def test_checkpoints_saved_before_the_llama_switches_load_as_gpt2(tmp_path):
    old_args = dict(block_size=96, vocab_size=V, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
    m = tiny()
    path = str(tmp_path / "old.pt")
    torch.save({"model": m.state_dict(), "model_args": old_args, "tokenizer": "byte"}, path)
    m2, _ = load_checkpoint(path)
    assert m2.config == m.config and "transformer.wpe.weight" in m2.state_dict()
    assert m2.lm_head.weight is m2.transformer.wte.weight


def _write_hf_gpt2(path, n_layer=2, n_head=2, n_embd=32, vocab=50257, n_pos=64, fmt="safetensors"):
    """A tiny checkpoint laid out exactly like Hugging Face's GPT-2 (Conv1D weights stored (in, out))."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g) * 0.02
    sd = {"wte.weight": r(vocab, n_embd), "wpe.weight": r(n_pos, n_embd),
          "ln_f.weight": 1 + r(n_embd), "ln_f.bias": r(n_embd)}
    for i in range(n_layer):
        p = f"h.{i}."
        sd.update({p + "ln_1.weight": 1 + r(n_embd), p + "ln_1.bias": r(n_embd),
                   p + "ln_2.weight": 1 + r(n_embd), p + "ln_2.bias": r(n_embd),
                   p + "attn.c_attn.weight": r(n_embd, 3 * n_embd), p + "attn.c_attn.bias": r(3 * n_embd),
                   p + "attn.c_proj.weight": r(n_embd, n_embd), p + "attn.c_proj.bias": r(n_embd),
                   p + "mlp.c_fc.weight": r(n_embd, 4 * n_embd), p + "mlp.c_fc.bias": r(4 * n_embd),
                   p + "mlp.c_proj.weight": r(4 * n_embd, n_embd), p + "mlp.c_proj.bias": r(n_embd),
                   p + "attn.bias": torch.ones(1, 1, n_pos, n_pos)})
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "n_positions": n_pos,
                   "vocab_size": vocab, "model_type": "gpt2"}, f)
    if fmt == "bin":
        torch.save(sd, os.path.join(path, "pytorch_model.bin"))
    else:
        header, blobs, off = {}, [], 0
        for k, v in sd.items():
            b = v.contiguous().numpy().tobytes()
            header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
            blobs.append(b)
            off += len(b)
        h = json.dumps(header).encode()
        with open(os.path.join(path, "model.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    return sd


def _hf_reference_forward(sd, ids, n_layer, n_head):
    """GPT-2's forward written out directly from the HF weight layout (x @ W for Conv1D)."""
    x = sd["wte.weight"][ids] + sd["wpe.weight"][: len(ids)]
    T, C = x.shape
    for i in range(n_layer):
        p = f"h.{i}."
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = (h @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]).split(C, -1)
        q, k, v = (t.view(T, n_head, -1).transpose(0, 1) for t in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / (C // n_head) ** 0.5
        att = att.masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1)
        y = (att @ v).transpose(0, 1).reshape(T, C)
        x = x + y @ sd[p + "attn.c_proj.weight"] + sd[p + "attn.c_proj.bias"]
        h = F.layer_norm(x, (C,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = F.gelu(h @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + h @ sd[p + "mlp.c_proj.weight"] + sd[p + "mlp.c_proj.bias"]
    x = F.layer_norm(x, (C,), sd["ln_f.weight"], sd["ln_f.bias"])
    return x @ sd["wte.weight"].T


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_from_pretrained_matches_reference(tmp_path, fmt):
    from data.tokenizer import get_tokenizer
    tok = get_tokenizer("gpt2")
    sd = _write_hf_gpt2(str(tmp_path / "gpt2"), fmt=fmt)
    m = from_pretrained(str(tmp_path / "gpt2"), tok).eval()
    assert m.config.vocab_size == tok.n_vocab == 50261 and m.padded_vocab == 50304
    ids = [15496, 995, 11, 50256, 42]
    logits = m(torch.tensor([ids]))[0][0, :, :50257]
    assert torch.allclose(logits, _hf_reference_forward(sd, torch.tensor(ids), 2, 2), atol=1e-4)
    # the latent tokens got embedding rows at the mean of the old ones
    wte = m.transformer.wte.weight
    assert torch.allclose(wte[tok.sol], sd["wte.weight"].mean(0), atol=1e-6)


def test_peak_flops_table():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None and estimate_mfu(tiny(), 1e6, 96, "cpu") is None


def test_from_pretrained_refuses_settings_it_does_not_implement(tmp_path):
    from data.tokenizer import get_tokenizer
    tok = get_tokenizer("gpt2")
    d = str(tmp_path / "gpt2")
    _write_hf_gpt2(d, n_layer=1)
    cfg_path = os.path.join(d, "config.json")
    base = json.load(open(cfg_path))
    # Hugging Face's gpt2 config.json spells out the defaults: they load
    hf_defaults = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "scale_attn_weights": True,
                   "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False, "n_inner": None,
                   "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1, "summary_type": "cls_index"}
    json.dump({**base, **hf_defaults}, open(cfg_path, "w"))
    from_pretrained(d, tok)
    for key, value in [("activation_function", "relu"), ("scale_attn_by_inverse_layer_idx", True),
                       ("reorder_and_upcast_attn", True), ("layer_norm_epsilon", 1e-6), ("n_inner", 64),
                       ("tie_word_embeddings", False), ("model_type", "gpt_neo")]:
        json.dump({**base, **hf_defaults, key: value}, open(cfg_path, "w"))
        with pytest.raises(ValueError, match=f"config.json: {key}={value!r} is not implemented"):
            from_pretrained(d, tok)


class StandIn:
    """A tokenizer as from_pretrained sees it: a size (a Llama checkpoint's own tokenizer is not implemented)."""
    n_vocab = V


@pytest.mark.parametrize("family", FAMILIES + ["llama-tied", "gpt2-nobias", "gpt2-erf"])
def test_export_then_from_pretrained_is_exact(tmp_path, family):
    # the writer and reader of Hugging Face directories agree, without the transformers package (tests/test_hf.py
    # checks both against transformers); a sharded copy of the same weights loads the same
    kw = {"llama-tied": dict(tie_embeddings=True), "gpt2-nobias": dict(bias=False),
          "gpt2-erf": dict(mlp="gelu_exact")}.get(family, {})
    m = tiny(family.split("-")[0], **kw)
    export_hf(m, None, str(tmp_path / "hf"))
    hf = json.load(open(tmp_path / "hf" / "config.json"))
    assert hf["architectures"] == ["LlamaForCausalLM" if family.startswith("llama") else "GPT2LMHeadModel"]
    assert hf.get("activation_function") == {"gpt2-erf": "gelu", "gpt2": "gelu_new", "gpt2-nobias": "gelu_new"}.get(family)
    m2 = from_pretrained(str(tmp_path / "hf"), StandIn).eval()
    assert m2.config == m.config or family == "gpt2-nobias"  # GPT-2 has biases: bias=False exports zeros
    x = torch.tensor([PROMPTS[1], PROMPTS[1][::-1]])
    assert torch.allclose(m(x)[0][..., :V], m2(x)[0][..., :V], atol=1e-6)
    if family == "llama":
        sd = _read_safetensors(str(tmp_path / "hf" / "model.safetensors"))
        names = sorted(sd)
        shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
        os.makedirs(tmp_path / "sharded")
        for f, keys in shards.items():
            _write_safetensors(str(tmp_path / "sharded" / f), {k: sd[k] for k in keys})
        json.dump({"weight_map": {k: f for f, keys in shards.items() for k in keys}},
                  open(tmp_path / "sharded" / "model.safetensors.index.json", "w"))
        json.dump(hf, open(tmp_path / "sharded" / "config.json", "w"))
        m3 = from_pretrained(str(tmp_path / "sharded"), StandIn).eval()
        assert torch.equal(m2(x)[0], m3(x)[0])


def test_export_refuses_a_mix_of_families(tmp_path):
    with pytest.raises(ValueError, match="mixes switches that no one Hugging Face architecture"):
        export_hf(tiny("gpt2", norm="rmsnorm"), None, str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="mixes"):
        export_hf(tiny("llama", bias=True), None, str(tmp_path / "hf"))


def test_llama_from_pretrained_refuses_settings_it_does_not_implement(tmp_path):
    d = str(tmp_path / "llama")
    export_hf(tiny("llama"), None, d)
    cfg_path = os.path.join(d, "config.json")
    base = json.load(open(cfg_path))
    # transformers' Llama config.json spells out its defaults: they load
    json.dump({**base, "pretraining_tp": 1, "attention_dropout": 0.0, "sliding_window": None}, open(cfg_path, "w"))
    from_pretrained(d, StandIn)
    refused = [("rope_scaling", {"rope_type": "llama3", "factor": 8.0}), ("sliding_window", 4096),
               ("attention_bias", True), ("mlp_bias", True), ("hidden_act", "gelu"), ("head_dim", 64),
               ("rope_parameters", {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0})]
    for key, value in refused:
        json.dump({**base, key: value}, open(cfg_path, "w"))
        with pytest.raises(ValueError, match=f"config.json: {key}="):
            from_pretrained(d, StandIn)
    json.dump(base, open(cfg_path, "w"))
    # the tokenizer must cover the checkpoint's vocabulary, and this project's tokenizers are not Llama's
    with pytest.raises(ValueError, match="vocab_size=70 is more than the tokenizer's 69"):
        from_pretrained(d, type("Small", (), {"n_vocab": V - 1}))
    from data.tokenizer import get_tokenizer
    with pytest.raises(ValueError, match="'gpt2' tokenizer's ids are not Llama's; use the directory's own"):
        from_pretrained(d, get_tokenizer("gpt2"))
