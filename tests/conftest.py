import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One finished run of the smoke preset (1-2 minutes), shared by the tests that only read a run: the report and
    the walkthrough."""
    d = str(tmp_path_factory.mktemp("smoke") / "run")
    cmd = [sys.executable, "em.py", "config/em_cpu_smoke.py", f"--run_dir={d}", "--threads=1"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return d
