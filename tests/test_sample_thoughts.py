"""sample_thoughts.py (the E-step): recorded log q / log p == a slow full-forward recomputation, importance
resampling finds the thought that explains X, resumed == uninterrupted, two processes == one, and the augmented
bin holds the chunks with their chosen thoughts in the latent format."""
import json
import os
import socket

import pytest
import torch
import torch.nn.functional as F

import model as model_module
from data.files import chunk_prefix, doc_seed, open_bin, read_chunks, read_jsonl, read_thoughts, write_jsonl
from data.latent import coin_flips, joint_sequence, posterior_prompt, posterior_chunk, prior_chunk
from data.tokenizer import get_tokenizer
from common import save_checkpoint
from model import GPT, GPTConfig
from sample_thoughts import chunk_stats, context_budget, elbo_by_k, elbo_k, sample_thoughts, select, summarize

tok = get_tokenizer("byte")
BLOCK, THOUGHT = 96, 16


def rigged_model(eol_logit=2.6, seed=0, ascii=True):
    """A tiny random GPT nudged so thoughts are ASCII (they re-encode exactly) and often end with <EOL>.
    The final LayerNorm outputs ~ bias u: token rows along -u are unlikely, the <EOL> row along +u likely."""
    torch.manual_seed(seed)
    m = GPT(GPTConfig(block_size=BLOCK, vocab_size=tok.n_vocab, n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():
        u = F.normalize(torch.randn(32), dim=0)
        m.transformer.ln_f.weight.fill_(0.1)
        m.transformer.ln_f.bias.copy_(u)
        if ascii:
            m.lm_head.weight[128:256] = -8 * u  # tied with wte: these bytes never occur in the prompts
        m.lm_head.weight[tok.eol] = eol_logit * u
    return m.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # tiny models: two threads only add synchronisation (20x slower on a busy 2-core machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    d = tmp_path_factory.mktemp("estep")
    ckpt = str(d / "m.pt")
    m = rigged_model()
    save_checkpoint(ckpt, m, "byte", latent=True, config={})
    rows = []
    for doc in range(7):
        for i in range(1 + doc % 3):  # 13 chunks in documents of 1 to 3 chunks
            rows.append({"id": f"d{doc}:{i}", "doc": f"d{doc}", "idx": i, "text": f"Step {i}: {doc}*{i}={doc * i}.\n"})
    chunks = str(d / "chunks.jsonl")
    write_jsonl(chunks, rows)
    kw = dict(K=3, max_thought_tokens=THOUGHT, shard_size=5, batch_size=2, seed=7, device="cpu")
    full = str(d / "full")
    return dict(d=d, ckpt=ckpt, chunks=chunks, kw=kw, full=full, summary=sample_thoughts(ckpt, chunks, full, **kw))


def shard_rows(out_dir):
    return [r for f in sorted(os.listdir(os.path.join(out_dir, "shards")))
            for _, r in read_jsonl(os.path.join(out_dir, "shards", f))]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def recomputed(m, P, X, s, temperature=1.0):
    """(log q, log p) of a recorded sample, by full forwards: log q under the proposal the thought was drawn
    from (softmax(logits / T), control tokens other than <EOL> banned), log p(Z, X | P) every token after P."""
    ctx = context_budget(m, tok, THOUGHT)
    prompt = posterior_prompt(tok, P, X, max_tokens=ctx)
    seq = prompt + tok.encode(s["text"]) + ([] if s["truncated"] else [tok.eol])
    logits = m(torch.tensor([seq]))[0][0, :, :tok.n_vocab].float()
    logits[:, [tok.eot, tok.sol, tok.prior, tok.posterior]] = float("-inf")
    lp = F.log_softmax(logits / temperature, -1)
    logq = sum(lp[t - 1, seq[t]].item() for t in range(len(prompt), len(seq)))
    seq, start = joint_sequence(tok, P, X, s["text"], max_tokens=ctx)
    lp = F.log_softmax(m(torch.tensor([seq]))[0][0, :, :tok.n_vocab].float(), -1)
    return logq, sum(lp[t - 1, seq[t]].item() for t in range(start, len(seq)))


def test_logq_logp_equal_full_forward(setup):
    m = rigged_model()
    assert context_budget(m, tok, THOUGHT) == BLOCK - THOUGHT - 7  # <|endoftext|> <SOL><EOL> P <SOL><EOL> X <SOL><POSTERIOR>
    by_id = {c["id"]: (doc, i) for doc in read_chunks(setup["chunks"]) for i, c in enumerate(doc)}
    rows = shard_rows(setup["full"])
    assert [r["id"] for r in rows] == list(by_id)
    n_finished = n_truncated = 0
    for r in rows:
        doc, i = by_id[r["id"]]
        P, X = chunk_prefix(doc, i, 3), doc[i]["text"]
        for s in r["samples"]:
            assert s["exact"]  # ASCII thoughts: the text gives back the sampled tokens
            z = tok.encode(s["text"])
            assert len(z) == s["n_tokens"] and tok.eol not in z
            logq, logp = recomputed(m, P, X, s)
            assert abs(logq - s["logq"]) < 1e-4 and abs(logp - s["logp"]) < 1e-4
            assert abs(s["logw"] - (s["logp"] - s["logq"])) < 1e-9
            n_truncated += s["truncated"]
            n_finished += not s["truncated"]
        assert r["thought"] == r["samples"][r["chosen"]]["text"]
    assert n_finished > 10 and n_truncated > 0  # both kinds were checked
    s = setup["summary"]
    assert s["chunks"] == 13 and s["K"] == 3 and s["not_round_trip"] == 0
    assert 0 < s["truncation"] < 1 and s["elbo"] < 0 and 1 <= s["ess"] <= 3


def test_select():
    g = torch.Generator().manual_seed(0)
    log_w, none = [0.0, 12.0, 0.0, 0.0], [False] * 4
    assert sum(select(log_w, none, "importance", g) == 1 for _ in range(300)) >= 298
    uniform = [select(log_w, none, "uniform", g) for _ in range(400)]
    assert set(uniform) == {0, 1, 2, 3} and 60 < uniform.count(1) < 140  # 100 expected, sd 8.7
    assert select(log_w, none, "argmax", g) == 1
    # a truncated thought is never chosen while another finished, whatever its weight
    trunc = [False, True, False, True]
    for sel in ("importance", "uniform", "argmax"):
        assert {select(log_w, trunc, sel, g) for _ in range(100)} <= {0, 2}
    # all truncated: all are candidates
    assert select(log_w, [True] * 4, "argmax", g) == 1
    with pytest.raises(ValueError, match="selection"):
        select(log_w, none, "best", g)


def test_agreement_by_steps_splits_the_overall_figures():
    # two 2-step chunks (chosen right; one of two samples right) and one 3-step chunk (chosen wrong; both wrong)
    sample = lambda z: {"text": z, "logw": 0.0, "truncated": False, "exact": True, "n_tokens": 5}
    rows = [{"id": "a", "thought": "1+1=2; 2*2=4 => 4", "chosen": 0, "x_tokens": 3,
             "samples": [sample("1+1=2; 2*2=4 => 4"), sample("1+1=2; 2+2=5 => 5")]},
            {"id": "b", "thought": "2+1=3; 3*2=6 => 6", "chosen": 0, "x_tokens": 3,
             "samples": [sample("2+1=3; 3*2=6 => 6"), sample("2+1=3; 3+2=5 => 5")]},
            {"id": "c", "thought": "1+1=2 => 2", "chosen": 0, "x_tokens": 3,
             "samples": [sample("1+1=2 => 2"), sample("1+2=3 => 3")]},
            {"id": "d", "thought": "Exercises.", "chosen": 0, "x_tokens": 3, "samples": [sample("Exercises.")] * 2},
            # e: the chosen thought skips an operation and lands on the gold result; the other one is complete
            {"id": "e", "thought": "2+2=4; 4+3=7 => 7", "chosen": 0, "x_tokens": 3,
             "samples": [sample("2+2=4; 4+3=7 => 7"), sample("2+2=4; 4*2=8; 8-1=7 => 7")]}]
    golds = {"a": "1+1=2; 2*2=4 => 4", "b": "2+1=3; 3*2=6 => 6", "c": "1+1=2; 2+3=5; 5*2=10 => 10",
             "d": "Exercises.", "e": "2+2=4; 4*2=8; 8-1=7 => 7"}  # d states no result: in no rung
    s = summarize(rows, {"K": 2, "selection": "importance"}, golds)
    assert s["gold_chunks"] == 4 and abs(s["agree_chosen"] - 3 / 4) < 1e-9 and abs(s["agree_random"] - 2 / 4) < 1e-9
    assert s["by_steps"] == {"2": {"chunks": 2, "agree_chosen": 1.0, "agree_random": 0.5,
                                   "complete_chosen": 1.0, "complete_random": 0.5},
                             "3": {"chunks": 2, "agree_chosen": 0.5, "agree_random": 0.5,
                                   "complete_chosen": 0.0, "complete_random": 0.25}}
    assert abs(s["complete_chosen"] - 2 / 4) < 1e-9 and abs(s["complete_random"] - 1.5 / 4) < 1e-9


def test_chunk_stats():
    same = [{"logw": -5.0, "truncated": False}] * 4
    elbo, ess = chunk_stats(same)
    assert abs(elbo + 5.0) < 1e-9 and abs(ess - 4) < 1e-9  # equal weights: ELBO = log w, ESS = K
    one = [{"logw": w, "truncated": False} for w in (0.0, -50.0, -50.0, -50.0)]
    elbo, ess = chunk_stats(one)
    assert abs(elbo - (0.0 - torch.log(torch.tensor(4.0)).item())) < 1e-6 and abs(ess - 1) < 1e-6
    # a truncated sample has weight 0 when another finished
    elbo, ess = chunk_stats([{"logw": 0.0, "truncated": False}, {"logw": 9.0, "truncated": True}])
    assert abs(elbo + torch.log(torch.tensor(2.0)).item()) < 1e-6 and abs(ess - 1) < 1e-6


def test_heldout_elbo_at_k_reads_the_same_samples():
    g = torch.Generator().manual_seed(0)
    rows = [{"x_tokens": int(n), "samples": [{"logw": float(v), "truncated": False} for v in -5 * torch.rand(4, generator=g)]}
            for n in torch.randint(3, 9, (20,), generator=g)]
    for r in rows:
        lw = [s["logw"] for s in r["samples"]]
        assert elbo_k(r["samples"], 1) == pytest.approx(sum(lw) / 4)  # K = 1: the mean log-weight
        assert elbo_k(r["samples"], 4) == pytest.approx(chunk_stats(r["samples"])[0])  # K = 4: the E-step's figure
        # on the same samples the bound tightens with k (Jensen, group by group), never only on average
        assert elbo_k(r["samples"], 1) <= elbo_k(r["samples"], 2) + 1e-12 <= elbo_k(r["samples"], 4) + 2e-12
    by_k = elbo_by_k(rows)
    assert list(by_k) == ["1", "2", "4"]
    raw = sum(r["x_tokens"] for r in rows)
    assert by_k["1"] == pytest.approx(sum(elbo_k(r["samples"], 1) for r in rows) / raw) and by_k["1"] < by_k["4"]
    with pytest.raises(ValueError, match="k=5"):
        elbo_k(rows[0]["samples"], 5)


def test_importance_finds_the_thought_that_explains_x(setup, monkeypatch, capsys):
    """Rigged: every chunk gets K=4 thoughts with equal log q, one of which ("GOOD", at a varying position)
    makes X far more likely. Importance resampling keeps it nearly always, uniform selection ~1/4 of the time."""
    good = tok.encode("GOOD")

    def generate(self, prompts, num_samples=1, **kw):
        toks = []
        for i in range(len(prompts)):
            texts = ["bad one", "bad two", "bad six"]
            texts.insert(i % num_samples, "GOOD")
            toks += [tok.encode(t) + [tok.eol] for t in texts]
        return toks, [[-1.0] * len(t) for t in toks], [True] * len(toks)

    def score(self, seqs, starts, **_):
        has = lambda s: any(s[j:j + len(good)] == good for j in range(len(s)))
        return torch.tensor([20.0 if has(s) else 0.0 for s in seqs])

    monkeypatch.setattr(model_module.GPT, "generate", generate)
    monkeypatch.setattr(model_module.GPT, "score", score)
    rows = [{"id": f"d{i}:0", "doc": f"d{i}", "idx": 0, "text": f"x{i}\n"} for i in range(60)]
    chunks, gold = str(setup["d"] / "rig.chunks.jsonl"), str(setup["d"] / "rig.gold.jsonl")
    write_jsonl(chunks, rows)
    write_jsonl(gold, [{"id": r["id"], "thought": "GOOD"} for r in rows])
    kw = dict(K=4, max_thought_tokens=THOUGHT, batch_size=16, device="cpu", gold=gold, result_fn=lambda t: t)
    picked = {}
    for sel in ("importance", "uniform", "argmax"):
        s = sample_thoughts(setup["ckpt"], chunks, str(setup["d"] / f"rig_{sel}"), selection=sel, show=2, **kw)
        picked[sel] = sum(t == "GOOD" for t in read_thoughts(str(setup["d"] / f"rig_{sel}" / "thoughts.jsonl")).values())
        assert s["agree_chosen"] == picked[sel] / 60 and abs(s["agree_random"] - 0.25) < 1e-9
        assert s["gold_chunks"] == 60 and s["ess"] < 1.01
    assert picked["importance"] >= 59 and picked["argmax"] == 60
    # --show: the chunk, its K thoughts with their weights, the chosen one marked
    shown = capsys.readouterr().out
    assert shown.count("=== chunk") == 6 and shown.count("log w") == 6 * 4
    assert "> [1] log p(Z,X|P)    20.00  log q(Z|X,P)    -5.00  log w    25.00  w 1.000" in shown
    assert 5 <= picked["uniform"] <= 28  # 15 expected, sd 3.4


def test_resumed_equals_uninterrupted(setup):
    out = str(setup["d"] / "resumed")
    r = sample_thoughts(setup["ckpt"], setup["chunks"], out, stop_after_shards=1, **setup["kw"])
    assert r == {"stopped_after_shards": 1}
    assert os.listdir(os.path.join(out, "shards")) == ["shard_00000.jsonl"]
    assert not os.path.exists(os.path.join(out, "thoughts.jsonl"))
    s = sample_thoughts(setup["ckpt"], setup["chunks"], out, **setup["kw"])
    assert s["chunks_this_run"] == 13 - 5  # the finished shard was skipped
    for f in ("thoughts.jsonl", "aug.bin", "shards/shard_00001.jsonl", "shards/shard_00002.jsonl"):
        assert read_bytes(os.path.join(out, f)) == read_bytes(os.path.join(setup["full"], f))
    # resuming with other settings would mix two E-steps: an error naming the file
    with pytest.raises(ValueError, match="settings.json"):
        sample_thoughts(setup["ckpt"], setup["chunks"], out, **{**setup["kw"], "K": 2})


def _worker(rank, port, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    sample_thoughts(*args[:3], **args[3])


def test_two_processes_equal_one(setup):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(setup["d"] / "world2")
    torch.multiprocessing.spawn(_worker, args=(port, (setup["ckpt"], setup["chunks"], out, setup["kw"])), nprocs=2)
    with open(os.path.join(out, "summary.json")) as f:
        s = json.load(f)
    assert s["world_size"] == 2 and s["chunks_this_run"] == 13  # each chunk processed once, by one rank
    for f in ("thoughts.jsonl", "aug.bin"):
        assert read_bytes(os.path.join(out, f)) == read_bytes(os.path.join(setup["full"], f))


def test_aug_bin_holds_chunks_with_chosen_thoughts(setup):
    ids = open_bin(os.path.join(setup["full"], "aug.bin"), "byte").tolist()
    thoughts = read_thoughts(os.path.join(setup["full"], "thoughts.jsonl"))
    chosen = {r["id"]: r["samples"][r["chosen"]]["text"] for r in shard_rows(setup["full"])}
    assert thoughts == chosen
    pos, orders = 0, []
    for doc in read_chunks(setup["chunks"]):
        for c in doc:  # each chunk in one of the two orders of the latent format, with its chosen thought
            x, z = c["text"], thoughts[c["id"]]
            prior, post = prior_chunk(tok, x, z), posterior_chunk(tok, x, z)
            orders.append(ids[pos:pos + len(prior)] == prior)
            pos += len(prior) if orders[-1] else len(post)
            assert orders[-1] or ids[pos - len(post):pos] == post
        assert ids[pos] == tok.eot
        pos += 1
    assert pos == len(ids) and any(orders) and not all(orders)
    # and the order is the documented per-document coin
    docs = read_chunks(setup["chunks"])
    assert orders == [bool(f) for d in docs for f in coin_flips(len(d), doc_seed(7, d[0]["doc"]))]


def test_thoughts_that_re_encode_longer_still_fit(tmp_path):
    """Random bytes are mostly invalid UTF-8: the thought text (with U+FFFD) re-encodes up to 3x longer. With the
    context full, the joint sequence must shorten P (then X) to fit the block, and the run must count them."""
    m = rigged_model(eol_logit=1.0, ascii=False)
    ckpt, chunks = str(tmp_path / "m.pt"), str(tmp_path / "c.jsonl")
    save_checkpoint(ckpt, m, "byte", latent=True, config={})
    write_jsonl(chunks, [{"id": f"a:{i}", "doc": "a", "idx": i, "text": f"Chunk {i} is a longish line of text.\n"}
                         for i in range(5)])
    s = sample_thoughts(ckpt, chunks, str(tmp_path / "out"), K=4, max_thought_tokens=THOUGHT, device="cpu")
    assert s["chunks"] == 5 and s["not_round_trip"] > 0.5
    rows = shard_rows(str(tmp_path / "out"))
    assert any(len(tok.encode(x["text"])) > THOUGHT for r in rows for x in r["samples"])  # longer than sampled


def test_tempered_proposal_records_its_own_log_q(setup):
    # E-step 1 at a temperature T: log q is the tempered proposal's, log p the model's own; resuming the T = 1
    # output at another T is refused (the two would mix in one E-step)
    T, out = 0.5, str(setup["d"] / "tempered")
    sample_thoughts(setup["ckpt"], setup["chunks"], out, temperature=T, **setup["kw"])
    m = rigged_model()
    by_id = {c["id"]: (doc, i) for doc in read_chunks(setup["chunks"]) for i, c in enumerate(doc)}
    rows = shard_rows(out)
    for r in rows:
        doc, i = by_id[r["id"]]
        for s in r["samples"]:
            logq, logp = recomputed(m, chunk_prefix(doc, i, 3), doc[i]["text"], s, temperature=T)
            assert abs(logq - s["logq"]) < 1e-4 and abs(logp - s["logp"]) < 1e-4
            assert abs(s["logw"] - (s["logp"] - s["logq"])) < 1e-9
    # a sharper proposal: its thoughts are more probable under their own q than the T = 1 thoughts under theirs
    mean_logq = lambda rs: sum(s["logq"] / max(1, s["n_tokens"]) for r in rs for s in r["samples"]) / sum(len(r["samples"]) for r in rs)
    assert mean_logq(rows) > mean_logq(shard_rows(setup["full"]))
    with pytest.raises(ValueError, match="temperature"):
        sample_thoughts(setup["ckpt"], setup["chunks"], setup["full"], temperature=T, **setup["kw"])


@pytest.mark.parametrize("bad, engine, message", [(0, "torch", "must be a number > 0"), (-1.0, "torch", "must be a number > 0"),
                                                  (0.7, "vllm", "vllm engine samples at temperature 1 only")])
def test_bad_temperature_is_refused_before_any_work(tmp_path, bad, engine, message):
    out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        sample_thoughts(str(tmp_path / "none.pt"), str(tmp_path / "none.jsonl"), out, temperature=bad, engine=engine)
    assert not os.path.exists(out)


def test_bad_chunk_file_names_its_line(setup):
    bad = str(setup["d"] / "bad.chunks.jsonl")
    with open(bad, "w") as f:
        f.write('{"id": "a:0", "doc": "a", "idx": 0, "text": "x"}\n{"id": "a:1", "doc": "a"}\n')
    with pytest.raises(ValueError, match="bad.chunks.jsonl:2"):
        sample_thoughts(setup["ckpt"], bad, str(setup["d"] / "bad"), device="cpu")


def test_K_below_one_is_refused_before_any_work(tmp_path):
    out = str(tmp_path / "out")
    for K in (0, -1):  # the checkpoint and chunks need not exist: K is checked first
        with pytest.raises(ValueError, match=rf"K \(thoughts sampled per chunk\) must be an integer >= 1, got {K}"):
            sample_thoughts(str(tmp_path / "none.pt"), str(tmp_path / "none.jsonl"), out, K=K, device="cpu")
    assert not os.path.exists(out)
