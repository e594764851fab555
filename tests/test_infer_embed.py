"""Embedding into the store: files, manifest, reuse, atomicity, NaN refusal, bad images."""
import json

import numpy as np
import pytest

from dpcompat.infer.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.common.errors import InputError
from dpcompat.infer.store import read_set
from onnx_fixtures import run_cli, write_data, write_model
from test_infer_datasets import write_folder


@pytest.fixture
def setup(tmp_path):
    write_data(tmp_path / "data", test_per_class=3)
    return tmp_path, write_model(tmp_path / "exports" / "task3.onnx", task=3, dim=16)


def test_embed_writes_a_complete_set(setup):
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    said = []
    r = embed_dataset(model, ds, tmp_path / "store", provider="cpu", batch_size=7, warn=said.append)
    path = tmp_path / "store" / "task3" / "cifar10-test"
    assert not r.reused and r.provider == "cpu" and r.set.path == path and not said
    assert sorted(p.name for p in path.iterdir()) == ["embeddings.npy", "labels.npy", "manifest.json"]
    stored = read_set(path)
    assert stored.embeddings.shape == (30, 16) and stored.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(stored.embeddings, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(stored.labels, ds.labels)
    m = json.loads((path / "manifest.json").read_text())
    assert m["model"]["id"] == "task3" and m["model"]["task"] == 3 and len(m["model"]["sha256"]) == 64
    assert m["dataset"]["spec"] == "cifar10:test" and m["dataset"]["split"] == "test"
    assert m["dataset"]["fingerprint"] == ds.fingerprint
    assert (m["count"], m["dim"], m["provider"], m["skipped"]) == (30, 16, "cpu", [])
    assert m["preprocessing"]["resize"] == 36 and m["versions"]["onnxruntime"] and m["created"]
    assert not [p for p in (tmp_path / "store").rglob(".*")]


def test_batch_size_does_not_change_embeddings(setup):
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    one = embed_dataset(model, ds, tmp_path / "a", provider="cpu", batch_size=1).set.embeddings
    many = embed_dataset(model, ds, tmp_path / "b", provider="cpu", batch_size=64).set.embeddings
    np.testing.assert_allclose(one, many, atol=1e-6)


def test_reuse_force_and_changed_model(setup):
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    first = embed_dataset(model, ds, tmp_path / "store", provider="cpu")
    again = embed_dataset(model, ds, tmp_path / "store", provider="cpu")
    assert again.reused and again.set.manifest["created"] == first.set.manifest["created"]
    assert not embed_dataset(model, ds, tmp_path / "store", provider="cpu", force=True).reused
    write_model(model, task=3, seed=99)  # re-exported: same name, other weights
    said = []
    changed = embed_dataset(model, ds, tmp_path / "store", provider="cpu", warn=said.append)
    assert not changed.reused and "another model file" in said[0]
    assert not np.allclose(changed.set.embeddings, first.set.embeddings)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_output_is_an_error_and_nothing_is_stored(setup, poison):
    tmp_path, _ = setup
    model = write_model(tmp_path / "exports" / "broken.onnx", poison=poison)
    with pytest.raises(InputError, match=r"broken.onnx: 'embedding' is NaN or Inf for cifar10:test\[0\]; nothing stored"):
        embed_dataset(model, open_dataset("cifar10:test", tmp_path / "data"), tmp_path / "store", provider="cpu")
    assert not (tmp_path / "store" / "broken" / "cifar10-test").exists()
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]


def test_unreadable_image_stops_or_is_skipped_and_listed(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    ds = open_dataset(f"folder:{write_folder(tmp_path / 'pets', bad=True)}")
    with pytest.raises(InputError, match="broken.png: unreadable image"):
        embed_dataset(model, ds, tmp_path / "store", provider="cpu")
    r = embed_dataset(model, ds, tmp_path / "store", provider="cpu", skip_bad=True, batch_size=2)
    assert r.set.manifest["skipped"] == ["cat/broken.png"] and r.set.count == 6
    assert r.set.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert embed_dataset(model, ds, tmp_path / "store", provider="cpu", skip_bad=True).reused
    with pytest.raises(InputError, match="broken.png"):  # without --skip-bad the partial set is not reused
        embed_dataset(model, ds, tmp_path / "store", provider="cpu")


def test_embed_command(setup):
    tmp_path, model = setup
    args = ["embed", "--model", str(model), "--dataset", "cifar10:test", "--data-path", "data", "--store", "emb",
            "--provider", "cpu", "--batch-size", "8"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "wrote emb/task3/cifar10-test: 30 x 16 on cpu" in first.stdout
    assert "100%" in first.stderr  # progress bar
    second = run_cli(*args, "--quiet", cwd=tmp_path)
    assert second.returncode == 0 and "reused emb/task3/cifar10-test" in second.stdout and not second.stderr
    bad = run_cli("embed", "--model", "nope.onnx", "--dataset", "cifar10:test", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: nope.onnx: no such ONNX file\n"


def test_embed_command_on_gpu_providers(setup):
    from dpcompat.infer.session import gpu_problem

    if gpu_problem("cuda") is None:
        pytest.skip("CUDA works on this host")
    tmp_path, model = setup
    base = ["embed", "--model", str(model), "--dataset", "cifar10:test", "--store", "emb", "--quiet"]
    cuda = run_cli(*base, "--provider", "cuda", cwd=tmp_path)
    assert cuda.returncode == 2 and cuda.stderr.startswith("error: --provider cuda: ")
    assert len(cuda.stderr.splitlines()) == 1 and "Traceback" not in cuda.stderr
    auto = run_cli(*base, "--provider", "auto", cwd=tmp_path)
    assert auto.returncode == 0 and "running on CPU" in auto.stderr and "on cpu" in auto.stdout
