"""
The whole method in one command (docs/method.md, The idea): warm start, then EM iterations of E-step and M-step, each
evaluated, plus the raw-data baselines.

    python em.py --iters 3                       # the default run on the embedded corpus
    python em.py config/em_cpu_smoke.py          # the whole loop with a tiny model on a CPU in about a minute
    torchrun --nproc_per_node=8 em.py --iters 3  # every stage spread over the GPUs

Every stage writes into run_dir and records its result in <stage>/stage.json; a rerun skips finished stages
(one asking for other settings stops with an error instead), and an interrupted training or E-step continues
where it stopped. --force=True starts over.

    run_dir/data/                 the corpus: chunk files, bins, eval set            (data/mathworld.py)
    run_dir/base/                 the base every training restarts from: init.pt (its initialisation), and
                                  ckpt.pt (init.pt pretrained on background.bin) when base_epochs > 0
    run_dir/m0/                   warm-start model M_0: ckpt.pt, log.jsonl, eval/     (train.py, eval_math.py)
    run_dir/iter{t}/estep/        thoughts.jsonl, aug.bin, summary.json              (sample_thoughts.py)
    run_dir/iter{t}/mstep/        M_t: ckpt.pt, log.jsonl, eval/
    run_dir/raw_token_match/, raw_flop_match/     the baselines; oracle/: gold thoughts (--oracle=True)
    run_dir/results.md, results.json, results.png                                    (report.py)
    run_dir/report.html           the run on one page: table, plots, sampled thoughts   (report.py)
    run_dir/invocations.jsonl     each command run on this directory
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time

import torch

from common import barrier, rank0, setup, teardown
from configurator import config_files, defaults_of, parse_args, usage_error
import data.files  # its COINS by their module name: an imported constant is not a setting of this script
from data import mathworld
from data.files import (build_augmented_bin, build_passes_bin, build_raw_bin, build_solved_bin, check_contract,
                        check_settings, open_bin, read_jsonl, read_meta, write_chunks, write_json, write_jsonl)
from data.mathworld import prepare
from data.tokenizer import get_tokenizer
from eval_math import evaluate, load_rows
from report import write_results, write_sweep
from sample_thoughts import sample_thoughts
from train import make_base, resolve, train
import vllm_engine

# ----------------------------------------------------------------------------- config
run_dir = "runs/default"
iters = 3
force = False
seed = 0
# the corpus: the embedded math world (data/mathworld.py), or data_dir
data_dir = ""             # a prepared directory of your own (data/files.py: the contract) instead of the embedded world
data_seed = 0
# the world's defaults are data/mathworld.py's WORLD
n_docs = mathworld.WORLD["n_docs"]  # warm start + bootstrap documents
problems_per_doc = mathworld.WORLD["problems_per_doc"]  # problems per document (min, max)
families = mathworld.WORLD["families"]  # problem families (data/mathworld.py: FAMILIES)
max_level = mathworld.WORLD["max_level"]  # problems have 2 to max_level + 1 steps
warm_max_level = mathworld.WORLD["warm_max_level"]  # > 0: the warm-start split's problems have at most
                          # warm_max_level + 1 steps (a ladder)
warm_long_share = mathworld.WORLD["warm_long_share"]  # with warm_max_level: this share of warm-start problems is
                          # drawn from every level (a few long teacher thoughts)
n_eval = mathworld.WORLD["n_eval"]  # held-out problems in eval.jsonl and in valid.jsonl (each)
warm_fraction = mathworld.WORLD["warm_fraction"]  # the share with teacher thoughts (docs/method.md, Warm start)
teacher_error_rate = mathworld.WORLD["teacher_error_rate"]  # the fraction of teacher thoughts with a wrong step
thought_style = mathworld.WORLD["thought_style"]  # terse | restate (data/mathworld.py: THOUGHT_STYLES)
tokenizer = "mathworld"   # mathworld (BPE fitted to the corpus) | byte
# M-step (train.py): a preset, and the budget every training gets (docs/method.md, M-step: the same every iteration)
train_config = "config/train_mathworld.py"
train_overrides = {}      # any train.py key, e.g. {"n_layer": 2}
base_epochs = 2.0         # pretrain the base on the background text for this many passes (0 = a fresh init)
mstep_epochs = 7.0        # budget = mstep_epochs x the thought-augmented corpus (warm + bootstrap); at half
                          # of it a skill forms in one training and not in another (docs/notebook.md)
m0_epochs = 16.0          # M_0's budget, in passes over the warm-start split (docs/method.md, Warm start); M_0 is
                          # a lottery at 16 and strong from 24, with little left to bootstrap (docs/notebook.md)
continue_from_previous = False  # ablation: M_t starts from M_{t-1} instead of the base initialisation
sampler = "passes"        # passes: every training reads whole passes, each document once per pass in a shuffled order
                          # (the official loader); ahead of windows at every EM iteration in 3 seeds of 3 on one machine
                          # (docs/ablations.md#windows-against-passes-on-one-machine-the-same-three-seeds) | windows:
                          # random windows with replacement over bins written once (the default until 2026-12-06)
coin = "frozen"           # sampler=passes: frozen = the same prior / posterior coins every pass | per_pass = each pass
                          # tosses its own (the official lingua/data.py, which reads about 2 passes): at our 7-16 passes
                          # the E-step then chose worse thoughts in 3 seeds of 3 (docs/ablations.md)
mstep_data = "all"        # all: the M-step trains on the warm-start split and the bootstrap split with its thoughts |
                          # bootstrap: the bootstrap split alone (the official M-step); the budget counts what is
                          # trained on
raw_mix = 0.0             # the chance that a pass reads a thought-augmented document as its raw text (the official
                          # mix_in_raw_ratio, 0 in its setups); sampler=passes only
worth = ()                # e.g. --worth=2,4,8: what a thought is worth in raw data (the embedded world only): raw models
                          # at raw-FLOP-match's budget on m times its unique raw tokens (its documents and fresh ones),
                          # m = 1 being raw-FLOP-match and about 15 raw-fresh; every latent row is placed on that
                          # curve (report.py: thought_worth)
finetune_eval = False     # also evaluate every model as the official run_finetune_eval.sh does: fine-tuned on solved
                          # problems of the world (in the spelling its training taught: the derivation as a prior-order
                          # thought, or as plain text), then greedy and zero-shot; the embedded world only
finetune_problems = 1000  # finetune_eval: solved problems, none held out (data/mathworld.py: finetune_problems)
finetune_epochs = 5.0     # finetune_eval: passes over them (the official: 5)
finetune_lr = 3e-4        # finetune_eval: peak learning rate (a tenth of the trainings'), cosine to a tenth of it
finetune_seeds = 3        # finetune_eval: fine-tunings per model (downstream seeds 0, 1, ...): mean, min and max
finetune_only = ""        # finetune_eval: only these models, by their directory ("m0,iter3/mstep,raw_flop_match"; three
                          # fine-tunings and evaluations each); "" = every model of the run
# E-step (sample_thoughts.py)
K = 4
estep_temperature = 1.0   # the proposal's temperature (sample_thoughts.py: temperature; the paper: 1)
selection = "importance"  # importance | uniform | argmax
n_prefix = 1              # prefix chunks given to the posterior (docs/method.md, Where this project differs)
max_thought_tokens = 64   # a 5-step derivation fits
estep_batch = 128         # chunks per batch (each with K rows)
estep_engine = "torch"    # torch | vllm: each E-step on a vLLM server for M_{t-1} (vllm_engine.py; README)
vllm_url = ""             # estep_engine=vllm: a server the user runs (its base URL); "" = start `vllm serve` here
vllm_port = 8000          # estep_engine=vllm: the port of the server started here
vllm_tensor_parallel = 1  # estep_engine=vllm: --tensor-parallel-size of the server started here
vllm_gpu_memory_utilization = 0.8  # estep_engine=vllm: --gpu-memory-utilization of the server started here (the
                          # trainer's cached memory is released first: vllm_engine.release_gpu_memory)
# evaluation (eval_math.py)
heldout_docs = 60         # the held-out ELBO of every latent model (the official validation.elbo_cfg): K = 4 posterior
                          # samples for each chunk of this many validation documents (about 5 chunks each), reported
                          # per raw token at K = 1, 2, 4 from the same samples; 0 = not measured
eval_split = "eval"       # eval: the held-out evaluation set (final tables) | valid: other problems, for choosing settings
also_valid = False        # also evaluate every model on valid.jsonl beside eval_split (twice the evaluation time)
eval_data = ""            # any MATH- or GSM8K-shaped jsonl instead of the data directory's {eval_split}.jsonl
eval_exemplars = ""       # its few-shot exemplars ("" = the data directory's exemplars.jsonl, or GSM8K's train.jsonl)
eval_shots = 2
eval_limit = 0            # 0 = every problem of the evaluation set
eval_max_new_tokens = 80
eval_batch = 128
baselines = True          # raw-token-match and raw-FLOP-match
raw_fresh = False         # also raw-fresh: as many unique documents of the world as raw-FLOP-match trains tokens on,
                          # read once (the paper's Section 3; the embedded world only)
wrap = False              # also WRAP and WRAP-CoT at raw-FLOP-match's budget (the paper's Section 3; the embedded chain
                          # world only): the documents and 2 rephrasings of each; the documents with the teacher's
                          # derivation written before each result, as plain text (data/mathworld.py)
oracle = True             # also train on the bootstrap split with its GOLD thoughts (what a perfect E-step would
                          # give), where the corpus has them
em = True                 # the warm start and the EM iterations (--em=False: only the baselines, e.g. in a second
                          # process beside the main one, sharing run_dir)
threads = 0               # torch CPU threads (0 = torch's default; 1 is fastest for tiny models on a busy CPU)
reuse_from = ""           # another run_dir whose corpus, M_0 and baselines this run shares (K / selection ablations)
stop_after = ""           # stop after the stage of this name (to test resuming)
seeds = ()                # --seeds=0,1,2: one run per seed s (seed = data_seed = s) in run_dir/seed{s}, side by side
                          # on a CPU (its threads split between them), one after another on a GPU; then the mean,
                          # min-max and every run on one page, run_dir/seeds.html (report.py: write_sweep)
gpu_preset = True         # on a GPU, apply config/em_gpu.py first (the default world in bigger E-step and evaluation
                          # batches; unless a config file is given;
                          # --gpu_preset=False or --gpu_preset False: never)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_of(globals())


def log(msg):
    if rank0():
        print(f"[em {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stage_config(cfg, name):
    """The settings a stage's result depends on. A rerun that asks for other ones is stopped, not served the old
    result (--K=1 on a finished K=4 run_dir would otherwise print the K=4 table)."""
    keys = ["data_dir", "data_seed", "n_docs", "problems_per_doc", "families", "max_level", "warm_fraction", "teacher_error_rate",
            "tokenizer", "warm_max_level", "warm_long_share", "n_eval"]
    if cfg["thought_style"] != "terse":  # only when set: runs made before the option continue as they were
        keys += ["thought_style"]
    if name != "data":
        keys += ["seed", "train_config", "train_overrides"]
    if name != "data":
        keys += ["base_epochs"]
        # the reading of the corpus, only when not the default: runs made before these options continue as they were
        keys += ["sampler", "coin", "raw_mix"] if cfg["sampler"] != "windows" else []
    if name not in ("data", "base", "m0") and cfg["mstep_data"] != "all":
        keys += ["mstep_data"]
    if name not in ("data", "base"):
        keys += ["also_valid"] if cfg["also_valid"] else []  # only when set: earlier runs continue as they were
        keys += ["mstep_epochs", "eval_data", "eval_exemplars", "eval_split", "eval_shots", "eval_limit", "eval_max_new_tokens"]
    if name == "m0":
        keys += ["m0_epochs"]
    if name.endswith("/finetune"):  # a model's fine-tuning evaluation: that model's settings, and its own
        return {**stage_config(cfg, name[:-len("/finetune")]),
                **{k: cfg[k] for k in ("finetune_problems", "finetune_epochs", "finetune_lr", "finetune_seeds")}}
    if name.endswith("/heldout"):  # a model's held-out ELBO: that model's settings, and its own
        return {**stage_config(cfg, name[:-len("/heldout")]), "heldout_docs": cfg["heldout_docs"],
                "heldout_K": HELDOUT_K, **{k: cfg[k] for k in ("n_prefix", "max_thought_tokens", "estep_batch")}}
    if name.startswith("iter"):
        keys += ["K", "selection", "n_prefix", "max_thought_tokens", "estep_batch", "continue_from_previous"]
        if cfg["estep_temperature"] != 1:  # only when set: runs made before the option continue as they were
            keys += ["estep_temperature"]
    return {k: cfg[k] for k in keys}


WRAP_REPHRASINGS = 2  # wrap: rephrasings of every document, beside it (WRAP's real and synthetic text, 1 : 2)
HELDOUT_K = 4  # the samples per chunk of the held-out ELBO: K = 1, 2 and 4 are read from the same four


def run_estep(cfg, ckpt, d, estep):
    """estep(**engine) in this process, or with estep_engine=vllm against a vLLM server for ckpt: the one given by
    vllm_url, or one started here for this E-step (by rank 0, for every rank) and stopped after it."""
    if cfg["estep_engine"] == "torch":
        return estep()
    if cfg["estep_engine"] != "vllm":
        raise ValueError(f"estep_engine must be torch or vllm, got {cfg['estep_engine']!r}")
    os.makedirs(d, exist_ok=True)
    memory = cfg["vllm_gpu_memory_utilization"]  # the share of each GPU the server may take
    with vllm_engine.serving(ckpt, d, url=cfg["vllm_url"], port=cfg["vllm_port"],
                             tensor_parallel=cfg["vllm_tensor_parallel"], gpu_memory_utilization=memory) as url:
        return estep(engine="vllm", base_url=url)


# minutes each kind of stage took in the default run of each preset (README, Results): the first ETA; later ETAs
# scale it by how fast this machine has been so far
EXPECTED_MIN = {"cpu": {"data": 0.1, "base": 1.1, "m0": 1.3, "raw_token_match": 1.2, "raw_flop_match": 2.6,
                        "estep": 1.6, "mstep": 2.8, "oracle": 2.7, "heldout": 0.1},
                "gpu": {}}


def kind(name):
    return name.split("/")[-1]  # iter2/estep -> estep


class Stages:
    """Runs each stage once: its result is kept in run_dir/<name>/stage.json and returned on a rerun. Says up front
    what will run and how long it should take, and updates the ETA as stages finish."""

    def __init__(self, cfg, preset, planned):
        self.cfg, self.t0, self.spent, self.n_run = cfg, time.time(), 0.0, 0
        self.todo = [n for n in planned if not os.path.exists(os.path.join(cfg["run_dir"], n, "stage.json"))]
        self.expected = EXPECTED_MIN.get(preset, {})
        if self.todo:
            untimed = [n for n in self.todo if kind(n) not in self.expected]
            if len(untimed) == len(self.todo):
                when = "no time estimate yet for this preset (it comes after the first stage)"
            else:  # the timed kinds summed; the others named, not counted as 0 minutes
                when = f"expected about {self.eta():.0f} min (measured for the default settings)"
                if untimed:
                    when += f", plus {len(untimed)} not timed yet ({', '.join(sorted({kind(n) for n in untimed}))})"
            log(f"{len(self.todo)} stages to run: {', '.join(self.todo)}; {when}")

    def eta(self, done_min=0.0):
        left = sum(self.expected.get(kind(n), 0.0) for n in self.todo)
        # this machine's speed relative to the measured one, once enough has run to tell
        return left * (done_min / self.spent if self.spent >= 1.0 else 1.0)

    def __call__(self, name, fn):
        d = os.path.join(self.cfg["run_dir"], name)
        done = os.path.join(d, "stage.json")
        want = json.loads(json.dumps(stage_config(self.cfg, name)))  # as it reads back from stage.json
        if os.path.exists(done):
            with open(done) as f:
                result = json.load(f)
            check_settings(done, result.get("stage_config", want), want,
                           hint="Use another --run_dir (--reuse_from shares the corpus, M_0 and baselines), "
                                "or --force=True to start over")
            return result
        os.makedirs(d, exist_ok=True)
        self.n_run += 1
        log(f"---- {name} (stage {self.n_run} of the {len(self.todo) + self.n_run - 1} this session runs)")
        t = time.time()
        result = fn(d)
        result["wall_s"], result["stage_config"] = time.time() - t, want
        barrier()
        if rank0():
            write_json(done, result)
        self.spent += self.expected.get(kind(name), 0.0)
        self.todo = [n for n in self.todo if n != name]
        elapsed = (time.time() - self.t0) / 60
        log(f"{name} done in {result['wall_s'] / 60:.1f} min; elapsed {elapsed:.1f} min"
            + (f", about {self.eta(elapsed):.0f} min to go" if self.todo and self.expected else ""))
        if name == self.cfg["stop_after"]:
            log(f"stopping after {name} as asked (stop_after); run again to resume")
            sys.exit(0)
        return result


def n_tokens(path):
    return len(open_bin(path))


WORLD_ROWS = ("raw_fresh", "wrap", "worth", "finetune_eval")  # rows the embedded world writes the documents of


def model_dirs(cfg):
    """Every model a run can train, by its directory, in the results table's order (finetune_all's order)."""
    return (["raw_token_match", "raw_flop_match", "raw_fresh", "wrap", "wrap_cot"] +
            [f"worth_x{m}" for m in cfg["worth"]] + ["oracle", "m0"] + [f"iter{t}/mstep" for t in range(1, cfg["iters"] + 1)])


def finetune_only(cfg):
    """The models --finetune_only names (none: every model), each checked against what the run can train."""
    only, models = [n for n in cfg["finetune_only"].split(",") if n], model_dirs(cfg)
    if set(only) - set(models):
        raise ValueError(f"finetune_only: {sorted(set(only) - set(models))} are no models of this run; "
                         f"it has {', '.join(models)}")
    return only


GPU_PRESET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "em_gpu.py")


def configure(argv):
    """The settings: defaults <- config files (on a GPU, config/em_gpu.py unless one is given or gpu_preset is
    False) <- the command line. The preset is decided from the parsed settings, never from argv's spelling."""
    gpu = torch.cuda.is_available()
    mine = parse_args(argv, DEFAULTS)  # what the user set; --help prints and exits here
    cfg = {**DEFAULTS, **mine}
    files = config_files(argv, DEFAULTS)
    if gpu and not files and cfg["gpu_preset"]:
        argv = [GPU_PRESET] + argv
        cfg = {**DEFAULTS, **parse_args(argv, DEFAULTS)}
        # the preset's three seeds and extra rows only where they apply: not for a run of one seed, a shared corpus
        # or a torchrun job (each rank would start the seeds), and the world's rows only on the embedded world
        if {"seed", "data_seed", "reuse_from"} & set(mine) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            cfg["seeds"] = mine.get("seeds", ())
        if cfg["data_dir"]:
            cfg.update({k: mine.get(k, DEFAULTS[k]) for k in WORLD_ROWS})
    for k in WORLD_ROWS:  # before any work, not after hours of training
        if cfg[k] and cfg["data_dir"]:
            raise ValueError(f"--{k} needs the embedded world (data/mathworld.py) to write its documents; "
                             f"a --data_dir corpus has no generator")
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 2 for m in cfg["worth"]):
        raise ValueError(f"worth: multiples of raw-FLOP-match's unique tokens, integers from 2, got {cfg['worth']!r}")
    finetune_only(cfg)
    if cfg["wrap"] and set(cfg["families"]) != {"chain"}:
        raise ValueError(f"--wrap: only the chain family has other wordings, got families={cfg['families']}")
    for key, allowed in (("sampler", ("passes", "windows")), ("coin", data.files.COINS), ("mstep_data", ("all", "bootstrap"))):
        if cfg[key] not in allowed:
            raise ValueError(f"{key} must be one of {allowed}, got {cfg[key]!r}")
    if not 0 <= cfg["raw_mix"] <= 1 or (cfg["raw_mix"] and cfg["sampler"] != "passes"):
        raise ValueError(f"raw_mix={cfg['raw_mix']!r}: a probability, and only with sampler=passes")
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    # the measured stage times hold for the default settings only (a data_dir or other budgets: no estimate)
    measured = not files and all(cfg[k] == DEFAULTS[k] for k in {*stage_config(cfg, "m0"), *stage_config(cfg, "iter1")}
                                 if k != "seed")
    preset = ("gpu" if gpu else "cpu") if measured else "custom"
    log(f"{'GPU' if gpu else 'no GPU: CPU'} preset{' with ' + ', '.join(files) if files else ''}; run_dir "
        f"{cfg['run_dir']}; {cfg['iters']} EM iterations, K={cfg['K']}; {torch.get_num_threads()} CPU threads"
        + ("" if gpu else "; the 1-minute smoke version: python em.py config/em_cpu_smoke.py"))
    return cfg, argv, preset


class Run:
    """One run of the method in run_dir: each method below is one of its stages (or a few), kept by Stages."""

    def __init__(self, cfg, argv, preset):
        self.cfg, rd = cfg, cfg["run_dir"]
        if cfg["force"] and rank0() and os.path.exists(rd):
            shutil.rmtree(rd)
        barrier()
        os.makedirs(rd, exist_ok=True)
        if rank0():
            with open(os.path.join(rd, "invocations.jsonl"), "a") as f:  # several processes may share a run_dir
                f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": argv, "config": cfg}) + "\n")
            if cfg["reuse_from"]:  # share the corpus, base, M_0, baselines and oracle of another run (ablations)
                for name in ("data", "base", "m0", "raw_token_match", "raw_flop_match", "oracle"):
                    src, dst = os.path.join(os.path.abspath(cfg["reuse_from"]), name), os.path.join(rd, name)
                    if os.path.exists(src) and not os.path.lexists(dst):
                        os.symlink(src, dst)
        barrier()
        self.data = os.path.abspath(cfg["data_dir"]) if cfg["data_dir"] else os.path.join(rd, "data")
        self.oracle_possible = cfg["oracle"] and (not cfg["data_dir"] or self.have("boot.gold.jsonl"))
        held = lambda name: [name] + ([f"{name}/heldout"] if cfg["heldout_docs"] else [])
        its = [n for t in range(1, cfg["iters"] + 1) for n in [f"iter{t}/estep"] + held(f"iter{t}/mstep")]
        planned = (["data", "base"] + (held("m0") if cfg["em"] else []) +
                   (["raw_token_match", "raw_flop_match"] if cfg["baselines"] else []) +
                   (["raw_fresh"] if cfg["raw_fresh"] else []) + (["wrap", "wrap_cot"] if cfg["wrap"] else []) +
                   [f"worth_x{m}" for m in cfg["worth"]] +
                   (held("oracle") if self.oracle_possible else []) + (its if cfg["em"] else []))
        if cfg["finetune_eval"]:  # last: finetune_all
            planned += [f"{n}/finetune" for n in self.finetune_models(planned)]
        self.stage = Stages(cfg, preset, planned)

    def have(self, name):
        return os.path.exists(os.path.join(self.data, name))

    def path(self, name):
        return os.path.join(self.data, name)

    def corpus(self):
        """The corpus (data/files.py, the contract): warm-start split with teacher thoughts, bootstrap split (raw),
        validation, evaluation set. The embedded world is generated; a data_dir is only checked."""
        cfg = self.cfg

        def make(d):
            if cfg["data_dir"]:
                check_contract(self.data)
            elif rank0():
                prepare(d, seed=cfg["data_seed"], n_docs=cfg["n_docs"], warm_fraction=cfg["warm_fraction"],
                        teacher_error_rate=cfg["teacher_error_rate"], tokenizer=cfg["tokenizer"],
                        problems_per_doc=tuple(cfg["problems_per_doc"]), families=tuple(cfg["families"]),
                        max_level=cfg["max_level"], warm_max_level=cfg["warm_max_level"],
                        warm_long_share=cfg["warm_long_share"], n_eval=cfg["n_eval"],
                        n_valid=cfg["n_eval"], thought_style=cfg["thought_style"])
            barrier()
            return {name: n_tokens(self.path(name + ".bin"))
                    for name in ("warm_raw", "warm_aug", "boot_raw", "val_raw", "val_aug", "background")
                    if self.have(name + ".bin")}
        self.size = self.stage("data", make)
        val = {k: self.path(f"val_{k}.bin") for k in ("raw", "aug") if self.have(f"val_{k}.bin")}
        self.train_kw = dict(config_file=cfg["train_config"], seed=cfg["seed"],
                             tokenizer=read_meta(self.data)["tokenizer"], **cfg["train_overrides"], val_bins=val)
        self.gold = self.path("boot.gold.jsonl") if self.have("boot.gold.jsonl") else None  # only where gold exists
        self.eval_data = cfg["eval_data"] or self.path(cfg["eval_split"] + ".jsonl")
        self.valid = self.path("valid.jsonl") if (cfg["also_valid"] and self.have("valid.jsonl")
                                                  and not cfg["eval_data"]) else None
        self.exemplars = cfg["eval_exemplars"] or (self.path("exemplars.jsonl") if self.have("exemplars.jsonl") else "")
        # the budget of every training: mstep_epochs over the warm-start corpus plus the bootstrap corpus at the
        # warm start's thought density; fixed up front so every M-step and the FLOP-matched baseline share it
        sizes = self.size
        boot_aug = sizes["boot_raw"] * sizes["warm_aug"] / sizes["warm_raw"]  # estimated before its thoughts exist
        self.budget = int(cfg["mstep_epochs"] * (boot_aug + (sizes["warm_aug"] if cfg["mstep_data"] == "all" else 0)))
        self.tok = get_tokenizer(read_meta(self.data)["tokenizer"])
        # what each training reads: (chunks, thoughts or None for raw text, the bin of one pass with frozen coins)
        self.warm = (self.path("warm.chunks.jsonl"), self.path("warm.thoughts.jsonl"), self.path("warm_aug.bin"))
        self.raw = [(self.path(f"{s}.chunks.jsonl"), None, self.path(f"{s}_raw.bin")) for s in ("warm", "boot")]

    def pretrained_base(self):
        """The base every training restarts from (docs/method.md, M-step). The paper's base is a pretrained LM; ours is
        pretrained on the world's background text (worked problems of other families), or is the model of
        train_config's init_from (a fresh initialisation, or a Hugging Face directory) with base_epochs=0."""
        cfg = self.cfg
        self.base = os.path.join(cfg["run_dir"], "base", "ckpt.pt" if cfg["base_epochs"] else "init.pt")

        def make(d):
            init = make_base(os.path.join(d, "init.pt"), **{k: v for k, v in self.train_kw.items() if k != "val_bins"})
            if not cfg["base_epochs"]:
                return init
            if "background" not in self.size:
                raise ValueError(f"base_epochs={cfg['base_epochs']} needs {self.data}/background.bin to pretrain on; "
                                 "with --data_dir use --base_epochs=0 (and a pretrained model via init_from)")
            summary = self.fit(d, [(self.path("background.chunks.jsonl"), None, self.path("background.bin"))],
                               cfg["base_epochs"] * self.size["background"], init["ckpt"], False)
            return {"tokens": summary["tokens"], "val": summary.get("val"), "train_s": summary.get("wall_s")}
        self.stage("base", make)

    def read_tokens(self, max_tokens):
        """The tokens a training of max_tokens reads: whole steps (train.py), and one window's targets past the last."""
        c = resolve(**self.train_kw)
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        step = c["batch_size"] * c["grad_accum"] * c["block_size"] * world
        return math.ceil(int(max_tokens) / step) * step + c["block_size"] + 1

    def fit(self, d, parts, max_tokens, init, latent, sampler=None):
        """Train from init on parts, (chunks, thoughts or None, one-pass bin) each, for max_tokens: in whole passes
        with coins tossed per pass (sampler=passes: d/passes.bin, data/files.py: build_passes_bin), or in random
        windows of the one-pass bins mixed by size (sampler=windows)."""
        cfg, max_tokens, sampler = self.cfg, int(max_tokens), sampler or self.cfg["sampler"]
        if sampler == "passes":
            bins, weights = [os.path.join(d, "passes.bin")], None
            if rank0() and not os.path.exists(bins[0]):  # the seed is the run's: the same corpus on a rerun
                build_passes_bin(self.tok, [p[:2] for p in parts], bins[0], cfg["seed"], self.read_tokens(max_tokens),
                                 coin=cfg["coin"], raw_mix=cfg["raw_mix"])
            barrier()
        else:
            bins = [p[2] for p in parts]
            sizes = [n_tokens(b) for b in bins]
            weights = [n / sum(sizes) for n in sizes]
        return train(out_dir=d, train_bins=bins, train_weights=weights, sampler=sampler, max_tokens=max_tokens,
                     init_from=init, latent=latent, **self.train_kw)

    def fit_and_eval(self, d, parts, max_tokens, init, latent, sampler=None, exemplars=None):
        """Train (fit), then evaluate on the reported split (with also_valid, on valid.jsonl too)."""
        cfg = self.cfg
        summary = self.fit(d, parts, max_tokens, init, latent, sampler)
        ev = dict(exemplars=exemplars or self.exemplars, n_shot=cfg["eval_shots"],
                  max_new_tokens=cfg["eval_max_new_tokens"], batch_size=cfg["eval_batch"], limit=cfg["eval_limit"] or None)
        r = evaluate(summary["ckpt"], self.eval_data, out_dir=os.path.join(d, "eval"), **ev)
        out = {"tokens": summary["tokens"], "val": summary.get("val"), "train_s": summary.get("wall_s"),
               "latent": latent, **{k: r[k] for k in ("accuracy", "ci_low", "ci_high", "n", "breakdown") if k in r}}
        if self.valid and self.valid != self.eval_data:  # settings are chosen on these problems, not on eval
            v = evaluate(summary["ckpt"], self.valid, out_dir=os.path.join(d, "valid"), **ev)
            out["valid"] = {k: v[k] for k in ("accuracy", "ci_low", "ci_high", "n", "breakdown")}
        return out

    def reused(self, name):
        """True for a model shared by --reuse_from: its extra measurements belong to (and are made in) its own run."""
        return os.path.islink(os.path.join(self.cfg["run_dir"], name.split("/")[0]))

    def heldout(self, name):
        """The held-out ELBO of the latent model trained in stage name (docs/method.md, Evaluation): the E-step's
        sampling and weighting run on validation chunks no training reads, K = HELDOUT_K samples each, and
        the ELBO per raw token at K = 1, 2, 4 from the same samples. Where few-shot accuracy jumps, this moves
        smoothly: how well the model explains unseen text through its thoughts."""
        cfg = self.cfg
        if not cfg["heldout_docs"] or not self.have("val.chunks.jsonl") or self.reused(name):
            return None
        ckpt = os.path.join(cfg["run_dir"], name, "ckpt.pt")
        return self.stage(f"{name}/heldout", lambda d: run_estep(cfg, ckpt, d, lambda **engine: {
            k: v for k, v in sample_thoughts(
                ckpt, self.path("val.chunks.jsonl"), d, K=HELDOUT_K, max_thought_tokens=cfg["max_thought_tokens"],
                n_prefix=cfg["n_prefix"], seed=cfg["seed"], batch_size=cfg["estep_batch"],
                limit=cfg["heldout_docs"], **engine).items()
            if k in ("chunks", "elbo", "elbo_per_raw_token", "elbo_by_k", "ess", "truncation")}))

    def warm_start(self):
        """M_0 (docs/method.md, Warm start): the warm-start split with the teacher's thoughts, on a budget of its own."""
        self.stage("m0", lambda d: self.fit_and_eval(d, [self.warm], self.cfg["m0_epochs"] * self.size["warm_aug"],
                                                     self.base, True))
        self.heldout("m0")

    def raw_parts(self):
        """The raw documents an M-step's corpus is made of (the bootstrap split alone with mstep_data=bootstrap)."""
        return self.raw if self.cfg["mstep_data"] == "all" else self.raw[1:]

    def baselines(self):
        """The same documents without thoughts (docs/method.md, Baselines): as many raw tokens (and epochs), and as many
        training tokens as an M-step."""
        raw = self.raw_parts()
        raw_tokens = self.cfg["mstep_epochs"] * sum(n_tokens(p[2]) for p in raw)
        self.stage("raw_token_match", lambda d: self.fit_and_eval(d, raw, raw_tokens, self.base, False))
        self.stage("raw_flop_match", lambda d: self.fit_and_eval(d, raw, self.budget, self.base, False))

    def other_uses(self):
        """The paper's Section 3 rows, each a raw model at raw-FLOP-match's budget (docs/method.md, Baselines):
        raw-fresh (unique documents, read once), WRAP (the documents and rephrasings of them) and WRAP-CoT (the
        documents with the teacher's derivations as plain text, the bootstrap split's from its gold thoughts)."""
        cfg, raw = self.cfg, self.raw_parts()

        def written(d, name, docs):  # a chunk file of this stage and its raw bin, written once (rank 0)
            chunks, bin_path = os.path.join(d, f"{name}.chunks.jsonl"), os.path.join(d, f"{name}_raw.bin")
            if rank0() and not os.path.exists(bin_path):
                write_chunks(chunks, docs())
                build_raw_bin(self.tok, chunks, bin_path)
            barrier()
            return chunks, None, bin_path

        have = sum(n_tokens(p[2]) for p in raw)  # raw-FLOP-match's unique tokens

        def fresh(d, n):  # a raw model at the budget on the documents and fresh ones up to n unique tokens, in passes
            extra = written(d, "fresh", lambda: mathworld.fresh_documents(self.data, n - have, self.tok, cfg["seed"]))
            r = self.fit_and_eval(d, raw + [extra], self.budget, self.base, False, sampler="passes")
            unique = min(have + n_tokens(extra[2]), self.read_tokens(self.budget))  # what the training reads
            return {**r, "unique_tokens": unique, "unique_x": unique / have}
        if cfg["raw_fresh"]:  # one pass of unique documents, whatever the sampler
            self.stage("raw_fresh", lambda d: fresh(d, self.read_tokens(self.budget)))
        if cfg["wrap"]:
            self.stage("wrap", lambda d: self.fit_and_eval(d, raw + [written(d, "wrap", lambda: [
                doc for p in raw for doc in mathworld.rephrased_documents(p[0], WRAP_REPHRASINGS, cfg["seed"])])],
                self.budget, self.base, False))

            def wrap_cot(d):
                exemplars = os.path.join(d, "exemplars.jsonl")  # the few-shot solutions show the derivation inline
                if rank0():
                    write_jsonl(exemplars, (mathworld.inline_exemplar(r) for _, r in read_jsonl(self.exemplars)))
                barrier()
                parts = self.mstep_parts(self.gold, None)
                return self.fit_and_eval(d, [written(d, "inline", lambda: [
                    doc for p in parts for doc in mathworld.inline_documents(*p[:2])])], self.budget, self.base, False,
                    exemplars=exemplars)
            self.stage("wrap_cot", wrap_cot)
        for m in cfg["worth"]:
            self.stage(f"worth_x{m}", lambda d: fresh(d, m * have))

    def finetune_all(self):
        """The fine-tuning evaluation of every model this run trained (the official run_finetune_eval.sh, its
        README's recommended measure: few-shot scores are noisy): finetune_seeds fine-tunings of each from its
        checkpoint on the same solved problems, written as its own training wrote them (latent: the derivation as a
        prior-order thought; raw: as plain text), each evaluated greedily and zero-shot on the reported split."""
        cfg, rd = self.cfg, self.cfg["run_dir"]
        if not cfg["finetune_eval"]:
            return
        # named by their number and seed: other settings write another file, never reuse a stale one
        rows = os.path.join(rd, "finetune_data", f"problems_{cfg['finetune_problems']}_seed{cfg['data_seed']}.jsonl")
        if rank0() and not os.path.exists(rows):
            os.makedirs(os.path.dirname(rows), exist_ok=True)
            write_jsonl(rows, mathworld.finetune_problems(self.data, cfg["finetune_problems"], cfg["data_seed"]))
        barrier()
        for name in self.finetune_models():
            with open(os.path.join(rd, name, "stage.json")) as f:
                latent = json.load(f).get("latent", not name.startswith(("raw", "wrap", "worth")))
            ckpt = os.path.join(rd, name, "ckpt.pt")
            self.stage(f"{name}/finetune", lambda d: self.finetune(d, ckpt, latent, rows))

    def finetune_models(self, planned=()):
        """The models finetune_all fine-tunes, in its order: every model of this run_dir, trained by this command
        (planned) or an earlier one, but not one shared by --reuse_from (its own run measures it)."""
        rd, only = self.cfg["run_dir"], finetune_only(self.cfg)
        return [n for n in model_dirs(self.cfg) if (n in planned or os.path.exists(os.path.join(rd, n, "stage.json")))
                and not self.reused(n) and (not only or n in only)]

    def finetune(self, d, ckpt, latent, rows):
        """One model's fine-tuning evaluation: {mean, min, max, seeds} of its finetune_seeds zero-shot accuracies."""
        cfg = self.cfg
        data = os.path.join(d, f"solved_{cfg['finetune_problems']}.bin")  # another count: another file
        if rank0() and not os.path.exists(data):
            build_solved_bin(self.tok, load_rows(rows), data, latent)
        barrier()
        accs = []
        for s in range(cfg["finetune_seeds"]):
            out = os.path.join(d, f"seed{s}")
            summary = train(**{**self.train_kw, "out_dir": out, "train_bins": [data], "init_from": ckpt, "latent": latent,
                               "max_tokens": int(cfg["finetune_epochs"] * n_tokens(data)), "seed": s,
                               "learning_rate": cfg["finetune_lr"], "min_lr": cfg["finetune_lr"] / 10,
                               "weight_decay": 0.0})
            r = evaluate(summary["ckpt"], self.eval_data, out_dir=os.path.join(out, "eval"), exemplars=self.exemplars,
                         n_shot=0, max_new_tokens=cfg["eval_max_new_tokens"], batch_size=cfg["eval_batch"],
                         limit=cfg["eval_limit"] or None)
            accs.append(r["accuracy"])
        return {"mean": sum(accs) / len(accs), "min": min(accs), "max": max(accs), "seeds": accs, "latent": latent}

    def mstep_parts(self, thoughts, frozen_bin):
        """An M-step's corpus (and the oracle's): the bootstrap split with these thoughts, after the warm-start split
        unless mstep_data=bootstrap (the official M-step)."""
        boot = (self.path("boot.chunks.jsonl"), thoughts, frozen_bin)
        return [self.warm, boot] if self.cfg["mstep_data"] == "all" else [boot]

    def oracle(self):
        """An upper bound only a generated corpus allows: the bootstrap split with its gold thoughts, as if the
        E-step recovered every one; the gap to the EM rows is what a better posterior could still gain."""
        def with_gold(d):
            gold_bin = os.path.join(d, "boot_gold_aug.bin")
            if self.cfg["sampler"] == "windows":
                build_augmented_bin(self.tok, self.path("boot.chunks.jsonl"), self.gold, gold_bin, self.cfg["seed"])
            return self.fit_and_eval(d, self.mstep_parts(self.gold, gold_bin), self.budget, self.base, True)
        self.stage("oracle", with_gold)
        self.heldout("oracle")

    def em_iterations(self):
        """EM: the E-step with M_{t-1} infers thoughts for the bootstrap split; the M-step trains M_t from the base
        (docs/method.md, M-step) on them and the warm-start split, with the same budget every iteration."""
        cfg, rd = self.cfg, self.cfg["run_dir"]
        prev = os.path.join(rd, "m0", "ckpt.pt")
        for t in range(1, cfg["iters"] + 1):
            e = self.stage(f"iter{t}/estep", lambda d: run_estep(cfg, prev, d, lambda **engine: sample_thoughts(
                prev, self.path("boot.chunks.jsonl"), d, K=cfg["K"], temperature=cfg["estep_temperature"],
                max_thought_tokens=cfg["max_thought_tokens"],
                selection=cfg["selection"], n_prefix=cfg["n_prefix"], seed=cfg["seed"] * 1000 + t,
                batch_size=cfg["estep_batch"], gold=self.gold, **engine)))
            init = prev if cfg["continue_from_previous"] else self.base
            estep = os.path.join(rd, f"iter{t}", "estep")
            parts = self.mstep_parts(os.path.join(estep, "thoughts.jsonl"), os.path.join(estep, "aug.bin"))
            m = self.stage(f"iter{t}/mstep", lambda d: self.fit_and_eval(d, parts, self.budget, init, True))
            self.heldout(f"iter{t}/mstep")
            prev = os.path.join(rd, f"iter{t}", "mstep", "ckpt.pt")
            log(f"iteration {t}: accuracy {m['accuracy']:.3f}; E-step ELBO {e['elbo']:.2f}, ESS {e['ess']:.2f} of "
                f"{cfg['K']}" + (f", chosen thoughts with the gold result {e['agree_chosen']:.3f} (random of K: "
                                 f"{e['agree_random']:.3f})" if e.get("agree_chosen") is not None else ""))


def run_seeds(cfg):
    """--seeds: this command once per seed, each a child em.py with every setting spelled out, in its own run_dir
    (a rerun resumes each); then the seeds' page. Returns the children's run dirs."""
    if any(isinstance(s, bool) or not isinstance(s, int) for s in cfg["seeds"]):
        raise ValueError(f"seeds must be integers, e.g. --seeds=0,1,2 (or --seeds=3, for one), got {cfg['seeds']!r}")
    gpu = torch.cuda.is_available()
    cores = cfg["threads"] or torch.get_num_threads()
    side = 1 if gpu else max(1, min(len(cfg["seeds"]), cores))  # runs at a time
    own = ("seeds", "run_dir", "seed", "data_seed", "threads", "gpu_preset")
    common = [f"--{k}={v!r}" for k, v in cfg.items() if k not in own and v != DEFAULTS[k]] + ["--gpu_preset=False"]
    dirs = [os.path.join(cfg["run_dir"], f"seed{s}") for s in cfg["seeds"]]
    os.makedirs(cfg["run_dir"], exist_ok=True)
    log(f"{len(dirs)} seeds, {side} at a time{'' if gpu else f' with {max(1, cores // side)} threads each'}; "
        f"each run's log in {cfg['run_dir']}/seed<s>.log")
    running, failed = [], []
    for s, d in zip(cfg["seeds"], dirs):
        while len(running) >= side:
            time.sleep(1)
            failed += [n for p, n in running if p.poll()]  # finished with an error
            running = [(p, n) for p, n in running if p.poll() is None]
        argv = common + [f"--run_dir={d!r}", f"--seed={s}", f"--data_seed={s}", f"--threads={max(1, cores // side)}"]
        with open(os.path.join(cfg["run_dir"], f"seed{s}.log"), "a") as f:
            running.append((subprocess.Popen([sys.executable, os.path.abspath(__file__)] + argv, stdout=f,
                                             stderr=subprocess.STDOUT), s))
        log(f"seed {s} started: python em.py {' '.join(argv)}")
    for p, s in running:
        if p.wait():
            failed.append(s)
    if failed:
        raise SystemExit(f"em.py: seeds {failed} failed; see {cfg['run_dir']}/seed<s>.log (a rerun resumes them)")
    write_sweep(dirs, os.path.join(cfg["run_dir"], "seeds.html"))
    log(f"wrote {cfg['run_dir']}/seeds.html, seeds.md and seeds.png: the mean, min-max and every run")
    return dirs


def main(argv):
    """The whole run from a command line; returns the results table's rows (rank 0)."""
    try:
        cfg, argv, preset = configure(argv)
        if cfg["seeds"]:
            return run_seeds(cfg)
    except (ValueError, TypeError, OSError, SyntaxError) as e:
        usage_error(e)  # a bad setting: one line and status 2, before any work
    setup()  # torchrun: one process group for every stage
    run = Run(cfg, argv, preset)
    run.corpus()
    run.pretrained_base()
    if cfg["em"]:
        run.warm_start()
    if cfg["baselines"]:
        run.baselines()
    run.other_uses()
    if run.oracle_possible:
        run.oracle()
    if cfg["em"]:
        run.em_iterations()
    run.finetune_all()
    return write_results(cfg, log) if rank0() else None


if __name__ == "__main__":
    main(sys.argv[1:])
    teardown()
