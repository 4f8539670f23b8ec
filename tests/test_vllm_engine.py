"""sample_thoughts.py --engine=vllm against a loopback server (tests/vllm_loopback.py: our GPT behind vLLM's request
and response shapes, on the CPU): the same thoughts, log q, log p and log w as the in-process E-step given the same
samples; the same outputs through a server that fails, stalls and restarts; a resumed run byte-identical; a server
with another model refused before any work."""
import json
import os

import pytest
import torch

import vllm_engine
from common import save_checkpoint
from model import GPT
from sample_thoughts import sample_thoughts
from tests.test_sample_thoughts import one_thread, rigged_model, shard_rows, read_bytes, THOUGHT, tok  # noqa: F401
from tests.vllm_loopback import start
from data.files import write_jsonl


def per_prompt_generate(orig):
    # the in-process engine drawing as the server does: each chunk's K samples alone, seeded per chunk
    def generate(self, prompts, num_samples=1, seed=None, **kw):
        out = [orig(self, [p], num_samples=num_samples, seed=vllm_engine.request_seed(seed, j), **kw)
               for j, p in enumerate(prompts)]
        return tuple([x for o in out for x in o[i]] for i in range(3))
    return generate


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("vllm")
    ckpt = str(d / "m.pt")
    m = rigged_model()
    save_checkpoint(ckpt, m, "byte", True, {})
    rows = [{"id": f"d{doc}:{i}", "doc": f"d{doc}", "idx": i, "text": f"Step {i}: {doc}*{i}={doc * i}.\n"}
            for doc in range(6) for i in range(1 + doc % 3)]
    chunks = str(d / "chunks.jsonl")
    write_jsonl(chunks, rows)
    kw = dict(K=3, max_thought_tokens=THOUGHT, shard_size=4, batch_size=2, seed=7, device="cpu")
    # the in-process E-step with the server's sampling scheme
    mp = pytest.MonkeyPatch()
    mp.setattr(GPT, "generate", per_prompt_generate(GPT.generate))
    ref = str(d / "torch")
    sample_thoughts(ckpt, chunks, ref, **kw)
    mp.undo()
    server = start(rigged_model(), tok)
    yield dict(d=d, ckpt=ckpt, chunks=chunks, kw=kw, ref=ref, server=server,
               url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    server.shutdown()


def assert_same_estep(a, b):
    ra, rb = shard_rows(a), shard_rows(b)
    assert [r["id"] for r in ra] == [r["id"] for r in rb] and len(ra) == 12
    for x, y in zip(ra, rb):
        assert x["thought"] == y["thought"] and x["chosen"] == y["chosen"]
        for s, t in zip(x["samples"], y["samples"]):
            assert s["text"] == t["text"] and s["truncated"] == t["truncated"] and s["n_tokens"] == t["n_tokens"]
            for k in ("logq", "logp", "logw"):
                assert abs(s[k] - t[k]) < 1e-4, (k, s[k], t[k])
    assert read_bytes(os.path.join(a, "thoughts.jsonl")) == read_bytes(os.path.join(b, "thoughts.jsonl"))
    assert read_bytes(os.path.join(a, "aug.bin")) == read_bytes(os.path.join(b, "aug.bin"))


def test_same_as_in_process(world):
    out = str(world["d"] / "vllm")
    summary = sample_thoughts(world["ckpt"], world["chunks"], out, engine="vllm", base_url=world["url"],
                              **world["kw"])
    assert_same_estep(world["ref"], out)
    samples = [s for r in shard_rows(out) for s in r["samples"]]
    assert any(s["truncated"] for s in samples) and sum(not s["truncated"] for s in samples) > 10  # both kinds
    with open(os.path.join(world["ref"], "summary.json")) as f:
        ref = json.load(f)
    assert abs(summary["elbo"] - ref["elbo"]) < 1e-4 and summary["chunks"] == 12
    with open(os.path.join(out, "settings.json")) as f:
        assert json.load(f)["engine"] == "vllm"  # a torch run's shards are not continued by this engine


def test_faults_and_resume(world):
    """A server that answers 500 to every 4th request, stalls past the client's timeout once, and is stopped
    and restarted on the same port between shards; a run killed after one shard and resumed."""
    flaky = start(rigged_model(), tok, fail_every=4, stall=(6, 2.0))
    port = flaky.server_address[1]
    url = f"http://127.0.0.1:{port}/v1"
    out = str(world["d"] / "faulty")
    kw = dict(world["kw"], engine="vllm", base_url=url, vllm_timeout=1.0, vllm_retries=8, vllm_concurrency=2)
    assert sample_thoughts(world["ckpt"], world["chunks"], out, stop_after_shards=1, **kw) == \
        {"stopped_after_shards": 1}
    assert flaky.count["n"] >= 8  # the failures (every 4th) and the stall (the 6th) were met, and retried
    flaky.shutdown()
    flaky.server_close()
    # down while the next run starts: its first requests are refused, then the server comes back on the port
    import threading
    back = []
    threading.Timer(0.5, lambda: back.append(start(rigged_model(), tok, port=port, fail_every=3))).start()
    sample_thoughts(world["ckpt"], world["chunks"], out, **kw)
    assert back and back[0].count["n"] >= 3
    back[0].shutdown()
    assert_same_estep(world["ref"], out)


def test_wrong_server_refused(world, tmp_path):
    other = GPT(rigged_model().config)  # another (random) model behind the same tokenizer
    server = start(other, tok)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    with pytest.raises(vllm_engine.ServerError, match="another model"):
        sample_thoughts(world["ckpt"], world["chunks"], str(tmp_path / "x"), engine="vllm", base_url=url,
                        **world["kw"])
    server.shutdown()
    assert not os.path.exists(tmp_path / "x" / "shards")  # refused before any work


def test_raw_logprobs_refused(world, monkeypatch):
    # a server under vLLM's default --logprobs-mode raw_logprobs: sampled log-probs of the unrestricted distribution
    import tests.vllm_loopback as loopback
    real = loopback.completion

    def raw(model, tok_, body):
        code, obj = real(model, tok_, body)
        if body.get("allowed_token_ids") is None or body.get("echo"):
            return code, obj
        for c in obj["choices"]:
            ids = [int(t.split(":")[1]) for t in c["logprobs"]["tokens"]]
            p = body["prompt"]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([p + ids]))[0][0, :, :model.config.vocab_size], -1)
            c["logprobs"]["token_logprobs"] = [float(lp[len(p) - 1 + i, t]) for i, t in enumerate(ids)]
        return code, obj

    monkeypatch.setattr(loopback, "completion", raw)
    server = vllm_engine.Server(world["url"], tok.n_vocab)
    with pytest.raises(vllm_engine.ServerError, match="processed_logprobs"):
        vllm_engine.check(server, rigged_model(), tok, rigged_model().config.block_size)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_em_starts_and_stops_the_server(world, tmp_path, monkeypatch):
    """em.py's --estep_engine=vllm: M_{t-1} exported, `vllm serve` started on it (a fake vllm on PATH running the
    loopback server on the exported directory), the E-step run against it, the server stopped, also on an error."""
    import em
    monkeypatch.setenv("PATH", os.path.join(os.path.dirname(__file__), "fake_vllm") + os.pathsep + os.environ["PATH"])
    port = free_port()
    cfg = dict(estep_engine="vllm", vllm_url="", vllm_port=port, vllm_tensor_parallel=2)
    d = str(tmp_path / "estep")
    em.run_estep(cfg, world["ckpt"], d, lambda **engine: sample_thoughts(world["ckpt"], world["chunks"], d,
                                                                         **world["kw"], **engine))
    assert_same_estep(world["ref"], d)  # through the export and back: the same model
    with open(os.path.join(d, "vllm_argv.json")) as f:
        argv = " ".join(json.load(f))
    assert "--tensor-parallel-size 2" in argv and "--logprobs-mode processed_logprobs" in argv
    assert f"--max-model-len {rigged_model().config.block_size}" in argv
    url = f"http://127.0.0.1:{port}/v1"
    assert not vllm_engine.healthy(url)  # stopped

    def fails(**engine):
        assert vllm_engine.healthy(engine["base_url"])
        raise RuntimeError("E-step failed")
    with pytest.raises(RuntimeError, match="E-step failed"):
        em.run_estep(cfg, world["ckpt"], str(tmp_path / "e2"), fails)
    assert not vllm_engine.healthy(url)
