"""
The plumbing every stage shares, written once: where a stage runs (device, autocast, its rank among processes),
printing from one process, the checkpoint file (the one writer and the one reader of its keys), and the MFU
estimate train.py reports.

    compute = setup(device)       # every stage starts so; torchrun's process group is joined (or started) here
    print0("...")                 # rank 0 speaks for all
    compute.barrier()             # every rank waits here
    teardown()                    # the end of a script's __main__: ends the process group

A checkpoint is one torch.save'd dict:
    model       the state dict (no _orig_mod. / module. prefixes)
    model_args  the GPTConfig fields
    tokenizer   the tokenizer's name (data/tokenizer.py), checked against the data a stage reads
    latent      trained on thought-augmented text?
    config      the settings of the training that wrote it
    and, from train.py, the state that resumes it: step, steps_total, optimizer, wall_s, done, summary
"""
import datetime
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import torch

from data.files import atomic_open
from model import GPT, GPTConfig


# ---------------------------------------------------------------------- processes
@dataclass
class Compute:
    """Where a stage runs: device, the autocast context its forward passes use, and its place among processes."""
    device: str
    cuda: bool
    ctx: object           # bf16 autocast, or a no-op context
    rank: int = 0
    world: int = 1

    def barrier(self):
        barrier()


# The process group's backends on a GPU: NCCL for CUDA tensors, and gloo for CPU tensors, since the group is made
# once (em.py) and joined by every stage, some of which reduce on the CPU: sample_thoughts.py with engine=vllm
# computes on the CPU (the GPUs are the server's) and all_reduces its counters there, which NCCL alone refuses.
# torch's own default when no backend is named on a CUDA machine (Backend.default_device_backend_map).
BACKEND_CUDA = "cpu:gloo,cuda:nccl"
# How long a collective (a barrier) waits for the slowest rank before the job fails: torch's default is 10 minutes
# for NCCL, while rank 0 alone does stages that take longer and the other ranks wait in a barrier meanwhile: the
# corpus (em.py: data), the E-step's merge of every shard into thoughts.jsonl and aug.bin (sample_thoughts.merge),
# and the vLLM server's start (vllm_engine.serving: up to its start_timeout, 30 minutes). A rank that dies does not
# wait this long: torchrun stops every rank when one exits with an error. DIST_TIMEOUT_MIN overrides it.
DIST_TIMEOUT_MIN = 120.0


def group_timeout():
    return datetime.timedelta(minutes=float(os.environ.get("DIST_TIMEOUT_MIN", DIST_TIMEOUT_MIN)))


def setup(device="auto", dtype="auto"):
    """
    The one set-up of every stage (train, E-step, evaluation, em): device "auto" = this rank's GPU if there is one,
    else the CPU; dtype "auto" = bf16 autocast on CUDA (matmuls in bf16, weights and log-softmaxes float32),
    float32 on a CPU. Under torchrun (WORLD_SIZE > 1) it joins the process group, starting it if no caller has.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"  # set_device needs an index; under torchrun it is this rank's GPU
    cuda = device.startswith("cuda")
    if dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    if cuda:
        torch.cuda.set_device(device)  # so synchronize() and nccl use this rank's GPU
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on CUDA for what runs in float32
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(BACKEND_CUDA if cuda else "gloo", timeout=group_timeout())
    bf16 = dtype == "bfloat16" or (dtype == "auto" and cuda)
    if bf16 and not cuda and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        # measured: a training step of the default model 15x slower than float32 on an AVX2-only CPU
        # (docs/benchmarks.md); AMX or AVX-512 bf16 units are what make bf16 pay on a CPU
        print(f"warning: dtype=bfloat16 on a CPU without bf16 matrix units ({torch.backends.cpu.get_cpu_capability()}"
              "): expect it many times slower than float32", flush=True)
    ctx = torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    return Compute(device, cuda, ctx, rank(), world)


def rank():
    """This process's rank: 0 alone, torch.distributed's once the group exists, else torchrun's RANK."""
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def rank0():
    return rank() == 0


def print0(*args, **kwargs):
    if rank0():
        print(*args, **kwargs)


def barrier():
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def from_rank0(obj):
    """Rank 0's obj (anything picklable) on every rank; each waits until rank 0 sends it."""
    if not torch.distributed.is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def teardown():
    """End the process group at the end of a script (the __main__ of each stage calls it)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------- checkpoints
REQUIRED = ("model", "model_args", "tokenizer")


def save_checkpoint(path, model, tokenizer, latent, config, **state):
    """Write model (a GPT, not a compiled or DDP wrapper) as a checkpoint of this project; state: train.py's step,
    steps_total, optimizer, wall_s, done, summary. Written to a temporary name, then renamed, so a crash never
    leaves a half-written checkpoint that looks complete."""
    checkpoint = {"model": model.state_dict(), "model_args": asdict(model.config), "tokenizer": tokenizer,
                  "latent": latent, "config": config, **state}
    with atomic_open(path, "wb") as f:
        torch.save(checkpoint, f)


def clean_state_dict(sd):
    # torch.compile wraps the model as _orig_mod, DDP as module: strip both so any checkpoint loads
    out = {}
    for k, v in sd.items():
        for pre in ("_orig_mod.", "module."):
            k = k.removeprefix(pre)
        out[k] = v
    return out


def load_checkpoint(path, device="cpu", tokenizer=None, **config):
    """(model, checkpoint dict) from a checkpoint of this project; the one loader every stage uses. tokenizer (a
    name), when given, must be the checkpoint's; config overrides GPTConfig fields that do not change the weights
    (dropout)."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
    except OSError:
        raise  # a missing or unreadable file: the message names the path already
    except Exception as e:  # unpickling and zip errors do not name the file
        raise ValueError(f"{path}: not readable as a checkpoint ({type(e).__name__}: {e})") from e
    for key in REQUIRED:
        if not isinstance(checkpoint, dict) or key not in checkpoint:
            raise ValueError(f"{path}: not a checkpoint of this project (no {key!r})")
    if tokenizer is not None and checkpoint["tokenizer"] != tokenizer:
        raise ValueError(f"{path}: checkpoint of tokenizer {checkpoint['tokenizer']!r}, but the config says "
                         f"{tokenizer!r}")
    model = GPT(GPTConfig(**{**checkpoint["model_args"], **config}))
    model.load_state_dict(clean_state_dict(checkpoint["model"]))
    return model.to(device), checkpoint


# bf16 dense peak FLOP/s (no sparsity) by device name, from the vendors' data sheets
PEAK_FLOPS = [
    ("H200", 989e12), ("GH200", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("H800", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12),
    ("A10G", 70e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12), ("V100", 125e12), ("T4", 65e12),
]


def peak_flops(device_name):
    for key, flops in PEAK_FLOPS:
        if key in device_name:
            return flops
    return None


def flops_per_token(model, T):
    # 6N for the matmuls forward+backward, plus attention 12 * L * H * Q * T (PaLM appendix B)
    cfg = model.config
    return 6 * model.get_num_params() + 12 * cfg.n_layer * cfg.n_head * (cfg.n_embd // cfg.n_head) * T


def estimate_mfu(model, tokens_per_sec, T, device_name=None):
    """Model FLOPs utilisation as a fraction of the GPU's bf16 peak; None when the GPU is not in the table."""
    if device_name is None:
        device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = peak_flops(device_name)
    return None if peak is None else flops_per_token(model, T) * tokens_per_sec / peak

