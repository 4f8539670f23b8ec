"""
The day a GPU is lent: one command runs the benchmarks and the default run there, and writes every figure with the
device's name into one markdown file, ready for docs/benchmarks.md and the README.

    python bench/gpu_day.py                       # on the GPU machine (the default run: three seeds, extra rows)
    python bench/gpu_day.py --only=model,train    # some steps (names below); --timeout bounds each step
    python bench/gpu_day.py --dry                 # every step at toy sizes on a CPU, in a few minutes (its test)

Each step is a command of this repository run as a new user would run it; its last lines and, for the EM run, its
seeds table go into OUT/gpu_day.md, with the wall time and exit status. A step that fails or times out is
recorded as such and the next one runs: one lent hour should not be lost to one broken step.
"""
import argparse
import os
import platform
import signal
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (name, what it measures, the command on the GPU, the same at toy sizes for --dry); {out}: this run's directory
STEPS = [
    ("model", "forward and backward of the default model", ["bench/bench_model.py"], ["bench/bench_model.py", "--quick"]),
    ("train", "training steps (bf16 autocast and torch.compile on a GPU)", ["bench/bench_train.py"],
     ["bench/bench_train.py", "--quick"]),
    ("estep", "the E-step: decode and scoring", ["bench/bench_estep.py"], ["bench/bench_estep.py", "--quick"]),
    ("em", "python em.py --iters 3: the GPU preset (three seeds, every extra row)",
     ["em.py", "--iters", "3", "--run_dir={out}/em"],
     ["em.py", "config/em_cpu_smoke.py", "--seeds=0,1", "--iters=1", "--n_docs=60", "--eval_limit=8",
      "--baselines=False", "--run_dir={out}/em", "--threads=2"]),
]


def device_name():
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    model = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")] \
        if os.path.exists("/proc/cpuinfo") else []
    return f"CPU: {model[0] if model else platform.processor()}, {os.cpu_count()} cores"


def run_step(argv, timeout):
    """(exit status or 'timeout', seconds, output). The step runs in a session of its own, so that a timeout stops
    every process it started (em.py --seeds starts one per seed), not only the first."""
    t0 = time.time()
    p = subprocess.Popen([sys.executable] + argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
        return p.returncode, time.time() - t0, out
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        return "timeout", time.time() - t0, out


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--out", default="runs/gpu_day", help="where gpu_day.md and the EM run go")
    p.add_argument("--only", default="", help=f"comma-separated steps of {', '.join(s[0] for s in STEPS)}")
    p.add_argument("--dry", action="store_true", help="toy sizes, on any machine: checks that every step runs")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per step")
    p.add_argument("--tail", type=int, default=30, help="output lines kept per step")
    a = p.parse_args(argv)
    names = [s[0] for s in STEPS]
    only = [n for n in a.only.split(",") if n]
    if set(only) - set(names):
        p.error(f"--only: unknown {', '.join(sorted(set(only) - set(names)))} (steps: {', '.join(names)})")
    out = os.path.abspath(a.out)
    os.makedirs(out, exist_ok=True)
    md = [f"# GPU day: {device_name()}", "",
          f"{time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}{', dry run (toy sizes)' if a.dry else ''}; "
          f"python bench/gpu_day.py {' '.join(argv)}", ""]
    for name, what, full, dry in STEPS:
        if only and name not in only:
            continue
        cmd = [x.format(out=out) for x in (dry if a.dry else full)]
        print(f"[gpu_day] {name}: python {' '.join(cmd)}", flush=True)
        t0 = time.time()
        status, secs, text = run_step(cmd, a.timeout)
        md += [f"## {name}: {what}", "", f"`python {' '.join(cmd)}`: exit {status}, {secs / 60:.1f} min on "
               f"{device_name()}", "", "```", *text.rstrip().splitlines()[-a.tail:], "```", ""]
        seeds = os.path.join(out, "em", "seeds.md")
        # the mean, min-max and every run (report.py: write_sweep), if this step wrote it (not an earlier day's)
        if name == "em" and os.path.exists(seeds) and os.path.getmtime(seeds) >= t0:
            md += ["Seeds (run_dir/seeds.md):", "", open(seeds).read().strip(), ""]
    path = os.path.join(out, "gpu_day.md")
    with open(path, "w") as f:
        f.write("\n".join(md) + "\n")
    print(f"[gpu_day] wrote {path}")
    return path


if __name__ == "__main__":
    main(sys.argv[1:])
