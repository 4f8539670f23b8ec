"""docs/walkthrough.md: every fenced command runs as written, at smoke scale, on one shared smoke run."""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "walkthrough.md")


def commands():
    """The lines of the doc's ```sh blocks: what a teacher types."""
    blocks = re.findall(r"```sh\n(.*?)```", open(DOC).read(), re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_the_doc_has_the_class_steps():
    cmds = commands()
    for start in ("python -m data.mathworld --show 2", "python em.py config/em_cpu_smoke.py --run_dir=runs/smoke",
                  "python sample_thoughts.py --ckpt=runs/smoke/m0/ckpt.pt", "python -m report runs/smoke"):
        assert any(c.startswith(start) for c in cmds), start


def test_every_command_runs_as_written(smoke_run, tmp_path):
    # runs/ of the doc is a folder in tmp whose runs/smoke is the shared smoke run: the doc's own smoke command then
    # only checks that its settings are those of that run (a finished stage asked for other settings is an error)
    runs = tmp_path / "runs"
    runs.mkdir()
    os.symlink(smoke_run, runs / "smoke")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = {}
    for cmd in commands():
        argv = [a.replace("runs/", f"{runs}/") for a in shlex.split(cmd)]
        assert argv[0] == "python", cmd
        r = subprocess.run([sys.executable] + argv[1:], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, cmd + "\n" + r.stdout[-3000:] + r.stderr[-3000:]
        out[cmd] = r.stdout
    show = next(o for c, o in out.items() if c.startswith("python sample_thoughts.py"))
    assert show.count("=== chunk ") == 3 and show.count("log w") >= 6  # three chunks, K = 2 thoughts each (the smoke run's)
    assert "<|START_OF_LATENT|><|PRIOR_PREFIX|>" in out["python -m data.mathworld --show 2"]
    assert (runs / "smoke" / "report.html").exists()
    sweep = (runs / "sweep.html").read_text()
    assert "<h3>K=2</h3>" in sweep and "<h3>K=4</h3>" in sweep
