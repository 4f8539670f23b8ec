"""
The E-step's sampling and scoring on an OpenAI-compatible vLLM server (sample_thoughts.py --engine=vllm).

    vllm serve DIR --logprobs-mode processed_logprobs      # DIR: python -m hf export --ckpt=CKPT.pt --out=DIR
    python sample_thoughts.py --engine=vllm --base_url=http://HOST:8000/v1 --ckpt=CKPT.pt --chunks=... --out_dir=...

Server plays the model's part in sample_thoughts.infer_batch: Server.generate and Server.score take and return what
GPT.generate and GPT.score do, so everything else (prompts, weights, selection, shards, resuming) is the same code.
The local checkpoint is still loaded (on the CPU): for the block size, and to check the server against it.

Requests (vLLM's OpenAI-compatible server, /v1/completions; fields as in vLLM 0.10-0.11's CompletionRequest,
vllm/entrypoints/openai/protocol.py, and in later releases vllm/entrypoints/openai/completion/protocol.py):
  sampling  one request per chunk: prompt = the posterior prompt's token ids, n = K, temperature 1, top_p 1,
            top_k 0 (off), max_tokens, stop_token_ids [<|END_OF_LATENT|>], allowed_token_ids (every token but
            the banned control tokens), seed, logprobs 0 (the sampled token's log-prob only),
            return_tokens_as_token_ids (tokens come back as "token_id:N"), ignore_eos. The stop token is part of
            the returned tokens (vLLM stops after appending it).
  scoring   one request per chunk: prompt = its K joint sequences (a list of token-id lists), echo with
            max_tokens 0 (vLLM's "echo without generation", so a sequence may fill max_model_len), prompt_logprobs 0:
            choices[i].prompt_logprobs[t] = {token id: {"logprob", "rank", "decoded_token"}}, the first entry null.

What log q means here. vLLM returns, by default (--logprobs-mode raw_logprobs), the log-probs of the raw logits,
before allowed_token_ids, logit_bias or temperature (vllm/v1/sample/sampler.py, Sampler.forward). The proposal
bans the control tokens inside a thought, so its log q must be of the renormalised distribution: the server must
run with --logprobs-mode processed_logprobs, under which the returned log-prob is of the distribution the token
was drawn from, the banned tokens masked to -inf (exact, as in the torch engine; logit_bias -100 would not be).
check() asks for it: a probe restricted to two allowed tokens gives log-probs that only processed_logprobs
explains. What is not exact: the server computes in its own dtype (bf16 on a GPU), so log q and log p differ from
the torch engine's by the rounding of that dtype, and its samples come from its own RNG: seeded per request
(seed from (seed, shard, batch, chunk)), reproducible on the same server and batch, not the torch engine's.
"""
import gc
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from common import barrier, from_rank0, load_checkpoint, rank0
from hf import export_hf

RETRY_STATUS = (408, 429, 500, 502, 503, 504)  # the server is busy, restarting or failed: the same request may pass


class ServerError(RuntimeError):
    pass


def request_seed(seed, j):
    # chunk j of a batch: its own seed, so the chunks of a batch draw independent noise
    return int(np.random.SeedSequence([int(seed), int(j)]).generate_state(1)[0])


def root_of(base_url):
    # http://host:port/v1 -> http://host:port (where vLLM serves /health and /detokenize)
    return base_url.rstrip("/").removesuffix("/v1")


def get_json(url, body=None, timeout=60.0):
    """One HTTP request (POST when body is given); the JSON reply. Raises urllib's errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def healthy(base_url, timeout=5.0):
    try:
        with urllib.request.urlopen(root_of(base_url) + "/health", timeout=timeout) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError):
        return False


class Server:
    """A vLLM server seen as the E-step's model: generate and score as GPT's, the requests spread over `concurrency`
    threads (vLLM batches concurrent requests itself), each retried with exponential backoff when the server fails,
    stalls past `timeout` or is restarting, up to `retries` times."""

    def __init__(self, base_url, vocab_size, model=None, concurrency=16, timeout=600.0, retries=10, backoff=0.5):
        self.base_url, self.vocab_size = base_url.rstrip("/"), vocab_size
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.requests = 0  # sent, retries included
        card = self.call("GET", "/models")["data"][0]  # the served model: its name and context
        self.model = model or card["id"]
        self.max_model_len = card.get("max_model_len")

    def call(self, method, path, body=None, url=None):
        url = url or self.base_url + path
        for attempt in range(self.retries + 1):
            self.requests += 1
            try:
                return get_json(url, body if method == "POST" else None, self.timeout)
            except urllib.error.HTTPError as e:
                detail = e.read().decode(errors="replace")[:500]
                if e.code not in RETRY_STATUS:  # a request the server rejects will be rejected again
                    raise ServerError(f"{url}: HTTP {e.code}: {detail}") from None
                err = f"HTTP {e.code}: {detail}"
            except (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError, json.JSONDecodeError) as e:
                err = repr(e)
            if attempt < self.retries:
                time.sleep(min(30.0, self.backoff * 2 ** attempt) * (0.5 + random.random()))  # jitter: no stampede
        raise ServerError(f"{url}: no answer after {self.retries + 1} tries, the last: {err}")

    def completions(self, bodies):
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda b: self.call("POST", "/completions", {"model": self.model, **b}), bodies))

    def generate(self, prompts, num_samples=1, max_new_tokens=256, temperature=1.0, stop_tokens=None,
                 banned_tokens=None, seed=0):
        """As GPT.generate: (tokens, logprobs, finished) per row, prompt-major, a finished row ending with its stop
        token. E-step 1 on the server: Z_k ~ q(Z | X, P), temperature 1, no top-k/top-p, log-probs = log q."""
        stop = sorted(set(stop_tokens or []))
        banned = set(banned_tokens or [])
        allowed = [t for t in range(self.vocab_size) if t not in banned] if banned else None
        bodies = [dict(prompt=list(p), n=num_samples, max_tokens=max_new_tokens, temperature=temperature, top_p=1.0,
                       top_k=0, min_p=0.0, repetition_penalty=1.0, seed=request_seed(seed, j), logprobs=0, return_tokens_as_token_ids=True,
                       stop_token_ids=stop, allowed_token_ids=allowed, ignore_eos=True, skip_special_tokens=False)
                  for j, p in enumerate(prompts)]
        toks, logprobs, finished = [], [], []
        for reply in self.completions(bodies):
            choices = sorted(reply["choices"], key=lambda c: c["index"])
            if len(choices) != num_samples:
                raise ServerError(f"asked for n={num_samples} samples, got {len(choices)}")
            for c in choices:
                lp = c["logprobs"]
                ids = [int(t.removeprefix("token_id:")) for t in lp["tokens"]]
                done = c["finish_reason"] == "stop"
                if done and (not ids or ids[-1] not in stop):
                    raise ServerError(f"a sample stopped (stop_reason {c.get('stop_reason')!r}) without ending in "
                                      f"one of the stop tokens {stop}: its log q would lack the stop token's")
                toks.append(ids)
                logprobs.append([float(x) for x in lp["token_logprobs"]])
                finished.append(done)
        return toks, logprobs, finished

    def score(self, seqs, starts, max_logits=None):
        """As GPT.score: sum of log p(seq[t] | seq[:t]) for t >= start, per row (a (B,) float32 tensor). E-step 2 on
        the server: the joint sequences' prompt log-probs. Neighbouring rows with the same head seq[:start] (the K
        of one chunk) go in one request. max_logits: GPT.score's memory bound, nothing to bound here."""
        groups = []
        for i in range(len(seqs)):
            if groups and seqs[i][:starts[i]] == seqs[groups[-1][0]][:starts[groups[-1][0]]]:
                groups[-1].append(i)
            else:
                groups.append([i])
        bodies = [dict(prompt=[list(seqs[i]) for i in g], echo=True, max_tokens=0, prompt_logprobs=0,
                       temperature=1.0) for g in groups]
        out = torch.zeros(len(seqs), dtype=torch.float32)
        for g, reply in zip(groups, self.completions(bodies)):
            for c in reply["choices"]:
                i = g[c["index"]]
                out[i] = sum(prompt_logprobs(c, seqs[i])[starts[i]:])
        return out


def prompt_logprobs(choice, seq):
    """log p(seq[t] | seq[:t]) for every t (0 for t = 0) from a choice of an echo request with prompt_logprobs."""
    plp = choice["prompt_logprobs"]
    if plp is None or len(plp) != len(seq):
        raise ServerError(f"prompt_logprobs for {len(plp or [])} positions of a {len(seq)}-token sequence")
    return [0.0] + [float(plp[t][str(seq[t])]["logprob"]) for t in range(1, len(seq))]


def check(server, model, tok, block_size, tol=0.1):
    """Before the E-step: the server serves this checkpoint with this tokenizer, and returns the log-probs the
    E-step needs. Raises ServerError saying what differs."""
    if server.max_model_len is not None and server.max_model_len < block_size:
        raise ServerError(f"the server's max_model_len {server.max_model_len} < the checkpoint's block_size "
                          f"{block_size}: start it with --max-model-len {block_size}")
    # the vocabulary: the control tokens decode to their names, and the last id exists
    ids = [tok.eot] + tok.latent_ids + [tok.n_vocab - 1]
    for t in ids:
        try:
            got = server.call("POST", None, {"model": server.model, "tokens": [t]},
                              url=root_of(server.base_url) + "/detokenize")["prompt"]
        except ServerError as e:
            raise ServerError(f"the server cannot decode token {t} of the checkpoint's tokenizer "
                              f"({tok.decode([t])!r}): another tokenizer? {e}") from None
        if t != ids[-1] and got != tok.decode([t]):
            raise ServerError(f"token {t} is {got!r} on the server but {tok.decode([t])!r} in the checkpoint's "
                              f"tokenizer: export the checkpoint with python -m hf export and serve that")
    # a probe sequence with text and the four latent tokens: its log-probs on the server against the local model's
    probe = [tok.eot] + tok.encode("The probe: 1 + 2 = 3.") + [tok.sol, tok.prior] + tok.encode("so 3") + \
        [tok.eol] + tok.encode(" Done.") + [tok.sol, tok.posterior]
    with torch.no_grad():
        logits = model(torch.tensor([probe]))[0][0, :, :model.config.vocab_size].float()
    local = F.log_softmax(logits, -1)[torch.arange(len(probe) - 1), torch.tensor(probe[1:])]
    body = dict(prompt=[probe], echo=True, max_tokens=0, prompt_logprobs=0, temperature=1.0)
    got = torch.tensor(prompt_logprobs(server.completions([body])[0]["choices"][0], probe)[1:])
    err = (got - local).abs()
    if not torch.isfinite(got).all() or err.mean() > tol:
        raise ServerError(f"the server's log-probs of a probe sequence differ from the checkpoint's by "
                          f"{err.mean():.3f} per token on average (max {err.max():.3f}): it serves another model")
    # processed log-probs: sampling restricted to two tokens, the returned log-probs are those of the pair
    a, b = tok.encode("a")[0], tok.encode("b")[0]
    toks, lps, _ = server.generate([probe], 1, 4, banned_tokens=[t for t in range(tok.n_vocab) if t not in (a, b)],
                                   seed=0)
    seq = probe + toks[0]
    with torch.no_grad():
        logits = model(torch.tensor([seq]))[0][0, len(probe) - 1:-1, :model.config.vocab_size].float()
    pair = F.log_softmax(logits[:, [a, b]], -1)
    want = [float(pair[i, 0 if t == a else 1]) for i, t in enumerate(toks[0])]
    if any(t not in (a, b) for t in toks[0]) or max(abs(x - y) for x, y in zip(lps[0], want)) > tol:
        raise ServerError("the server's sampled log-probs are not those of the distribution it sampled from (with "
                          "banned tokens removed): start it with --logprobs-mode processed_logprobs")


# vLLM takes this fraction of each GPU's memory (weights, activations, KV cache): --gpu-memory-utilization, whose
# default of 0.9 a server started here may not get. vLLM refuses to start unless that much is free when it starts
# ("Free memory on device ... is less than desired GPU memory utilization"), and on the GPUs the server shares with
# em.py each rank keeps its CUDA context (about half a GiB) and whatever em.py still references there. 0.8 leaves a
# fifth of each GPU to them (16 GB of an 80 GB GPU). em.py: vllm_gpu_memory_utilization.
GPU_MEMORY_UTILIZATION = 0.8
# How long a stopped server's processes get to exit after SIGTERM before SIGKILL: under torchrun less than the
# 30 s its agent gives a worker between SIGTERM and SIGKILL (torch.distributed.elastic's close timeout), so a
# rank 0 stopped by torchrun still stops its server.
STOP_TIMEOUT = 20.0


def release_gpu_memory():
    """Hand this process's unused GPU memory back to the driver, for a server in another process: the trainer's
    blocks sit in torch's caching allocator after their tensors die, free to torch but not to vLLM."""
    gc.collect()  # tensors kept only by reference cycles (a model, an optimizer's state) die here
    if torch.cuda.is_initialized():  # not is_available(): no CUDA context made only to be emptied
        torch.cuda.empty_cache()


def stop_group(proc):
    """Stop the server started as proc in its own session, and every process it started: vLLM's API server spawns
    engine-core and worker processes, which a signal to the API server alone leaves running, on the GPUs.
    SIGTERM to the group (vLLM shuts down its workers on it), SIGKILL to whatever is left STOP_TIMEOUT s later."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # the group is gone already
        pass
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass
    try:
        # the API server exits after its workers (it joins them on shutdown): those left now are stuck or orphaned
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@contextmanager
def sigterm_raises():
    """SIGTERM to this process raises SystemExit while inside, so `finally` blocks run (the default ends Python at
    once). The server started here is in its own session, out of reach of a signal to ours (torchrun stops its
    workers with os.killpg(SIGTERM)): this stops it on the way out. Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one would cut the clean-up short
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_server(ckpt, out_dir, port, tensor_parallel, gpu_memory_utilization, start_timeout):
    """Export ckpt to out_dir/hf and start `vllm serve` on it (flags as in vLLM's `vllm serve --help`), in its own
    session; returns the process once the server is healthy, or stops it and raises ServerError."""
    hf = os.path.join(out_dir, "hf")
    model, checkpoint = load_checkpoint(ckpt)
    export_hf(model, checkpoint["tokenizer"], hf)
    # `vllm` as found on PATH, not this interpreter's `python -m vllm`: vLLM pins its own torch, so it often lives
    # in an environment of its own
    cmd = ["vllm", "serve", hf, "--port", str(port), "--max-model-len", str(model.config.block_size),
           "--tensor-parallel-size", str(tensor_parallel), "--logprobs-mode", "processed_logprobs",
           "--dtype", "bfloat16", "--generation-config", "vllm",  # vllm: no sampling defaults from the export
           "--gpu-memory-utilization", str(gpu_memory_utilization)]
    del model
    base = f"http://127.0.0.1:{port}/v1"
    log_path = os.path.join(out_dir, "vllm.log")
    with open(log_path, "ab") as log:
        # its own session (process group): stop_group reaches the processes it spawns, and none of ours
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.time()
        while not healthy(base):
            if proc.poll() is not None:
                raise ServerError(f"vllm serve exited with {proc.returncode} before it was healthy; see {log_path}")
            if time.time() - t0 > start_timeout:
                raise ServerError(f"vllm serve not healthy after {start_timeout:.0f}s; see {log_path}")
            time.sleep(1.0)
    except BaseException:
        stop_group(proc)
        raise
    return proc


@contextmanager
def serving(ckpt, out_dir, url="", port=8000, tensor_parallel=1, gpu_memory_utilization=GPU_MEMORY_UTILIZATION,
            start_timeout=1800.0):
    """em.py's E-step server: yields the base URL of a vLLM server for ckpt. url given: that server (run by the
    user). Otherwise rank 0 exports ckpt to out_dir/hf, starts `vllm serve` on it with its tensor-parallel workers
    on the node's GPUs, and stops it on the way out, also on an error; under torchrun the other ranks wait for it
    and send their requests to it (one server, one port), and it is stopped once every rank is done."""
    if url:
        yield url
        return
    # every rank, and then the server starts: its tensor_parallel workers take the node's first GPUs, whichever
    # ranks compute on them
    release_gpu_memory()
    barrier()
    proc, failure = None, None
    with sigterm_raises() if rank0() else nullcontext():
        if rank0():
            try:
                proc = start_server(ckpt, out_dir, port, tensor_parallel, gpu_memory_utilization, start_timeout)
            except Exception as e:
                failure = e
        # the others wait here until the server is healthy, or has failed to start
        error = f"{type(failure).__name__}: {failure}" if failure is not None else None
        shared = from_rank0({"host": socket.gethostname(), "error": error})
        if failure is not None:
            raise failure
        if shared["error"]:
            raise ServerError(f"rank 0 could not start the vLLM server: {shared['error']}")
        # vLLM serves on every interface (no --host): ranks on rank 0's node reach it on the loopback
        host = "127.0.0.1" if shared["host"] == socket.gethostname() else shared["host"]
        done = False
        try:
            yield f"http://{host}:{port}/v1"
            done = True
        finally:
            # every rank meets once more, after its E-step or its error (a rank that dies instead ends the job:
            # torchrun stops every rank); on an error rank 0 stops the server first, so that the other ranks'
            # requests fail (after their retries, minutes) rather than wait for their whole share of the work
            if rank0() and not done:
                stop_group(proc)
            barrier()
            if rank0() and done:
                stop_group(proc)
