"""The command line: --key=value, --key value, --flag, nearest-key hints, --help with comments."""
import subprocess
import sys

import pytest

from configurator import help_text, parse_args

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
