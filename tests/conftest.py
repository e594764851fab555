"""The tests import this checkout as ``dpcompat`` (whatever dpcompat is installed); the demo's smoke run
is shared by the tests that read its outputs."""
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
runpy.run_path(str(ROOT / "checkout.py"))["import_checkout"]()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """README's ``python cli.py demo --smoke --workdir demo-run``, run once per session in a fresh folder
    (so offline, on generated data): (its workdir, the finished process)."""
    cwd = tmp_path_factory.mktemp("demo")
    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "demo", "--smoke", "--workdir", "demo-run"], cwd=cwd,
                       capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return cwd / "demo-run", r
