"""
The whole method in one command (method.md): warm start, then EM iterations of E-step and M-step, each
evaluated, plus the raw-data baselines.

    python em.py --iters 3                       # the default run on the embedded corpus
    python em.py config/em_cpu_smoke.py          # the whole loop with a tiny model on a CPU in about a minute
    torchrun --nproc_per_node=8 em.py --iters 3  # every stage spread over the GPUs

Every stage writes into run_dir and records its result in <stage>/stage.json; a rerun skips finished stages
(one asking for other settings stops with an error instead), and an interrupted training or E-step continues
where it stopped. --force=True starts over.

    run_dir/data/                 the corpus: chunk files, bins, eval set            (data/mathworld.py)
    run_dir/base/base.pt          the base initialisation every M-step restarts from
    run_dir/m0/                   warm-start model M_0: ckpt.pt, log.jsonl, eval/     (train.py, eval_math.py)
    run_dir/iter{t}/estep/        thoughts.jsonl, aug.bin, summary.json              (sample_thoughts.py)
    run_dir/iter{t}/mstep/        M_t: ckpt.pt, log.jsonl, eval/
    run_dir/raw_token_match/, raw_flop_match/     the baselines; oracle/: gold thoughts (--oracle=True)
    run_dir/results.md, results.json, results.png, invocations.jsonl (each command run on this directory)
    run_dir/report.html           the run on one page: table, plots, sampled thoughts   (report.py)
"""
import json
import os
import shutil
import sys
import time

import torch

from configurator import defaults_of, parse_args
from data.files import atomic_open, build_augmented_bin, check_contract, check_settings, open_bin, read_meta, write_json
from data.mathworld import prepare
from data.tokenizer import get_tokenizer
from eval_math import evaluate
from sample_thoughts import sample_thoughts
from model import setup
from train import make_base, train

# ----------------------------------------------------------------------------- config
run_dir = "runs/default"
iters = 3
force = False
seed = 0
# the corpus: the embedded math world (data/mathworld.py), or data_dir
data_dir = ""             # a prepared directory of your own (data/files.py: the contract) instead of the embedded world
data_seed = 0
n_docs = 2000             # warm start + bootstrap documents
problems_per_doc = (3, 5) # problems per document (min, max)
families = ("chain", "total", "word")  # problem families (data/mathworld.py: FAMILIES)
max_level = 2             # problems have 2 to max_level + 1 steps
warm_fraction = 0.2       # the share with teacher thoughts (method.md: warm start)
teacher_error_rate = 0.0  # the fraction of teacher thoughts with a wrong step
tokenizer = "mathworld"   # mathworld (BPE fitted to the corpus) | byte
# M-step (train.py): a preset, and the budget every training gets (method.md: the same budget every iteration)
train_config = "config/train_mathworld.py"
train_overrides = {}      # any train.py key, e.g. {"n_layer": 2}
base_epochs = 2.0         # pretrain the base on the background text for this many passes (0 = a fresh init)
mstep_epochs = 3.5        # budget = mstep_epochs x the thought-augmented corpus (warm + bootstrap)
m0_epochs = 16.0          # M_0's budget, in passes over the warm-start split (method.md: the paper's is small)
continue_from_previous = False  # ablation: M_t starts from M_{t-1} instead of the base initialisation
# E-step (sample_thoughts.py)
K = 4
selection = "importance"  # importance | uniform | argmax
n_prefix = 1              # prefix chunks given to the posterior (method.md: 3 when bootstrapping; README, Results)
max_thought_tokens = 48
estep_batch = 128         # chunks per batch (each with K rows)
# evaluation (eval_math.py)
eval_split = "eval"       # eval: the held-out evaluation set (final tables) | valid: other problems, for choosing settings
eval_data = ""            # any MATH- or GSM8K-shaped jsonl instead of the data directory's {eval_split}.jsonl
eval_exemplars = ""       # its few-shot exemplars ("" = the data directory's exemplars.jsonl, or GSM8K's train.jsonl)
eval_shots = 2
eval_limit = 0            # 0 = every problem of the evaluation set
eval_max_new_tokens = 64
eval_batch = 128
baselines = True          # raw-token-match and raw-FLOP-match
oracle = True             # also train on the bootstrap split with its GOLD thoughts (what a perfect E-step would
                          # give), where the corpus has them
em = True                 # the warm start and the EM iterations (--em=False: only the baselines, e.g. in a second
                          # process beside the main one, sharing run_dir)
threads = 0               # torch CPU threads (0 = torch's default; 1 is fastest for tiny models on a busy CPU)
reuse_from = ""           # another run_dir whose corpus, M_0 and baselines this run shares (K / selection ablations)
stop_after = ""           # stop after the stage of this name (to test resuming)
gpu_preset = True         # on a GPU, apply config/em_gpu.py first (unless a config file is given)
# -----------------------------------------------------------------------------
DEFAULTS = defaults_of(globals())


def rank0():
    return int(os.environ.get("RANK", "0")) == 0


def log(msg):
    if rank0():
        print(f"[em {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def stage_config(cfg, name):
    """The settings a stage's result depends on. A rerun that asks for other ones is stopped, not served the old
    result (--K=1 on a finished K=4 run_dir would otherwise print the K=4 table)."""
    keys = ["data_dir", "data_seed", "n_docs", "problems_per_doc", "families", "max_level", "warm_fraction", "teacher_error_rate",
            "tokenizer"]
    if name != "data":
        keys += ["seed", "train_config", "train_overrides"]
    if name != "data":
        keys += ["base_epochs"]
    if name not in ("data", "base"):
        keys += ["mstep_epochs", "eval_data", "eval_exemplars", "eval_split", "eval_shots", "eval_limit", "eval_max_new_tokens"]
    if name == "m0":
        keys += ["m0_epochs"]
    if name.startswith("iter"):
        keys += ["K", "selection", "n_prefix", "max_thought_tokens", "estep_batch", "continue_from_previous"]
    return {k: cfg[k] for k in keys}


# minutes each kind of stage took in the default run of each preset (README, Results): the first ETA; later ETAs
# scale it by how fast this machine has been so far
EXPECTED_MIN = {"cpu": {"data": 0.1, "base": 1.5, "m0": 0.8, "raw_token_match": 0.8, "raw_flop_match": 1.5,
                        "estep": 2.3, "mstep": 1.6, "oracle": 1.6},
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
            known = all(kind(n) in self.expected for n in self.todo)
            log(f"{len(self.todo)} stages to run: {', '.join(self.todo)}; "
                + (f"expected about {self.eta():.0f} min (measured for the default settings)" if known
                   else "no time estimate yet for this preset (it comes after the first stage)"))

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


def main(argv):
    # on a GPU, the GPU preset (config/em_gpu.py) unless a config file is given: a bigger world and model
    gpu = torch.cuda.is_available()
    files = [a for a in argv if not a.startswith("-") and a.endswith(".py")]
    if gpu and not files and "--gpu_preset=False" not in argv:
        argv = [os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "em_gpu.py")] + argv
    cfg = {**DEFAULTS, **parse_args(argv, DEFAULTS)}
    rd = cfg["run_dir"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    setup()  # torchrun: one process group for every stage
    preset = "gpu" if gpu and not files else "cpu"
    log(f"{'GPU' if gpu else 'no GPU: CPU'} preset{' with ' + ', '.join(files) if files else ''}; run_dir {rd}; "
        f"{cfg['iters']} EM iterations, K={cfg['K']}; {torch.get_num_threads()} CPU threads"
        + ("" if gpu else "; the 1-minute smoke version: python em.py config/em_cpu_smoke.py"))
    if cfg["force"] and rank0() and os.path.exists(rd):
        shutil.rmtree(rd)
    barrier()
    os.makedirs(rd, exist_ok=True)
    if rank0():
        with open(os.path.join(rd, "invocations.jsonl"), "a") as f:  # several processes may share a run_dir
            f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": argv, "config": cfg}) + "\n")
    data = os.path.abspath(cfg["data_dir"]) if cfg["data_dir"] else os.path.join(rd, "data")
    if cfg["reuse_from"] and rank0():
        # share the corpus, base, M_0, baselines and oracle of another run: the K / selection ablations start from them
        for name in ("data", "base", "m0", "raw_token_match", "raw_flop_match", "oracle"):
            src, dst = os.path.join(os.path.abspath(cfg["reuse_from"]), name), os.path.join(rd, name)
            if os.path.exists(src) and not os.path.lexists(dst):
                os.symlink(src, dst)
    barrier()
    its = [f"iter{t}/{s}" for t in range(1, cfg["iters"] + 1) for s in ("estep", "mstep")]
    # the measured stage times hold for the default settings only (a data_dir or other budgets: no estimate)
    measured = not files and all(cfg[k] == DEFAULTS[k] for k in {*stage_config(cfg, "m0"), *stage_config(cfg, "iter1")}
                                 if k != "seed")
    stage = Stages(cfg, preset if measured else "custom", ["data", "base"] + (["m0"] if cfg["em"] else []) +
                   (["raw_token_match", "raw_flop_match"] if cfg["baselines"] else []) +
                   (["oracle"] if cfg["oracle"] and (not cfg["data_dir"] or
                                                      os.path.exists(os.path.join(data, "boot.gold.jsonl"))) else []) + (its if cfg["em"] else []))
    # the corpus (data/files.py, the contract): warm-start split with teacher thoughts, bootstrap split (raw),
    # validation, evaluation set; the embedded world is generated, a data_dir is only checked
    def make_data(d):
        if cfg["data_dir"]:
            check_contract(data)
        elif rank0():
            prepare(d, seed=cfg["data_seed"], n_docs=cfg["n_docs"], warm_fraction=cfg["warm_fraction"],
                    teacher_error_rate=cfg["teacher_error_rate"], tokenizer=cfg["tokenizer"],
                    problems_per_doc=tuple(cfg["problems_per_doc"]), families=tuple(cfg["families"]),
                    max_level=cfg["max_level"])
        barrier()
        return {name: n_tokens(os.path.join(data, name + ".bin"))
                for name in ("warm_raw", "warm_aug", "boot_raw", "val_raw", "val_aug", "background")
                if os.path.exists(os.path.join(data, name + ".bin"))}
    size = stage("data", make_data)
    have = lambda name: os.path.exists(os.path.join(data, name))
    val = {k: os.path.join(data, f"val_{k}.bin") for k in ("raw", "aug") if have(f"val_{k}.bin")}
    train_kw = dict(config_file=cfg["train_config"], seed=cfg["seed"], tokenizer=read_meta(data)["tokenizer"],
                    **cfg["train_overrides"], val_bins=val)
    gold = os.path.join(data, "boot.gold.jsonl") if have("boot.gold.jsonl") else None  # only where gold exists
    eval_data = cfg["eval_data"] or os.path.join(data, cfg["eval_split"] + ".jsonl")
    valid = os.path.join(data, "valid.jsonl") if have("valid.jsonl") and not cfg["eval_data"] else None
    exemplars = cfg["eval_exemplars"] or (os.path.join(data, "exemplars.jsonl") if have("exemplars.jsonl") else "")

    # the base every training restarts from (method.md, M-step). The paper's base is a pretrained LM; ours is
    # pretrained on the world's background text (derivations without their problems: arithmetic and the form of a
    # derivation, not which problem needs which), or is a fresh initialisation with base_epochs=0
    base = os.path.join(rd, "base", "ckpt.pt" if cfg["base_epochs"] else "init.pt")

    def make_the_base(d):
        init = make_base(os.path.join(d, "init.pt"), **{k: v for k, v in train_kw.items() if k != "val_bins"})
        if not cfg["base_epochs"]:
            return init
        if "background" not in size:
            raise ValueError(f"base_epochs={cfg['base_epochs']} needs {data}/background.bin to pretrain on; with "
                             "--data_dir use --base_epochs=0 (and a pretrained GPT-2 via train_overrides' init_from)")
        s = train(out_dir=d, train_bins=[os.path.join(data, "background.bin")], init_from=init["ckpt"], latent=False,
                  max_tokens=int(cfg["base_epochs"] * size["background"]), **train_kw)
        return {"tokens": s["tokens"], "val": s.get("val"), "train_s": s.get("wall_s")}
    stage("base", make_the_base)

    # the budget of every training: mstep_epochs over the warm-start corpus plus the bootstrap corpus at the warm
    # start's thought density; fixed up front so M_0, every M-step and the FLOP-matched baseline share it
    budget = int(cfg["mstep_epochs"] * (size["warm_aug"] + size["boot_raw"] * size["warm_aug"] / size["warm_raw"]))

    def fit_and_eval(d, bins, max_tokens, init, latent):
        sizes = [n_tokens(b) for b in bins]
        s = train(out_dir=d, train_bins=bins, train_weights=[n / sum(sizes) for n in sizes], max_tokens=int(max_tokens),
                  init_from=init, latent=latent, **train_kw)
        r = evaluate(s["ckpt"], eval_data, exemplars=exemplars,
                     n_shot=cfg["eval_shots"], max_new_tokens=cfg["eval_max_new_tokens"], batch_size=cfg["eval_batch"],
                     limit=cfg["eval_limit"] or None, out_dir=os.path.join(d, "eval"))
        out = {"tokens": s["tokens"], "val": s.get("val"), "train_s": s.get("wall_s"),
               **{k: r[k] for k in ("accuracy", "ci_low", "ci_high", "n", "breakdown") if k in r}}
        if valid and valid != eval_data:  # the validation problems too: settings are chosen on these, not on eval
            v = evaluate(s["ckpt"], valid, exemplars=exemplars, n_shot=cfg["eval_shots"],
                         max_new_tokens=cfg["eval_max_new_tokens"], batch_size=cfg["eval_batch"],
                         limit=cfg["eval_limit"] or None, out_dir=os.path.join(d, "valid"))
            out["valid"] = {k: v[k] for k in ("accuracy", "ci_low", "ci_high", "n", "breakdown")}
        return out

    # warm start (method.md): M_0 on the warm-start split with the teacher's thoughts
    if cfg["em"]:
        stage("m0", lambda d: fit_and_eval(
            d, [os.path.join(data, "warm_aug.bin")], cfg["m0_epochs"] * size["warm_aug"], base, True))
    # raw baselines (method.md): the same documents without thoughts
    raw = [os.path.join(data, "warm_raw.bin"), os.path.join(data, "boot_raw.bin")]
    if cfg["baselines"]:
        stage("raw_token_match", lambda d: fit_and_eval(   # same raw tokens and epochs
            d, raw, cfg["mstep_epochs"] * (size["warm_raw"] + size["boot_raw"]), base, False))
        stage("raw_flop_match", lambda d: fit_and_eval(    # as many tokens as an M-step
            d, raw, budget, base, False))

    # an upper bound only a generated corpus allows: the bootstrap split with its gold thoughts, as if the E-step
    # recovered every one; the gap between this row and the EM rows is what a better posterior could still gain
    if cfg["oracle"] and gold is not None:
        def with_gold(d):
            gold_bin = os.path.join(d, "boot_gold_aug.bin")
            build_augmented_bin(get_tokenizer(read_meta(data)["tokenizer"]), os.path.join(data, "boot.chunks.jsonl"),
                                gold, gold_bin, cfg["seed"])
            return fit_and_eval(d, [os.path.join(data, "warm_aug.bin"), gold_bin], budget, base, True)
        stage("oracle", with_gold)

    # EM: the E-step with M_{t-1} infers thoughts for the bootstrap split; the M-step trains M_t from the base
    prev = os.path.join(rd, "m0", "ckpt.pt")
    for t in range(1, cfg["iters"] + 1 if cfg["em"] else 1):
        e = stage(f"iter{t}/estep", lambda d: sample_thoughts(
            prev, os.path.join(data, "boot.chunks.jsonl"), d, K=cfg["K"], max_thought_tokens=cfg["max_thought_tokens"],
            selection=cfg["selection"], n_prefix=cfg["n_prefix"], seed=cfg["seed"] * 1000 + t,
            batch_size=cfg["estep_batch"], gold=gold))
        init = prev if cfg["continue_from_previous"] else base
        m = stage(f"iter{t}/mstep", lambda d: fit_and_eval(
            d, [os.path.join(data, "warm_aug.bin"), os.path.join(rd, f"iter{t}", "estep", "aug.bin")], budget, init, True))
        prev = os.path.join(rd, f"iter{t}", "mstep", "ckpt.pt")
        log(f"iteration {t}: accuracy {m['accuracy']:.3f}; E-step ELBO {e['elbo']:.2f}, ESS {e['ess']:.2f} of {cfg['K']}"
            + (f", chosen thoughts with the gold result {e['agree_chosen']:.3f} (random of K: {e['agree_random']:.3f})"
               if e.get("agree_chosen") is not None else ""))
    return report(cfg) if rank0() else None


def collect(cfg):
    """The result table's rows, read from the stages' files: the one place they are built (another process sharing
    run_dir, em=False, may have made some of them)."""
    rd, rows = cfg["run_dir"], {}

    def load(name):
        p = os.path.join(rd, name, "stage.json")
        return json.load(open(p)) if os.path.exists(p) else None
    for title, name in (("raw-token-match", "raw_token_match"), ("raw-FLOP-match", "raw_flop_match"),
                        ("gold thoughts (oracle)", "oracle"), ("M0 (warm start)", "m0")):
        if load(name):
            rows[title] = load(name)
    for t in range(1, cfg["iters"] + 1):
        e, m = load(f"iter{t}/estep"), load(f"iter{t}/mstep")
        if e and m:
            rows[f"EM iteration {t}"] = {**m, "estep": e, "wall_s": m["wall_s"] + e["wall_s"]}
    return rows


def report(cfg):
    """results.md and results.json; results.png when matplotlib is installed (an optional extra)."""
    rd, rows = cfg["run_dir"], collect(cfg)
    lines = [f"K = {cfg['K']}, selection = {cfg['selection']}, {'continue from previous' if cfg['continue_from_previous'] else 'restart from base'}",
             "", f"| run | accuracy (95% CI) on {cfg.get('eval_split', 'eval')} | on valid | val loss raw / aug | E-step ELBO | ESS | gold result: chosen / random | "
             "tokens trained | training time | E-step time |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        e, v = r.get("estep", {}), r.get("val") or {}
        num = lambda x, f: "" if x is None else format(x, f)
        agree = f"{e['agree_chosen']:.3f} / {e['agree_random']:.3f}" if e.get("agree_chosen") is not None else ""
        lines.append(f"| {name} | {r['accuracy']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f}) | "
                     f"{num((r.get('valid') or {}).get('accuracy'), '.3f')} | "
                     f"{num(v.get('raw'), '.3f')} / {num(v.get('aug'), '.3f')} | {num(e.get('elbo'), '.2f')} | "
                     f"{num(e.get('ess'), '.2f')} | {agree} | {r['tokens'] / 1e6:.2f}M | {num(r.get('train_s', 0) / 60, '.1f')} min | "
                     f"{num(e['wall_s'] / 60, '.1f') + ' min' if e else ''} |")
    table = "\n".join(lines)
    with atomic_open(os.path.join(rd, "results.md")) as f:  # a reader never sees a half-written table
        f.write(table + "\n")
    write_json(os.path.join(rd, "results.json"), {"config": cfg, "rows": rows})
    print(table, flush=True)
    results_png(rd, rows, cfg)
    try:  # the html page (report.py) is for people; a failure to draw it must never fail the run
        from report import write_report
        log(f"wrote {write_report(rd)}")
    except Exception as e:
        log(f"report.html not written: {e!r}")
    return rows


def results_png(rd, rows, cfg):
    """results.png: accuracy per EM iteration beside the baselines, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    if "M0 (warm start)" not in rows:
        return
    pts = [(0, rows["M0 (warm start)"])] + [(int(k.split()[-1]), v) for k, v in rows.items() if k.startswith("EM")]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar([i for i, _ in pts], [r["accuracy"] for _, r in pts], marker="o", capsize=3, label=f"EM, K={cfg['K']}",
                yerr=[[r["accuracy"] - r["ci_low"] for _, r in pts], [r["ci_high"] - r["accuracy"] for _, r in pts]])
    for name, ls in (("raw-token-match", ":"), ("raw-FLOP-match", "--")):
        if name in rows:
            ax.axhline(rows[name]["accuracy"], ls=ls, color="gray", label=name)
    ax.set_xlabel("EM iteration (0 = warm start M_0)")
    ax.set_ylabel("accuracy on held-out problems")
    ax.legend()
    fig.tight_layout()
    with atomic_open(os.path.join(rd, "results.png"), "wb") as f:
        fig.savefig(f, format="png", dpi=120)


if __name__ == "__main__":
    main(sys.argv[1:])
