"""`evaluate` end to end: from ONNX files, from an exports folder, from the store; torch-free; refusals."""
import json
import subprocess
import sys

import pytest

from dpcompat.infer.data.datasets import dataset_key
from onnx_fixtures import run_cli, write_data, write_model, write_random_set


def KEY(workdir):
    """The store folder of cifar10:test under the work folder's data/."""
    return dataset_key("cifar10:test", workdir / "data")

BLOCK_TORCH = '''
import sys


class _NoTorch:
    """Any import of torch, torchvision or timm fails, as on a production host without them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "timm"):
            raise ImportError(f"{name} is blocked: infer/ and evaluate/ must not import it")
        return None


sys.meta_path.insert(0, _NoTorch())
'''


@pytest.fixture
def workdir(tmp_path):
    write_data(tmp_path / "data", test_per_class=4)
    for task in (1, 2, 10):  # file-name order (task1, task10, task2) differs from task order
        write_model(tmp_path / "exports" / f"task{task}.onnx", task=task, dim=8)
    return tmp_path


def test_embed_and_evaluate_run_without_torch(workdir):
    blocker = workdir / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    env = {"PYTHONPATH": str(blocker)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "is blocked" in probe.stderr
    embed = run_cli("embed", "--model", "exports/task1.onnx", "--dataset", "cifar10:test", "--provider", "cpu",
                    "--quiet", cwd=workdir, env=env)
    assert embed.returncode == 0, embed.stderr
    evaluate = run_cli("evaluate", "--models", "exports/task1.onnx", "exports/task2.onnx", "--query", "cifar10:test",
                       "--provider", "cpu", "--quiet", cwd=workdir, env=env)
    assert evaluate.returncode == 0, evaluate.stderr
    assert (workdir / "reports" / "compatibility.json").is_file()


def test_evaluate_from_exports_dir_orders_by_task_then_from_store(workdir):
    first = run_cli("evaluate", "--exports-dir", "exports", "--out", "r1", "--provider", "cpu", cwd=workdir)
    assert first.returncode == 0, first.stderr
    report = json.loads((workdir / "r1" / "compatibility.json").read_text())
    assert report["models"] == ["task1", "task2", "task10"]
    assert report["protocol"]["own_image_left_out"] is True and report["query"]["count"] == 40
    assert "cells" in first.stderr and "3 models: task1, task2, task10" in first.stdout
    assert "top1" in first.stdout and "AC" in first.stdout
    for model in ("task1", "task2", "task10"):
        assert (workdir / "embeddings" / model / KEY(workdir) / "manifest.json").is_file()
    (workdir / "exports").rename(workdir / "gone")  # --from-store needs no ONNX file and no data
    (workdir / "data").rename(workdir / "gone-data")
    again = run_cli("evaluate", "--from-store", "task1,task2,task10", "--out", "r2", "--quiet", "--full-map",
                    cwd=workdir)
    assert again.returncode == 0, again.stderr
    full = json.loads((workdir / "r2" / "compatibility.json").read_text())["metrics"]
    assert "mAP" not in report["metrics"] and full.pop("mAP") and full == report["metrics"]  # exact mAP: opt-in
    kept = run_cli("evaluate", "--from-store", "task1,task2", "--include-self", "--out", "r3", "--quiet", cwd=workdir)
    self_report = json.loads((workdir / "r3" / "compatibility.json").read_text())
    assert kept.returncode == 0 and self_report["metrics"]["top1"][0][0] == 1.0  # each query finds itself


def test_evaluate_refusals_are_one_line(workdir):
    store, key, data = workdir / "embeddings", KEY(workdir), str(workdir / "data")
    write_random_set(store / "a" / key, "a", data_path=data)
    write_random_set(store / "b" / key, "b", dim=16, data_path=data)
    write_random_set(store / "c" / key, "c", fingerprint="e" * 64, data_path=data)
    write_random_set(store / "d" / key, "d", spec="cifar10:train", data_path=data)  # under another data set's name
    write_random_set(store / "e" / "cifar10-test", "e")  # where store format 1 put it
    cases = {
        ("--from-store", "a,d"): f"holds embeddings of cifar10:train:{workdir / 'data' / 'cifar-10-batches-py'}, "
                                 f"not of the data asked for, cifar10:test:{workdir / 'data' / 'cifar-10-batches-py'}",
        ("--from-store", "e"): "no stored set of e on cifar10:test",
        ("--from-store", "a,b"): "dimension 16",
        ("--from-store", "a,c"): "other query data",
        ("--from-store", "a,zz"): "no stored set of zz on cifar10:test",
        ("--from-store", "a,a"): "two models with the id 'a'",
        ("--from-store", "a", "--k", "0"): "--k 0",
        ("--from-store", "a", "--primary-metric", "top-1"): "--primary-metric top-1: expected one of top1, top5",
        ("--from-store", "a", "--tolerance", "1"): "--tolerance 1.0: expected a number from 0 to below 1",
        ("--from-store", "a", "--tolerance", "nan"): "--tolerance nan: expected a finite number >= 0",
        ("--from-store", "a", "exports/task1.onnx"): "--from-store evaluates stored sets only",
        (): "no models",
    }
    for args, message in cases.items():
        r = run_cli("evaluate", *args, "--quiet", cwd=workdir)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith("error: ") and message in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr


def test_evaluate_gallery_of_other_data(workdir):
    write_data(workdir / "data", "cifar100", test_per_class=1, classes=100)
    r = run_cli("evaluate", "--models", "exports/task1.onnx", "exports/task2.onnx", "--query", "cifar10:test",
                "--gallery", "cifar100:test", "--provider", "cpu", "--quiet", cwd=workdir)
    assert r.returncode == 0, r.stderr
    report = json.loads((workdir / "reports" / "compatibility.json").read_text())
    assert report["protocol"]["own_image_left_out"] is False
    assert report["gallery"]["spec"] == "cifar100:test" and report["gallery"]["count"] == 100


def test_from_store_never_takes_another_folder_of_the_same_name(workdir):
    """Issue 10: folder:a/images and folder:b/images once shared one set, so --from-store compared the wrong data."""
    from test_infer_datasets import write_folder

    write_folder(workdir / "a" / "images")
    write_folder(workdir / "b" / "images", bad=True)
    for model in ("task1", "task2"):
        r = run_cli("embed", "--model", f"exports/{model}.onnx", "--dataset", "folder:a/images", "--provider", "cpu",
                    "--quiet", cwd=workdir)
        assert r.returncode == 0, r.stderr
    ok = run_cli("evaluate", "--from-store", "task1,task2", "--query", "folder:a/images", "--k", "1", "--quiet",
                 cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((workdir / "reports" / "compatibility.json").read_text())["query"]["count"] == 6
    other = run_cli("evaluate", "--from-store", "task1,task2", "--query", "folder:b/images", "--quiet", cwd=workdir)
    assert other.returncode == 2 and "no stored set of task1 on folder:b/images" in other.stderr
