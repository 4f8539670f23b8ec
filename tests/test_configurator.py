"""The command line: --key=value, --key value, --flag, nearest-key hints, --help with comments."""
import os
import subprocess
import sys

import pytest

from configurator import help_text, parse_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = {"iters": 3, "run_dir": "runs/default", "force": False, "lr": 0.1, "train_overrides": {}}


def test_both_spellings_and_flags():
    assert parse_args(["--iters", "5"], DEFAULTS) == {"iters": 5}
    assert parse_args(["--iters=5"], DEFAULTS) == {"iters": 5}
    assert parse_args(["--run_dir", "runs/x", "--force"], DEFAULTS) == {"run_dir": "runs/x", "force": True}
    assert parse_args(["--force", "--iters", "2"], DEFAULTS) == {"force": True, "iters": 2}
    assert parse_args(["--force", "True", "--lr", "1"], DEFAULTS) == {"force": True, "lr": 1.0}
    assert parse_args(["--train_overrides", "{'n_layer': 2}"], DEFAULTS) == {"train_overrides": {"n_layer": 2}}


def test_errors_name_the_key():
    with pytest.raises(ValueError, match="did you mean --iters"):
        parse_args(["--itres", "3"], DEFAULTS)
    with pytest.raises(ValueError, match="did you mean --iters"):
        parse_args(["--itres=3"], DEFAULTS)
    with pytest.raises(ValueError, match="needs a value"):
        parse_args(["--iters"], DEFAULTS)
    with pytest.raises(TypeError, match="--iters must be int"):
        parse_args(["--iters", "three"], DEFAULTS)


def test_help_shows_defaults_and_comments(tmp_path):
    src = tmp_path / "script.py"
    src.write_text("# -----\n# the corpus\niters = 3        # how many rounds\nlr = 0.1\n"
                   "force = False    # start over,\n                 # deleting run_dir\n# -----\n")
    text = help_text({"iters": 3, "lr": 0.1, "force": False}, str(src))
    assert "# the corpus" in text
    assert "--iters=3" in text and "# how many rounds" in text
    assert "start over, deleting run_dir" in text
    assert text.index("# the corpus") < text.index("--iters=3") < text.index("--lr=0.1")


@pytest.mark.parametrize("script", ["em.py", "train.py", "sample_thoughts.py", "eval_math.py"])
def test_every_script_prints_help(script):
    out = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: python" in out.stdout and "--" in out.stdout


@pytest.mark.parametrize("argv, preset", [
    ([], True), (["--gpu_preset=False"], False), (["--gpu_preset", "False"], False), (["--gpu_preset", "false"], False),
    (["--gpu_preset", "True"], True), (["--train_config", "config/train_cpu_smoke.py"], True),
    (["config/em_cpu_smoke.py"], False)])
def test_the_gpu_preset_follows_the_parsed_settings(argv, preset, monkeypatch):
    """On a GPU em.py applies config/em_gpu.py unless gpu_preset parses as False (either spelling) or a config file
    is given; a --key's value ending in .py is a value, not a config file."""
    import em
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    cfg, _, _ = em.configure(argv)
    assert (cfg["estep_batch"] == 512 and cfg["eval_batch"] == 500) == preset, (argv, cfg["estep_batch"])
    assert cfg["n_docs"] == em.DEFAULTS["n_docs"] or not preset  # the GPU preset runs the measured world


def test_the_gpu_preset_changes_throughput_seeds_and_extra_rows_only():
    """config/em_gpu.py runs the measured CPU default: every setting that changes what is trained or evaluated is
    the default's; it differs only in batch sizes of the E-step and the evaluation (throughput), in running three
    seeds, and in turning on the rows that only add measurements."""
    import em
    from configurator import apply, read_config_file
    preset = apply(em.DEFAULTS, read_config_file(em.GPU_PRESET, em.DEFAULTS), em.GPU_PRESET)
    changed = {k for k in em.DEFAULTS if preset[k] != em.DEFAULTS[k]}
    throughput, extra_rows = {"estep_batch", "eval_batch"}, {"raw_fresh", "wrap", "worth", "finetune_eval"}
    assert changed <= throughput | {"seeds"} | extra_rows, changed - throughput - extra_rows
    assert preset["seeds"] == (0, 1, 2) and set(preset) == set(em.DEFAULTS)


def test_the_gpu_presets_seeds_and_world_rows_apply_only_where_they_can(monkeypatch):
    """The preset's three seeds give way to a seed the user names, a shared corpus or torchrun; its world rows to a
    --data_dir corpus; a world row asked for by hand on a --data_dir corpus, or --wrap off the chain family, stops
    before any work."""
    import em
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    assert em.configure([])[0]["seeds"] == (0, 1, 2)
    assert em.configure(["--seed=5"])[0]["seeds"] == () and em.configure(["--reuse_from=runs/a"])[0]["seeds"] == ()
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert em.configure([])[0]["seeds"] == ()
    monkeypatch.delenv("WORLD_SIZE")
    cfg = em.configure(["--data_dir=some/corpus"])[0]
    assert not any(cfg[k] for k in em.WORLD_ROWS) and cfg["estep_batch"] == 512
    with pytest.raises(ValueError, match="--wrap needs the embedded world"):
        em.configure(["--data_dir=some/corpus", "--wrap=True"])
    with pytest.raises(ValueError, match="only the chain family"):
        em.configure(["--gpu_preset=False", "--wrap=True", "--families=('chain', 'total')"])
    # --finetune_only: the models named, each one this run can train (--iters=4 has an iter4/mstep)
    assert em.finetune_only(em.configure(["--finetune_only=m0,iter4/mstep", "--iters=4"])[0]) == ["m0", "iter4/mstep"]
    assert em.finetune_only(em.configure([])[0]) == []


@pytest.mark.parametrize("cmd, says", [
    (["em.py", "--itres", "3"], "did you mean --iters?"),
    (["em.py", "--iters=three"], "--iters must be int"),
    (["em.py", "--finetune_eval=True", "--finetune_only=m0,iter4/mstep"], "['iter4/mstep'] are no models of this run"),
    (["sample_thoughts.py", "--K=0", "--ckpt=x.pt", "--chunks=y.jsonl"], "K (thoughts sampled per chunk)"),
    (["train.py", "--batch_sise=4"], "did you mean --batch_size?"),
    (["eval_math.py", "--n_shots=2"], "did you mean --n_shot?"),
    (["eval_math.py"], "usage: python eval_math.py"),
    (["-m", "hf", "export", "--ckpt=x.pt"], "usage: python -m hf export"),
    (["-m", "report", "/nonexistent/run"], "neither results.json nor invocations.jsonl"),
    (["-m", "data.mathworld", "--families=chain,nope"], "unknown nope")])
def test_a_bad_setting_prints_one_line_and_no_traceback(cmd, says):
    out = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    # one line; argparse's scripts (report, data/*) put their usage line(s) above it
    assert len([ln for ln in out.stderr.splitlines() if not ln.startswith(("usage: ", " "))]) <= 1, out.stderr
