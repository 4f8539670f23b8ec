"""sample_thoughts.py --engine=vllm against a loopback server (tests/vllm_loopback.py: our GPT behind vLLM's request
and response shapes, on the CPU): the same thoughts, log q, log p and log w as the in-process E-step given the same
samples; the same outputs through a server that fails, stalls and restarts; a resumed run byte-identical; a server
with another model refused before any work."""
import json
import os
import signal
import sys

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


FAKE_VLLM = os.path.join(os.path.dirname(__file__), "fake_vllm", "vllm")


def write_launcher(bin_dir, body):
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "vllm")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, 0o755)


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """`vllm` first on PATH: tests/fake_vllm/vllm under this interpreter (sys.executable), not the first `python3` on
    PATH, which in a virtual environment that is not activated has no torch."""
    write_launcher(str(tmp_path / "bin"), f'exec "{sys.executable}" "{FAKE_VLLM}" "$@"')
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ["PATH"])


def running_in_group(pgid):
    """The pids of process group pgid that still run (zombies, which run nothing and hold no memory, left out)."""
    pids = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:  # ended meanwhile
            continue
        state, _, pgrp = stat[stat.rindex(")") + 2:].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            pids.append(int(d))
    return pids


def server_pids(d):
    with open(os.path.join(d, "vllm_pids.json")) as f:
        return json.load(f)


def test_em_starts_and_stops_the_server(world, tmp_path, fake_vllm):
    """em.py's --estep_engine=vllm: M_{t-1} exported, `vllm serve` started on it (a fake vllm on PATH running the
    loopback server on the exported directory), the E-step run against it, the server stopped with the processes it
    started, also on an error."""
    import em
    port = free_port()
    cfg = dict(em.DEFAULTS, estep_engine="vllm", vllm_url="", vllm_port=port, vllm_tensor_parallel=2)
    d = str(tmp_path / "estep")
    em.run_estep(cfg, world["ckpt"], d, lambda **engine: sample_thoughts(world["ckpt"], world["chunks"], d,
                                                                         **world["kw"], **engine))
    assert_same_estep(world["ref"], d)  # through the export and back: the same model
    with open(os.path.join(d, "vllm_argv.json")) as f:
        argv = " ".join(json.load(f))
    assert "--tensor-parallel-size 2" in argv and "--logprobs-mode processed_logprobs" in argv
    assert f"--max-model-len {rigged_model().config.block_size}" in argv
    assert f"--gpu-memory-utilization {em.DEFAULTS['vllm_gpu_memory_utilization']}" in argv
    url = f"http://127.0.0.1:{port}/v1"
    assert not vllm_engine.healthy(url)  # stopped
    assert running_in_group(server_pids(d)["pgid"]) == []  # and its engine core with it

    def fails(**engine):
        assert vllm_engine.healthy(engine["base_url"])
        raise RuntimeError("E-step failed")
    with pytest.raises(RuntimeError, match="E-step failed"):
        em.run_estep(dict(cfg, vllm_gpu_memory_utilization=0.55), world["ckpt"], str(tmp_path / "e2"), fails)
    assert not vllm_engine.healthy(url)
    assert running_in_group(server_pids(str(tmp_path / "e2"))["pgid"]) == []
    with open(tmp_path / "e2" / "vllm_argv.json") as f:
        assert "--gpu-memory-utilization 0.55" in " ".join(json.load(f))


def test_release_gpu_memory_empties_the_cache_of_a_process_that_used_cuda(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    vllm_engine.release_gpu_memory()
    assert emptied == []  # no CUDA context is made only to be emptied
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    vllm_engine.release_gpu_memory()
    assert emptied == [1]


def test_serving_stops_the_server_group_even_a_process_deaf_to_sigterm(world, tmp_path, fake_vllm, monkeypatch):
    """The server runs in its own session (a signal to our process group does not reach it) and is stopped with
    every process it started: here an engine core that ignores SIGTERM, killed after STOP_TIMEOUT. GPU memory is
    released before the server starts."""
    monkeypatch.setenv("FAKE_VLLM_STUBBORN", "1")
    monkeypatch.setattr(vllm_engine, "STOP_TIMEOUT", 1.0)
    events, release, popen = [], vllm_engine.release_gpu_memory, vllm_engine.subprocess.Popen
    monkeypatch.setattr(vllm_engine, "release_gpu_memory", lambda: (events.append("release"), release()))
    monkeypatch.setattr(vllm_engine.subprocess, "Popen", lambda *a, **kw: (events.append("start"), popen(*a, **kw))[1])
    d = str(tmp_path / "s")
    os.makedirs(d)
    with vllm_engine.serving(world["ckpt"], d, port=free_port()) as url:
        assert vllm_engine.healthy(url)
        pids = server_pids(d)
        assert pids["pgid"] == pids["server"] != os.getpgid(0)  # a session of its own
        assert set(running_in_group(pids["pgid"])) == {pids["server"], pids["core"]}
    assert events == ["release", "start"]
    assert running_in_group(pids["pgid"]) == []


def test_sigterm_to_the_trainer_stops_the_server(world, tmp_path, fake_vllm):
    """torchrun stops a rank with os.killpg(SIGTERM), which no longer reaches the server: a rank 0 stopped so
    stops the server's group on its way out."""
    import subprocess
    d, port = str(tmp_path / "t"), free_port()
    os.makedirs(d)
    code = ("import sys, time, vllm_engine\n"
            f"with vllm_engine.serving({world['ckpt']!r}, {d!r}, port={port}):\n"
            "    print('serving', flush=True)\n"
            "    time.sleep(600)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "serving\n"
        pids = server_pids(d)
        assert running_in_group(pids["pgid"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert running_in_group(pids["pgid"]) == [] and not vllm_engine.healthy(f"http://127.0.0.1:{port}/v1")


def _rank_worker(rank, port, server_port, ckpt, out, bin_dir):
    """One torchrun rank of em.py's E-step with a server started here: a server that fails to start, then one that
    does. Writes what it saw to out/rank{rank}.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    from common import setup, teardown
    setup("cpu")
    seen = {}
    if rank != 0:  # only rank 0 starts a server
        def refuse(*a, **kw):
            raise AssertionError(f"rank {rank} started a process")
        vllm_engine.subprocess.Popen = refuse
    broken = os.path.join(bin_dir, "broken")
    write_launcher(broken, "exit 3")  # a vllm that fails at once
    path = os.environ["PATH"]
    os.environ["PATH"] = broken + os.pathsep + path
    try:
        with vllm_engine.serving(ckpt, os.path.join(out, "broken"), port=server_port):
            pass
    except vllm_engine.ServerError as e:
        seen["broken"] = str(e)
    os.environ["PATH"] = path
    d = os.path.join(out, "estep")
    with vllm_engine.serving(ckpt, d, port=server_port) as url:
        seen.update(url=url, healthy=vllm_engine.healthy(url))
    seen["healthy_after"] = vllm_engine.healthy(url)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)
    teardown()


def test_two_ranks_share_one_server_started_by_rank0(world, tmp_path, fake_vllm):
    """Under torchrun (two gloo ranks here, the process group as common.setup makes it): rank 0 starts the one
    server and the other rank, which starts no process, uses its URL; a server that fails to start fails every
    rank; the server is stopped once both are done."""
    out = str(tmp_path / "ranks")
    for sub in ("broken", "estep"):
        os.makedirs(os.path.join(out, sub))
    torch.multiprocessing.spawn(_rank_worker, args=(free_port(), free_port(), world["ckpt"], out,
                                                    str(tmp_path / "bin2")), nprocs=2)
    seen = []
    for rank in range(2):
        with open(os.path.join(out, f"rank{rank}.json")) as f:
            seen.append(json.load(f))
    assert "exited with 3 before it was healthy" in seen[0]["broken"]
    assert seen[1]["broken"].startswith("rank 0 could not start the vLLM server: ServerError: vllm serve exited")
    assert seen[0]["url"] == seen[1]["url"] and seen[0]["healthy"] and seen[1]["healthy"]
    assert not seen[0]["healthy_after"] and not seen[1]["healthy_after"]
    assert running_in_group(server_pids(os.path.join(out, "estep"))["pgid"]) == []


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_process_group_on_gpus_reduces_cpu_tensors_and_outwaits_the_server_start(monkeypatch):
    """common.setup on GPUs under torchrun: the group has gloo for CPU tensors beside NCCL (sample_thoughts.py with
    engine=vllm all_reduces its counters on the CPU), and a timeout longer than rank 0's longest stage alone, the
    vLLM server's start included (the other ranks wait for it in a collective)."""
    import inspect
    import common
    from torch.distributed.distributed_c10d import Backend, BackendConfig
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: calls.append((backend, kw)))
    common.setup("cuda")
    (backend, kw), = calls
    assert BackendConfig(Backend(backend)).get_device_backend_map() == {"cpu": "gloo", "cuda": "nccl"}
    start_timeout = inspect.signature(vllm_engine.serving).parameters["start_timeout"].default
    assert kw["timeout"].total_seconds() > start_timeout + 600
    monkeypatch.setenv("DIST_TIMEOUT_MIN", "300")
    common.setup("cuda")
    assert calls[-1][1]["timeout"].total_seconds() == 300 * 60
    common.setup("cpu")
    assert calls[-1][0] == "gloo"
