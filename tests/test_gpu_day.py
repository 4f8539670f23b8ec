"""bench/gpu_day.py, the command for the day a GPU is lent: its dry mode runs every step on the CPU and writes the
markdown file of figures."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_dry_run_writes_every_steps_figures_with_the_device(tmp_path):
    r = subprocess.run([sys.executable, "bench/gpu_day.py", "--dry", f"--out={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    md = open(tmp_path / "gpu_day.md").read()
    assert md.startswith("# GPU day: ")  # the device's name, CPU here
    for step in ("model", "train", "estep", "em"):
        assert f"## {step}: " in md, step
    assert md.count(": exit 0, ") == 4, md  # every step ran and succeeded
    assert "Seeds (run_dir/seeds.md):" in md and "| M0 (warm start)" in md  # the EM run's mean and spread


def test_an_unknown_step_is_refused():
    r = subprocess.run([sys.executable, "bench/gpu_day.py", "--only=modle"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "unknown modle" in r.stderr
