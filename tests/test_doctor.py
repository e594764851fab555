"""doctor: the packages around dpcompat with torch's build tag, and whether torch and torchvision are a
matching pair (the ``torchvision::nms`` failure), checked in a child process; torch absent is no error."""
import importlib.metadata
import json

import pytest

from dpcompat.infer.runtime import packages as pk
from onnx_fixtures import run_cli


def installed(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


@pytest.mark.skipif(not (installed("torch") and installed("torchvision")), reason="needs the train extra")
def test_doctor_json_names_the_pairing(tmp_path):
    r = run_cli("doctor", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert set(report["packages"]) == set(pk.PACKAGES)
    assert report["packages"]["faiss"]["version"] == installed("faiss-cpu")
    pair = report["torch_pairing"]
    assert pair["status"] == "matching pair" and pair["ok"] is True and pair["nms"] is True  # this test machine's pair
    assert pair["torch"].startswith(installed("torch")) and "+" in pair["torch"]  # with its build tag
    table = run_cli("doctor", cwd=tmp_path).stdout
    assert f"torch        {pair['torch']} (torch)" in table
    assert "torch/torchvision  matching pair (torchvision::nms loads; both built for " in table


def absent(monkeypatch, *names):
    real = importlib.metadata.version

    def version(name):
        if name in names:
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)
    monkeypatch.setattr(pk.importlib.metadata, "version", version)


def test_without_torch_doctor_says_absent_and_starts_no_process(monkeypatch):
    absent(monkeypatch, "torch", "torchvision", "timm")
    monkeypatch.setattr(pk.subprocess, "run", lambda *a, **k: pytest.fail("no child process without torch"))
    packages = pk.installed_packages()
    assert packages["torch"] is None and packages["onnxruntime"]["distribution"] in ("onnxruntime-gpu", "onnxruntime")
    pair = pk.torch_pairing(packages)
    assert pair == {"status": "torch absent", "ok": None, "problem": None}
    lines = pk.format_packages(packages, pair)
    assert "  torch        not installed" in lines and lines[-1] == "torch/torchvision  torch absent"


@pytest.mark.parametrize("found, problem", [
    ({"torch": "2.14.1+cu130", "torchvision": "0.29.1+cpu", "torch_cuda": "13.0", "torchvision_cuda": None,
      "nms": True}, "torch is built for CUDA 13.0, torchvision for the CPU"),
    ({"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu128", "torch_cuda": "13.0", "torchvision_cuda": 12080,
      "nms": True}, "torch is built for CUDA 13.0, torchvision for CUDA 12.8"),
    ({"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu131", "torch_cuda": "13.0", "torchvision_cuda": 13000,
      "nms": True}, "torch is a cu130 build, torchvision a cu131 build"),
    ({"torch": "2.14.1+cpu", "torch_cuda": None,
      "error": "import torchvision: RuntimeError: operator torchvision::nms does not exist"},
     "import torchvision: RuntimeError: operator torchvision::nms does not exist"),
])
def test_a_mismatched_pair_is_named_with_the_reason(monkeypatch, found, problem):
    monkeypatch.setattr(pk, "_probe_pair", lambda timeout: dict(found))
    pair = pk.torch_pairing({"torch": {}, "torchvision": {}})
    assert (pair["status"], pair["ok"], pair["problem"]) == ("MISMATCHED", False, problem)
    assert "same index and build" in pair["fix"]
    assert pk.format_packages({}, pair) == ["packages:", f"torch/torchvision  MISMATCHED: {problem}; {pair['fix']}"]


def test_a_matching_pair_from_the_probe(monkeypatch):
    monkeypatch.setattr(pk, "_probe_pair", lambda timeout: {"torch": "2.14.1+cu130", "torchvision": "0.29.1+cu130",
                                                            "torch_cuda": "13.0", "torchvision_cuda": 13000, "nms": True})
    pair = pk.torch_pairing({"torch": {}, "torchvision": {}})
    assert pair["ok"] is True and pair["torchvision_cuda"] == "13.0" and pair["problem"] is None


def test_a_child_that_dies_or_hangs_is_reported_not_fatal(monkeypatch):
    monkeypatch.setattr(pk, "_PAIR_PROBE", "import os, sys; sys.stderr.write('boom\\n'); sys.stderr.flush(); os.abort()")
    found = pk._probe_pair(60)
    assert found["error"].startswith("a process importing torch and torchvision died (exit -6): boom")
    monkeypatch.setattr(pk, "_PAIR_PROBE", "import time; time.sleep(30)")
    assert pk._probe_pair(1) == {"error": "importing torch and torchvision took more than 1 s"}


def test_build_tags():
    assert [pk.build_tag(v) for v in ("2.14.1+cu130", "2.14.1", None)] == ["cu130", None, None]
    assert [pk.cuda_text(v) for v in (13000, 12080, -1, "12.8", None)] == ["13.0", "12.8", None, "12.8", None]
