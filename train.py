"""
The M-step (docs/method.md, M-step): train a language model on token bins, nanoGPT-style.

    python train.py config/train_mathworld.py --train_bins="['runs/x/data/warm_aug.bin']" --max_tokens=20000000
    torchrun --nproc_per_node=8 train.py config/train_gpt2_124m.py ...
    python -c "from train import train; train('config/train_cpu_smoke.py', out_dir='out', train_bins=[...])"

Every M-step restarts from the same base initialisation (make_base) on the thought-augmented corpus; the loss is
plain next-token cross-entropy on every token (thoughts, text and special tokens alike; nothing is masked).
Batches and dropout are pure functions of (seed, step, micro-step, rank), so a run interrupted and called again
continues from out_dir/ckpt.pt and ends with the same weights as an uninterrupted one.
"""
import json
import math
import os
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import apply, command_line, defaults_of, parse_args
from data.files import atomic_open, check_settings, open_bin
from data.tokenizer import canonical, get_tokenizer
from common import barrier, estimate_mfu, load_checkpoint, print0, rank0, save_checkpoint, setup, teardown
from hf import from_pretrained
from model import GPT, GPTConfig

# ----------------------------------------------------------------------------- config
out_dir = "out"
train_bins = []           # token bins to train on
train_weights = None      # mixing weight per bin; None = proportional to each bin's size
sampler = "windows"       # windows: each row a random window of a bin drawn by the weights (nanoGPT) | passes:
                          # ONE bin read front to back in consecutive windows (data/files.py: build_passes_bin
                          # writes its passes, each document once per pass, as the official loader streams them)
val_bins = {}             # name -> bin, e.g. {"raw": ".../val_raw.bin", "aug": ".../val_aug.bin"}
init_from = "scratch"     # "scratch" | a .pt checkpoint of this project (weights only) | a local HF GPT-2 or Llama dir
tokenizer = "byte"
latent = False            # recorded in the checkpoint: trained on thought-augmented data?
# model (ignored when init_from is a checkpoint or a Hugging Face directory: the shape comes from there)
n_layer = 6
n_head = 6
n_embd = 384
block_size = 1024
dropout = 0.0
bias = True
rope_theta = 0.0          # > 0: rotary positions (Llama) instead of learned ones
norm = "layernorm"        # layernorm | rmsnorm (Llama)
mlp = "gelu"              # gelu (GPT-2: tanh form) | gelu_exact (erf form) | swiglu (Llama)
n_kv_head = 0             # grouped-query attention: key/value heads (0 = n_head)
tie_embeddings = True
# budget and optimiser
batch_size = 32           # rows per micro-step per process
grad_accum = 1            # micro-steps per optimiser step
max_tokens = 0            # token budget; 0 = run max_steps
max_steps = 1000
learning_rate = 1e-3
min_lr = 1e-4
warmup_frac = 0.05        # fraction of the steps spent warming up, then cosine decay to min_lr
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0           # 0 = off
# evaluation, logging, checkpoints (in steps)
eval_interval = 200
eval_tokens = 65536       # tokens per val bin per evaluation, on a fixed set of windows
log_interval = 10
ckpt_interval = 200
stop_after = 0            # stop (and checkpoint) after this many steps; 0 = run to the end. For tests of resuming
resume = "auto"           # "auto": continue out_dir/ckpt.pt when its config matches | "never": start over
# system
seed = 0
device = "auto"           # "auto" = cuda if available, else cpu
dtype = "auto"            # "auto" = bfloat16 autocast on cuda, float32 on cpu | "float32" | "bfloat16"
compile = None            # None or "auto" = on for cuda, off for cpu | True | False
# -----------------------------------------------------------------------------
DEFAULTS = defaults_of(globals())
# keys that may change between an interrupted run and its continuation without changing the weights
HARMLESS = {"out_dir", "val_bins", "eval_interval", "eval_tokens", "log_interval", "ckpt_interval", "stop_after",
            "resume", "device", "compile"}


def resolve(config_file=None, **overrides):
    """Defaults <- config file <- keyword overrides, each key and type checked (a typo is an error)."""
    cfg = apply(DEFAULTS, parse_args([config_file], DEFAULTS) if config_file else {}, config_file or "")
    cfg = apply(cfg, overrides, "train() arguments")
    return {**cfg, "tokenizer": canonical(cfg["tokenizer"])}  # a tokenizer file: by its absolute path


def build_model(cfg, tok):
    """The starting model: a seeded fresh init, a project checkpoint's weights, or a local Hugging Face directory."""
    src = cfg["init_from"]
    if src == "scratch":
        torch.manual_seed(cfg["seed"])
        shape = ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "rope_theta", "norm", "mlp",
                 "n_kv_head", "tie_embeddings")
        return GPT(GPTConfig(vocab_size=tok.n_vocab, **{k: cfg[k] for k in shape}))
    if os.path.isdir(src):  # a Hugging Face directory: GPT-2 (tokenizer gpt2) or Llama (its own tokenizer.json)
        return from_pretrained(src, tok, block_size=cfg["block_size"])
    if not os.path.isfile(src):
        raise FileNotFoundError(f"init_from={src!r}: neither 'scratch', a checkpoint file nor a Hugging Face "
                                f"directory")
    return load_checkpoint(src, tokenizer=tok.name, dropout=cfg["dropout"])[0]


def make_base(path, config_file=None, **overrides):
    """em.py's base initialisation: the configured starting model, saved once; every M-step restarts from it."""
    cfg = resolve(config_file, **overrides)
    tok = get_tokenizer(cfg["tokenizer"])
    model = build_model(cfg, tok)
    if rank0():  # only rank 0 writes
        save_checkpoint(path, model, tok.name, latent=False, config=cfg, step=0)
    barrier()  # the other ranks read it next
    return {"ckpt": path, "params": model.get_num_params()}


def bin_info(path, tok_name, T):
    """Check a bin once (tokenizer, length) and return its length."""
    n = len(open_bin(path, tokenizer=tok_name))
    if n < T + 1:
        raise ValueError(f"{path}: {n} tokens, fewer than block_size + 1 = {T + 1}")
    return n


def mixing(cfg, tok):
    """Each train bin's probability of filling a row (train_weights, default proportional to size); every bin checked."""
    if not cfg["train_bins"]:
        raise ValueError("train_bins is empty: nothing to train on")
    if cfg["sampler"] not in ("windows", "passes"):
        raise ValueError(f"sampler must be 'windows' or 'passes', got {cfg['sampler']!r}")
    if cfg["sampler"] == "passes" and len(cfg["train_bins"]) != 1:
        raise ValueError(f"sampler='passes' reads ONE bin front to back (data/files.py: build_passes_bin mixes the "
                         f"parts), got {len(cfg['train_bins'])}: {cfg['train_bins']}")
    sizes = [bin_info(p, tok.name, cfg["block_size"]) for p in cfg["train_bins"]]
    for p in cfg["val_bins"].values():
        bin_info(p, tok.name, cfg["block_size"])
    w = np.array(sizes if cfg["train_weights"] is None else cfg["train_weights"], dtype=np.float64)
    if len(w) != len(sizes) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"train_weights {cfg['train_weights']} must be {len(sizes)} non-negative numbers, not all 0")
    return w / w.sum()


def get_batch(cfg, bins, probs, step, micro, rank=0, world=1):
    """
    (x, y) int64 (B, T) for one micro-step: each row picks a bin by the mixing weights, then a random window
    (sampler="windows"), or the next B windows of the one bin, read in order (sampler="passes"; past its end,
    from its start again). A pure function of (seed, step, micro, rank): a resumed run sees exactly the batches
    it would have seen.
    """
    B, T = cfg["batch_size"], cfg["block_size"]
    if cfg["sampler"] == "passes":
        data = open_bin(bins[0], tokenizer=cfg["tokenizer"])
        first = ((step * cfg["grad_accum"] + micro) * world + rank) * B  # this micro-batch's first window
        start = ((first + np.arange(B)) * T) % (len(data) - T)
        xy = torch.from_numpy(data[start[:, None] + np.arange(T + 1)].astype(np.int64))
        return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()
    rng = np.random.default_rng([cfg["seed"], step, micro, rank])
    which = rng.choice(len(bins), size=B, p=probs)
    rows = np.empty((B, T + 1), dtype=np.int64)
    for b, path in enumerate(bins):
        sel = np.nonzero(which == b)[0]
        if len(sel):
            data = open_bin(path, tokenizer=cfg["tokenizer"])  # re-opened per batch: no resident-memory growth
            start = rng.integers(0, len(data) - T, size=len(sel))
            rows[sel] = data[start[:, None] + np.arange(T + 1)]
    xy = torch.from_numpy(rows)
    return xy[:, :-1].contiguous(), xy[:, 1:].contiguous()


def to_device(dev, *tensors):
    if str(dev).startswith("cuda"):  # pinned host memory: the copy runs asynchronously, overlapping the compute
        return [t.pin_memory().to(dev, non_blocking=True) for t in tensors]
    return [t.to(dev) for t in tensors]


def batches(cfg, probs, step, rank, dev, world=1):
    """The micro-batches from (step, micro 0) on, in order, already on the device."""
    while True:
        for micro in range(cfg["grad_accum"]):
            yield to_device(dev, *get_batch(cfg, cfg["train_bins"], probs, step, micro, rank, world))
        step += 1


def train_step(model, optimizer, data, batch, cfg, ctx, ddp=False):
    """
    One optimiser step of the M-step: grad_accum micro-steps of forward and backward, gradient clipping, AdamW.
    batch is this step's first micro-batch; data yields the ones after it, each read while the device computes
    the previous one. Returns (the summed micro-step losses as a tensor: no host sync, the next micro-batch).
    """
    A, loss_sum = cfg["grad_accum"], 0.0
    for micro in range(A):
        # DDP: all-reduce the gradients only on the last micro-step
        with model.no_sync() if ddp and micro < A - 1 else nullcontext(), ctx:
            _, loss = model(*batch)
        batch = next(data)
        (loss / A).backward()
        loss_sum = loss_sum + loss.detach()
    if cfg["grad_clip"] > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, batch


def lr_at(cfg, it, steps):
    """Linear warmup over warmup_frac of the steps, then cosine decay to min_lr."""
    warm = int(cfg["warmup_frac"] * steps)
    if it < warm:
        return cfg["learning_rate"] * (it + 1) / (warm + 1)
    ratio = (it - warm) / max(1, steps - warm)
    return cfg["min_lr"] + 0.5 * (1 + math.cos(math.pi * ratio)) * (cfg["learning_rate"] - cfg["min_lr"])


def make_optimizer(model, cfg, device_type):
    # weight decay on matrices (2-D: linear weights, embeddings), none on biases and LayerNorm gains
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg["learning_rate"], betas=(cfg["beta1"], cfg["beta2"]),
                             fused=device_type == "cuda")


@torch.no_grad()
def val_loss(model, cfg, val, ctx, device, rank, world):
    """Loss per token of each val bin over a FIXED set of evenly spaced windows (the same every evaluation)."""
    model.eval()
    out, B, T = {}, cfg["batch_size"], cfg["block_size"]
    for name, path in val.items():
        data = open_bin(path, tokenizer=cfg["tokenizer"])
        starts = np.linspace(0, len(data) - T - 1, max(1, cfg["eval_tokens"] // T)).astype(np.int64)[rank::world]
        total = torch.zeros(2, device=device)  # (sum of loss x rows, rows)
        for i in range(0, len(starts), B):
            xy = torch.from_numpy(data[starts[i:i + B, None] + np.arange(T + 1)].astype(np.int64)).to(device)
            with ctx:
                _, loss = model(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())
            total += torch.stack([loss.float() * len(xy), torch.tensor(float(len(xy)), device=device)])
        if world > 1:
            dist.all_reduce(total)
        out[name] = (total[0] / total[1]).item()
    model.train()
    return out


def resume_or_start(cfg, tok, ckpt_path, steps, world):
    """(model, checkpoint or None): out_dir/ckpt.pt of the same config continues (a finished one is returned as it
    is); another config there is an error; without one, the starting model (build_model)."""
    if cfg["resume"] not in ("auto", "never"):
        raise ValueError(f"resume must be 'auto' or 'never', got {cfg['resume']!r}")
    if cfg["resume"] == "never" or not os.path.exists(ckpt_path):
        return build_model(cfg, tok), None
    model, ckpt = load_checkpoint(ckpt_path, tokenizer=tok.name)
    check_settings(ckpt_path, ckpt.get("config", {}), cfg, ignore=HARMLESS,
                   hint="use another out_dir, delete it, or pass resume='never' to start over")
    if not ckpt.get("done") and ckpt.get("steps_total") != steps:  # another number of processes: other batches
        raise ValueError(f"{ckpt_path}: a run of {ckpt.get('steps_total')} steps, now {steps} "
                         f"({world} processes); continue it with the number of processes it started with")
    return model, ckpt


def train(config_file=None, **overrides):
    """Train per the config; returns {"tokens", "steps", "val", "wall_s", "tokens_per_s", "mfu", "ckpt", "latent",
    "done"}. Continues an interrupted run in out_dir; a finished one returns its summary without training."""
    cfg = resolve(config_file, **overrides)
    t_start = time.time()
    if cfg["compile"] not in (None, "auto", True, False):
        raise ValueError(f"compile must be None, 'auto', True or False, got {cfg['compile']!r}")
    compute = setup(cfg["device"], cfg["dtype"])  # torchrun: joins (or starts) the process group
    rank, world, dev, ddp = compute.rank, compute.world, compute.device, compute.world > 1
    tok = get_tokenizer(cfg["tokenizer"])
    T, B, A = cfg["block_size"], cfg["batch_size"], cfg["grad_accum"]
    probs = mixing(cfg, tok)
    tokens_per_step = B * A * T * world
    steps = math.ceil(cfg["max_tokens"] / tokens_per_step) if cfg["max_tokens"] > 0 else cfg["max_steps"]

    ckpt_path, log_path = os.path.join(cfg["out_dir"], "ckpt.pt"), os.path.join(cfg["out_dir"], "log.jsonl")
    model, ckpt = resume_or_start(cfg, tok, ckpt_path, steps, world)
    if ckpt is not None and ckpt.get("done"):
        return ckpt["summary"]  # finished already
    if model.config.block_size < T:
        raise ValueError(f"block_size {T} > the model's {model.config.block_size} (init_from={cfg['init_from']!r})")
    model.to(dev)
    module = model  # the GPT itself, not its compiled or DDP wrapper: saved, evaluated and measured
    optimizer = make_optimizer(model, cfg, "cuda" if compute.cuda else "cpu")
    step, wall0 = 0, 0.0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        step, wall0 = ckpt["step"], ckpt.get("wall_s", 0.0)
    del ckpt
    if compute.cuda if cfg["compile"] in (None, "auto") else cfg["compile"]:
        model = torch.compile(model)
    if ddp:
        model = DDP(model, device_ids=[int(os.environ["LOCAL_RANK"])] if compute.cuda else None)

    def log(event):
        if rank == 0:
            with open(log_path, "a") as f:
                f.write(json.dumps(event) + "\n")

    if rank == 0:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        # drop events logged after the checkpoint we continue from: they will be logged again
        old = [json.loads(ln) for ln in open(log_path)] if step > 0 and os.path.exists(log_path) else []
        with atomic_open(log_path) as f:  # replaced whole: a crash here must not lose the log
            f.writelines(json.dumps(e) + "\n" for e in old if e.get("step", 0) <= step)
        print(f"train: {module.get_num_params() / 1e6:.2f}M params, {steps} steps of {tokens_per_step:,} tokens "
              f"on {world}x {dev}{', resuming at step ' + str(step) if step else ''}", flush=True)
    log({"event": "start", "step": step, "steps": steps, "tokens_per_step": tokens_per_step, "world": world})

    def save(done, summary=None):
        # no random state to save: batches and dropout are re-seeded from (seed, step, micro, rank)
        if rank == 0:
            save_checkpoint(ckpt_path, module, tok.name, cfg["latent"], cfg, step=step, steps_total=steps,
                            optimizer=None if done else optimizer.state_dict(),  # done: not needed
                            wall_s=wall0 + time.time() - t_start, done=done, summary=summary)

    val = {}
    if step == 0 and cfg["val_bins"]:
        val = val_loss(module, cfg, cfg["val_bins"], compute.ctx, dev, rank, world)
        log({"event": "eval", "step": 0, "tokens": 0, "val": val})
    end = min(steps, cfg["stop_after"]) if cfg["stop_after"] > 0 else steps
    speed = Speed(tokens_per_step, steps, step)
    loss_sum = torch.zeros((), device=dev)
    data = batches(cfg, probs, step, rank, dev, world)
    batch = next(data)
    while step < end:
        torch.manual_seed(cfg["seed"] * 1_000_003 + step * 1009 + rank)  # dropout: a pure function of the step
        lr = lr_at(cfg, step, steps)
        for g in optimizer.param_groups:
            g["lr"] = lr
        loss, batch = train_step(model, optimizer, data, batch, cfg, compute.ctx, ddp)
        loss_sum += loss
        step += 1
        if step % cfg["log_interval"] == 0 or step == end:
            loss_val = loss_sum.item() / (A * (step - speed.step))  # the sync point
            tps, eta = speed.tick(step)
            mfu = estimate_mfu(module, tps / world, T) if compute.cuda else None
            if rank == 0:
                print(f"step {step}/{steps} | loss {loss_val:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | mfu "
                      f"{'-' if mfu is None else f'{100 * mfu:.1f}%'} | eta {eta / 60:.1f} min", flush=True)
            log({"event": "train", "step": step, "tokens": step * tokens_per_step, "loss": loss_val, "lr": lr,
                 "tokens_per_s": tps, "mfu": mfu, "elapsed_s": wall0 + time.time() - t_start})
            loss_sum.zero_()
        t_pause = time.time()  # evaluation and checkpoints are not training time
        if cfg["val_bins"] and (step % cfg["eval_interval"] == 0 or step == steps):
            val = val_loss(module, cfg, cfg["val_bins"], compute.ctx, dev, rank, world)
            if rank == 0:
                print(f"step {step}: val " + " | ".join(f"{k} {v:.4f}" for k, v in val.items()), flush=True)
            log({"event": "eval", "step": step, "tokens": step * tokens_per_step, "val": val})
        if step < steps and (step % cfg["ckpt_interval"] == 0 or step == end):
            save(False)
        speed.pause(time.time() - t_pause)
    tps = speed.steady()
    summary = {"tokens": step * tokens_per_step, "steps": step, "val": val, "wall_s": wall0 + time.time() - t_start,
               "tokens_per_s": tps, "mfu": estimate_mfu(module, tps / world, T) if compute.cuda and tps else None,
               "ckpt": ckpt_path, "latent": cfg["latent"], "done": step >= steps}
    if step >= steps:
        save(True, summary)
        log({"event": "done", "step": step, **{k: summary[k] for k in ("tokens", "wall_s", "tokens_per_s", "mfu")}})
    compute.barrier()  # the checkpoint is complete before any rank returns
    return summary


class Speed:
    """Tokens/s between log lines, the ETA, and the steady-state speed (the first interval, compilation, left out)."""

    def __init__(self, tokens_per_step, steps, step):
        self.tokens_per_step, self.steps, self.step, self.t = tokens_per_step, steps, step, time.time()
        self.first, self.time, self.tokens = None, 0.0, 0

    def tick(self, step):
        dt, n = time.time() - self.t, self.tokens_per_step * (step - self.step)
        if self.first is None:
            self.first = (dt, n)
        else:
            self.time, self.tokens = self.time + dt, self.tokens + n
        eta = (self.steps - step) * dt / (step - self.step)
        self.step, self.t = step, time.time()
        return n / dt, eta

    def pause(self, seconds):  # evaluation and checkpoints: not training time
        self.t += seconds

    def steady(self):
        time_, tokens = (self.time, self.tokens) if self.tokens or self.first is None else self.first
        return tokens / time_ if time_ > 0 else None


if __name__ == "__main__":
    summary = train(**command_line(sys.argv[1:], DEFAULTS))
    print0("summary: " + json.dumps(summary), flush=True)
    teardown()
