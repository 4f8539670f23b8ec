"""
E-step (docs/method.md, E-step): infer a latent thought Z for every chunk X of a chunk file with the current model.

    python sample_thoughts.py --ckpt=runs/default/m0/ckpt.pt --chunks=runs/default/data/boot.chunks.jsonl \
        --out_dir=runs/default/iter1/estep
    torchrun --nproc_per_node=8 sample_thoughts.py ...          # shards spread over the GPUs
    python sample_thoughts.py --engine=vllm --base_url=http://HOST:8000/v1 ...   # on a vLLM server (vllm_engine.py)

For each chunk X with prefix P: K thoughts Z_k ~ q(Z | X, P) from the posterior prompt, each scored by the joint
log p(Z_k, X | P), log w_k = log p - log q, and ONE thought kept by resampling with the normalised weights.

out_dir/shards/shard_XXXXX.jsonl  per chunk: the K samples with log p, log q, log w, and the chosen one
out_dir/thoughts.jsonl            {"id", "thought"} in chunk-file order (the M-step's input)
out_dir/aug.bin                   the thought-augmented corpus (data.files.build_augmented_bin)
out_dir/summary.json              ELBO, effective sample size, truncation, speed (and agreement with gold thoughts)

Resuming: shards are fixed slices of the chunk file and their randomness depends only on (seed, shard index,
batch index), so a killed run restarted with the same settings skips the shards on disk and ends byte-identical
to an uninterrupted run, whatever the number of processes.

Truncated thoughts (no <|END_OF_LATENT|> within max_thought_tokens) are not complete thoughts of the latent
format, so they get weight 0 whenever at least one of the K finished: the mean weight then estimates
sum over finished Z of p(Z, X | P) <= p(X | P), so the ELBO stays a lower bound. If all K are truncated (counted
in all_truncated) we keep them all; their log q then lacks the stop token's probability, a small bias.

The proposal q bans the control tokens other than <|END_OF_LATENT|> inside a thought (a thought is text), and
records log-probs under that renormalised distribution, which is what importance weighting needs. On CUDA both
generate and score run under bf16 autocast: their log-softmaxes are float32, of bf16 logits.
"""
import json
import math
import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from configurator import apply, command_line, defaults_of, usage_error
from data.files import (build_augmented_bin, check_settings, chunk_prefix, read_chunks, read_jsonl, read_thoughts,
                        write_json, write_jsonl)
from data.latent import fit_context, joint_sequence, posterior_prompt, thought_stop_token
from common import load_checkpoint, print0, setup, teardown
from data.mathworld import complete, steps_valid, thought_result, thought_steps
from data.tokenizer import get_tokenizer
import vllm_engine

# ----------------------------------------------------------------------------- config
ckpt = ""                 # the current model (M_{t-1})
chunks = ""               # chunk file (data/files.py format)
out_dir = "out/estep"
K = 4                     # thoughts sampled per chunk (docs/method.md, E-step 1: 4)
temperature = 1.0         # the proposal's temperature (the paper: 1). log q is taken under the tempered proposal,
                          # so the weights p/q stay exact importance weights for any value (docs/notebook.md)
max_thought_tokens = 160  # paper: 1024
selection = "importance"  # importance | uniform | argmax
n_prefix = 3              # prefix chunks (docs/method.md, The official code's settings: 3 when bootstrapping)
seed = 0
batch_size = 64           # chunks per generate call, each with K rows
gold = None               # optional thoughts jsonl of gold thoughts: measure agreement of the chosen ones
shard_size = 2048         # chunks per shard: the unit of resuming and of multi-GPU work
device = "auto"
show = 0                  # print this many chunks with their K thoughts and weights
limit = None              # only the first `limit` documents (a quick look)
engine = "torch"          # torch: sample and score here | vllm: on the vLLM server at base_url (vllm_engine.py)
base_url = "http://localhost:8000/v1"  # --engine=vllm: the OpenAI-compatible server serving the exported ckpt
vllm_concurrency = 16     # --engine=vllm: requests in flight (the server batches them)
vllm_timeout = 600.0      # --engine=vllm: seconds before a request is retried
vllm_retries = 10         # --engine=vllm: retries per request, with exponential backoff
# -----------------------------------------------------------------------------
DEFAULTS = defaults_of(globals())
SELECTIONS = ("importance", "uniform", "argmax")
SCORE_LOGITS = 2 ** 27    # logits elements per model.score group: bounds memory with a 50k vocabulary
SCORE_TOKENS_CPU = 4096   # on a CPU, groups of about this many tokens: faster than one big group at the default
                          # model, its activations staying in cache (docs/benchmarks.md)


def eligible_log_w(log_w, truncated):
    """log w with truncated thoughts at -inf (weight 0), unless all K are truncated."""
    log_w = torch.as_tensor(log_w, dtype=torch.float64)
    trunc = torch.as_tensor(truncated, dtype=torch.bool)
    return log_w if trunc.all() else log_w.masked_fill(trunc, float("-inf"))


def select(log_w, truncated, selection, generator):
    """Index of the one thought kept among K (docs/method.md, E-step 3)."""
    lw = eligible_log_w(log_w, truncated)
    if selection == "importance":
        # normalise over the K samples (softmax of log w) and resample one: not argmax
        return int(torch.multinomial(torch.softmax(lw, 0), 1, generator=generator))
    if selection == "uniform":  # ablation: no importance weighting
        ok = torch.isfinite(lw).nonzero().squeeze(1)
        return int(ok[torch.randint(len(ok), (1,), generator=generator)])
    if selection == "argmax":
        return int(lw.argmax())
    raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")


def chunk_stats(samples):
    """(ELBO estimate, effective sample size) of one chunk's K samples (docs/method.md, E-step 4)."""
    lw = eligible_log_w([s["logw"] for s in samples], [s["truncated"] for s in samples])
    elbo = float(torch.logsumexp(lw, 0)) - math.log(len(samples))  # logsumexp(log w) - log K ~<= log p(X | P)
    w = torch.softmax(lw, 0)
    return elbo, float(1 / (w ** 2).sum())  # ESS = (sum w)^2 / sum w^2 with sum w = 1


def elbo_k(samples, k):
    """The ELBO estimate with k of a chunk's K samples: the mean, over its K // k disjoint groups of k samples in
    order, of logsumexp(log w) - log k. k = K is the E-step's figure when no thought is truncated, k = 1 the mean
    log-weight; every k reads
    the same samples, so the figures differ only in how tight the bound is (it tightens with k in expectation:
    Burda et al. 2016), which is how the official code reports a held-out ELBO at K = 1, 2, 4."""
    if not 1 <= k <= len(samples):
        raise ValueError(f"k={k}: between 1 and the chunk's {len(samples)} samples")
    # one rule for every k: each sample with its log w as it is (a group of one cannot drop its truncated thought,
    # so the E-step's weight 0 for truncated thoughts would make k = 1 and k = 4 different measurements)
    lw = torch.tensor([s["logw"] for s in samples], dtype=torch.float64)
    groups = [lw[i:i + k] for i in range(0, len(samples) - k + 1, k)]
    return sum(float(torch.logsumexp(g, 0)) - math.log(k) for g in groups) / len(groups)


def elbo_by_k(rows):
    """{k: ELBO per raw token} for k = 1, 2, 4, ... up to K: the sum over chunks of elbo_k, over their raw tokens."""
    if not rows:
        return {}
    K, raw = len(rows[0]["samples"]), max(1, sum(r["x_tokens"] for r in rows))
    return {str(k): sum(elbo_k(r["samples"], k) for r in rows) / raw for k in (2 ** i for i in range(K.bit_length()))
            if k <= K}


def derived_seed(*ints):
    # a seed from (seed, shard, batch) alone: the same shard gets the same randomness in any run and any rank
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0])


@contextmanager
def timed(meter, key, cuda):
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()  # kernels run asynchronously: wait so the time lands in the right bucket
    t = time.time()
    yield
    sync()
    meter[key] += time.time() - t


def context_budget(model, tok, max_thought_tokens):
    """Tokens left for P and X so that the posterior prompt plus a whole thought fits the block."""
    overhead = len(posterior_prompt(tok, "a", "b")) - 2  # the control tokens around P and X (data/latent.py)
    ctx = model.config.block_size - max_thought_tokens - overhead
    if ctx < 1:
        raise ValueError(f"max_thought_tokens={max_thought_tokens} leaves no room for the chunk in block_size "
                         f"{model.config.block_size}")
    return ctx


def infer_batch(model, tok, contexts, K, max_thought_tokens, gen_seed, meter, cuda, server=None, temperature=1.0):
    """K thoughts for each (P, X) of a batch, with log q, log p and log w. Returns one list of K samples per chunk.
    server: a vllm_engine.Server that samples and scores in the model's place (--engine=vllm)."""
    ctx = context_budget(model, tok, max_thought_tokens)
    stop = thought_stop_token(tok)
    # a thought is text: the other control tokens are banned (they would decode to their names, not re-encode)
    banned = [t for t in [tok.eot] + tok.latent_ids if t != stop]
    # E-step 1: Z_k ~ q(Z | X, P), K per chunk, with no top-k/top-p (they would leave log q undefined off the kept
    # tokens); at a temperature T the proposal is softmax(logits / T) and generate returns its log-probs: log q
    with timed(meter, "decode", cuda):
        toks, logq, finished = (server or model).generate([posterior_prompt(tok, P, X, max_tokens=ctx) for P, X in contexts],
                                              num_samples=K, max_new_tokens=max_thought_tokens, temperature=temperature,
                                              stop_tokens=[stop], banned_tokens=banned, seed=gen_seed)
    bodies = [t[:-1] if done else t for t, done in zip(toks, finished)]
    thoughts = [tok.decode(b) for b in bodies]
    # E-step 2: log p(Z_k, X | P) under the same model, the thought in the prior order
    seqs, starts = zip(*(joint_sequence(tok, *contexts[r // K], z, max_tokens=ctx, block_size=model.config.block_size)
                         for r, z in enumerate(thoughts)))
    cap = SCORE_LOGITS if cuda else min(SCORE_LOGITS, SCORE_TOKENS_CPU * model.padded_vocab)
    with timed(meter, "score", cuda):
        logp = (server or model).score(seqs, starts, max_logits=cap).tolist()
    # E-step 3's weights: log w = log p(Z, X | P) - log q(Z | X, P)
    samples = [{"text": z, "logp": lp, "logq": sum(lq), "logw": lp - sum(lq), "truncated": not done,
                "n_tokens": len(b), "exact": tok.encode(z) == b}  # exact False: the text does not give back the tokens
               for z, lp, lq, done, b in zip(thoughts, logp, logq, finished, bodies)]
    return [samples[i * K:(i + 1) * K] for i in range(len(contexts))]


def run_shard(model, tok, part, s, cfg, meter, cuda, bar, server=None):
    """One shard: [(chunk, prefix)] -> its output rows in chunk order. Randomness from (seed, s, batch) only."""
    K, max_thought_tokens, seed, batch_size = cfg["K"], cfg["max_thought_tokens"], cfg["seed"], cfg["batch_size"]
    ctx = context_budget(model, tok, max_thought_tokens)
    contexts = [(P, c["text"]) for c, P in part]
    prompt_len = [len(posterior_prompt(tok, P, X, max_tokens=ctx)) for P, X in contexts]
    order = sorted(range(len(part)), key=lambda j: prompt_len[j])  # similar prompt lengths batch together
    found = [None] * len(part)
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        got = infer_batch(model, tok, [contexts[j] for j in idx], K, max_thought_tokens,
                          derived_seed(seed, s, 1 + b // batch_size), meter, cuda, server, cfg["temperature"])
        for j, samples in zip(idx, got):
            found[j] = samples
        meter["tokens"] += sum(x["n_tokens"] + (not x["truncated"]) for samples in got for x in samples)
        meter["chunks"] += len(idx)
        bar.update(len(idx))
        bar.set_postfix(tok_s=f"{meter['tokens'] / max(meter['decode'], 1e-9):.0f}")
    # selection in chunk order with one generator per shard: the same shard always makes the same choices
    gen = torch.Generator().manual_seed(derived_seed(seed, s, 0))
    rows = []
    for (c, P), samples in zip(part, found):
        # E-step 3: keep ONE of the K thoughts, resampled by its normalised importance weight
        chosen = select([x["logw"] for x in samples], [x["truncated"] for x in samples], cfg["selection"], gen)
        rows.append({"id": c["id"], "thought": samples[chosen]["text"], "chosen": chosen,
                     "x_tokens": len(fit_context(tok, P, c["text"], ctx)[1]), "samples": samples})
    return rows


def problems_of(docs):
    """{chunk id: the problem its thought derives}: the text after the last "Problem:" of the chunk before it (the
    layout of mathworld and of data/prepare.py gsm8k: a problem's statement and its answer in adjacent chunks)."""
    return {x["id"]: doc[i - 1]["text"].rsplit("Problem:", 1)[-1] for doc in docs for i, x in enumerate(doc)
            if i and "Problem:" in doc[i - 1]["text"]}


def print_chunk(row, P, X):
    """--show: one chunk, its K thoughts and their weights, for people learning the method."""
    w = torch.softmax(eligible_log_w([s["logw"] for s in row["samples"]], [s["truncated"] for s in row["samples"]]), 0)
    print(f"\n=== chunk {row['id']}\n--- prefix P:\n{P}\n--- chunk X:\n{X}\n--- {len(w)} thoughts Z ~ q(Z | X, P):")
    for k, s in enumerate(row["samples"]):
        mark = ">" if k == row["chosen"] else " "
        print(f"{mark} [{k}] log p(Z,X|P) {s['logp']:8.2f}  log q(Z|X,P) {s['logq']:8.2f}  log w {s['logw']:8.2f}  "
              f"w {float(w[k]):.3f}{'  (truncated)' if s['truncated'] else ''}\n      {s['text']!r}")


def check(cfg):
    """The settings' values the configurator cannot check by type."""
    K = cfg["K"]
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K (thoughts sampled per chunk) must be an integer >= 1, got {K!r}")
    if cfg["selection"] not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {cfg['selection']!r}")
    if cfg["engine"] not in ("torch", "vllm"):
        raise ValueError(f"engine must be torch or vllm, got {cfg['engine']!r}")
    T = cfg["temperature"]
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not T > 0:
        raise ValueError(f"temperature (of the E-step's proposal) must be a number > 0, got {T!r}")
    if cfg["engine"] == "vllm" and T != 1:
        # vLLM returns the log-probs of the untempered model by default, which are not log q at T != 1
        raise ValueError(f"temperature={T!r}: the vllm engine samples at temperature 1 only (its log-probs would "
                         "not be the proposal's)")


def sample_thoughts(ckpt, chunks, out_dir, result_fn=None, stop_after_shards=None, **settings):
    """The E-step; returns the summary dict (also in out_dir/summary.json) on every rank. settings: the keys of
    the config block above (K, max_thought_tokens, ...), whose defaults apply to the rest. result_fn(thought) ->
    final result or None defines agreement with the gold thoughts (default data.mathworld.thought_result).
    stop_after_shards: return after writing that many shards, without merging (one process; tests of resuming)."""
    cfg = apply(DEFAULTS, {**settings, "ckpt": ckpt, "chunks": chunks, "out_dir": out_dir}, "sample_thoughts()")
    check(cfg)  # before the model loads and work starts
    K = cfg["K"]
    t0 = time.time()
    # with vllm the GPUs are the server's: the local model only checks it, on the CPU
    # (on CUDA, bf16 autocast for generate and score; their log-softmaxes stay float32)
    compute = setup("cpu" if cfg["engine"] == "vllm" else cfg["device"])
    model, checkpoint = load_checkpoint(ckpt, compute.device)
    model.eval()
    tok = get_tokenizer(checkpoint["tokenizer"])
    server = None
    if cfg["engine"] == "vllm":
        server = vllm_engine.Server(cfg["base_url"], tok.n_vocab, concurrency=cfg["vllm_concurrency"],
                                    timeout=cfg["vllm_timeout"], retries=cfg["vllm_retries"])
        vllm_engine.check(server, model, tok, model.config.block_size)  # before any work: the right model?
    if not checkpoint.get("latent", True):
        print0(f"warning: {ckpt} was trained without thoughts; its posterior knows nothing of the latent format")
    golds = read_thoughts(cfg["gold"]) if cfg["gold"] is not None else None  # read first: fail before the work
    docs = read_chunks(chunks)[:cfg["limit"]]
    items = [(x, chunk_prefix(doc, i, cfg["n_prefix"])) for doc in docs for i, x in enumerate(doc)]  # file order
    shards = [items[s:s + cfg["shard_size"]] for s in range(0, len(items), cfg["shard_size"])]
    shard_path = lambda s: os.path.join(out_dir, "shards", f"shard_{s:05d}.jsonl")

    # the settings that decide the result: resuming with other ones would mix two E-steps in one output
    keys = ("K", "max_thought_tokens", "selection", "n_prefix", "seed", "batch_size", "shard_size", "limit")
    made_with = dict(ckpt=os.path.abspath(ckpt), chunks=os.path.abspath(chunks), **{k: cfg[k] for k in keys})
    if cfg["temperature"] != 1:  # recorded only when set: E-steps made before the option continue as they were
        made_with["temperature"] = cfg["temperature"]
    if server is not None:  # its samples are not the torch engine's: the two do not continue each other's shards
        made_with["engine"] = "vllm"
    settings_path = os.path.join(out_dir, "settings.json")
    if os.path.exists(settings_path):  # shards on disk: continue them only with the settings that made them
        with open(settings_path) as f:
            check_settings(settings_path, json.load(f), made_with, hint="use another out_dir, or delete it")
    compute.barrier()
    if compute.rank == 0:
        write_json(settings_path, made_with)

    todo = [s for s in range(len(shards)) if s % compute.world == compute.rank and not os.path.exists(shard_path(s))]
    meter = {"decode": 0.0, "score": 0.0, "chunks": 0, "tokens": 0}  # seconds, and work done in this run
    bar = tqdm(total=sum(len(shards[s]) for s in todo), unit="chunk", desc="E-step",
               disable=compute.rank != 0 or not sys.stderr.isatty())
    show = cfg["show"] if compute.rank == 0 else 0
    for n_done, s in enumerate(todo):
        if stop_after_shards is not None and n_done >= stop_after_shards:
            bar.close()
            return {"stopped_after_shards": n_done}
        with compute.ctx:
            rows = run_shard(model, tok, shards[s], s, cfg, meter, compute.cuda, bar, server)
        write_jsonl(shard_path(s), rows)  # atomic: a shard on disk is a finished shard
        if compute.rank == 0 and bar.disable:  # no terminal (a log file): one line per shard instead of the bar
            print(f"E-step: shard {n_done + 1}/{len(todo)} of this run written, {meter['chunks']} chunks in "
                  f"{time.time() - t0:.0f}s ({meter['chunks'] / (time.time() - t0):.1f} chunks/s)", flush=True)
        for row, (x, P) in list(zip(rows, shards[s]))[:show]:
            print_chunk(row, P, x["text"])
        show = max(0, show - len(rows))
    bar.close()

    # gather the work counters of all ranks (timings: mean per rank)
    stats = torch.tensor([meter[k] for k in ("chunks", "tokens", "decode", "score")], dtype=torch.float64,
                         device=compute.device)
    if compute.world > 1:
        torch.distributed.all_reduce(stats)
    compute.barrier()
    summary = None
    if compute.rank == 0:
        rows = merge(tok, out_dir, chunks, shards, shard_path, cfg)
        summary = summarize(rows, cfg, golds, result_fn, problems_of(docs))
        n_chunks, n_tokens = int(stats[0]), int(stats[1])
        dec, sco = (float(x) / compute.world for x in stats[2:])
        wall = time.time() - t0
        other = wall - dec - sco
        summary.update(chunks_per_s=n_chunks / wall, decode_tokens_per_s=n_tokens / max(dec, 1e-9), wall_s=wall,
                       chunks_this_run=n_chunks, world_size=compute.world,
                       timings={"decode": dec, "score": sco, "other": other},
                       timing_fractions={"decode": dec / wall, "score": sco / wall, "other": other / wall})
        write_json(os.path.join(out_dir, "summary.json"), summary)
    compute.barrier()
    if summary is None:
        with open(os.path.join(out_dir, "summary.json")) as f:
            summary = json.load(f)
    return summary


def merge(tok, out_dir, chunks, shards, shard_path, cfg):
    """Rank 0: all shards -> thoughts.jsonl in chunk-file order and aug.bin, the M-step's input. Returns the rows."""
    rows = []
    for s, part in enumerate(shards):
        got = [r for _, r in read_jsonl(shard_path(s), required=("id", "thought", "chosen", "x_tokens", "samples"))]
        if [r["id"] for r in got] != [x["id"] for x, _ in part]:
            raise ValueError(f"{shard_path(s)}: not the chunks of shard {s} of {chunks} (a stale shard?)")
        rows += got
    thoughts = os.path.join(out_dir, "thoughts.jsonl")
    write_jsonl(thoughts, ({"id": r["id"], "thought": r["thought"]} for r in rows))
    if cfg["limit"] is not None:  # the augmented bin needs a thought for every chunk of its chunk file
        chunks = os.path.join(out_dir, "chunks.jsonl")
        write_jsonl(chunks, (x for part in shards for x, _ in part))
    build_augmented_bin(tok, chunks, thoughts, os.path.join(out_dir, "aug.bin"), cfg["seed"])
    return rows


def summarize(rows, cfg, golds=None, result_fn=None, problems=None):
    """The E-step's figures (docs/method.md, E-step 4): mean ELBO (per chunk and per raw token), effective sample size,
    truncation, thought length; with gold thoughts, how often the chosen (and a random) thought has the gold result,
    and with problems ({chunk id: the problem its thought derives}) how often every step of it is true arithmetic on
    the problem's numbers (valid_*), and valid with the gold result besides (sound_*)."""
    elbo, ess = zip(*(chunk_stats(r["samples"]) for r in rows)) if rows else ((), ())
    samples = [x for r in rows for x in r["samples"]]
    mean = lambda xs: sum(xs) / max(1, len(xs))
    summary = dict(chunks=len(rows), K=cfg["K"], selection=cfg["selection"], elbo=mean(elbo),
                   elbo_per_raw_token=sum(elbo) / max(1, sum(r["x_tokens"] for r in rows)),
                   elbo_by_k=elbo_by_k(rows), ess=mean(ess),
                   truncation=mean([x["truncated"] for x in samples]),
                   all_truncated=mean([all(x["truncated"] for x in r["samples"]) for r in rows]),
                   not_round_trip=mean([not x["exact"] for x in samples]),
                   thought_tokens=mean([r["samples"][r["chosen"]]["n_tokens"] for r in rows]))
    if golds is not None:
        result_fn = result_fn or thought_result
        pairs = [(r, result_fn(golds[r["id"]])) for r in rows if r["id"] in golds]
        pairs = [(r, g) for r, g in pairs if g is not None]  # only chunks whose gold thought states a result
        # agreement with the gold result: the chosen thought, and a thought picked uniformly among the K (exactly
        # its expectation)
        # complete: every operation of the gold derivation in its order (this world's thoughts; None elsewhere)
        whole = lambda ps: [r for r, _ in ps if thought_result(golds[r["id"]]) is not None and "=>" in golds[r["id"]]]
        agree = lambda ps: dict(agree_chosen=mean([result_fn(r["thought"]) == g for r, g in ps]) if ps else None,
                                agree_random=mean([mean([result_fn(x["text"]) == g for x in r["samples"]])
                                                   for r, g in ps]) if ps else None,
                                complete_chosen=mean([complete(r["thought"], golds[r["id"]]) for r in whole(ps)])
                                if whole(ps) else None,
                                complete_random=mean([mean([complete(x["text"], golds[r["id"]]) for x in r["samples"]])
                                                      for r in whole(ps)]) if whole(ps) else None)
        summary.update(gold_chunks=len(pairs), **agree(pairs))
        # the same by the gold thought's number of steps (the ladder's rungs): where the E-step's choice is far
        # above its own random sample, and where the next M-step keeps it or not
        rungs = {}
        for r, g in pairs:
            rungs.setdefault(thought_steps(golds[r["id"]]), []).append((r, g))
        summary["by_steps"] = {str(n): dict(chunks=len(ps), **agree(ps)) for n, ps in sorted(rungs.items())}
    if golds is not None and problems is not None:
        # only chunks whose gold thought passes the check itself (a corpus with another thought format has none)
        checked = [r for r in rows if r["id"] in golds and steps_valid(golds[r["id"]], problems.get(r["id"], ""))]
        # sound: valid steps AND the gold result (a thought can copy the result from X over wrong steps, or do
        # true arithmetic on the problem's numbers that is not the problem's derivation)
        sound = lambda z, r: steps_valid(z, problems[r["id"]]) and result_fn(z) == result_fn(golds[r["id"]])
        summary.update(valid_chunks=len(checked),
                       valid_chosen=mean([steps_valid(r["thought"], problems[r["id"]]) for r in checked])
                       if checked else None,
                       valid_random=mean([mean([steps_valid(x["text"], problems[r["id"]]) for x in r["samples"]])
                                          for r in checked]) if checked else None,
                       sound_chosen=mean([sound(r["thought"], r) for r in checked]) if checked else None,
                       sound_random=mean([mean([sound(x["text"], r) for x in r["samples"]]) for r in checked])
                       if checked else None)
    return summary


if __name__ == "__main__":
    cfg = command_line(sys.argv[1:], DEFAULTS, check)
    if not cfg["ckpt"] or not cfg["chunks"]:
        usage_error("usage: python sample_thoughts.py --ckpt=CKPT.pt --chunks=CHUNKS.jsonl --out_dir=DIR [--key=val ...]")
    result = sample_thoughts(**cfg)
    print0(json.dumps(result, indent=1))
    teardown()
