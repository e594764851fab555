"""Embedding into the store: files, manifest, reuse, atomicity, NaN refusal, bad images."""
import json

import numpy as np
import pytest

from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.common.errors import InputError
from dpcompat.infer.store.sets import read_set
from dpcompat.common.digest import file_sha256
from onnx_fixtures import leftovers, run_cli, write_data, write_model
from test_infer_datasets import write_folder


@pytest.fixture
def setup(tmp_path):
    write_data(tmp_path / "data", test_per_class=3)
    return tmp_path, write_model(tmp_path / "exports" / "task3.onnx", task=3, dim=16)


def test_embed_writes_a_complete_set(setup):
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    said = []
    r = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu", batch_size=7), shard_rows=12,
                      warn=said.append)
    path = tmp_path / "store" / "task3" / ds.key
    assert ds.key.startswith("cifar10-test-") and len(ds.key) == len("cifar10-test-") + 16
    assert not r.reused and r.provider == "cpu" and r.set.path == path and not said
    assert sorted(p.name for p in path.iterdir()) == ["embeddings-00000.npy", "embeddings-00001.npy",
                                                       "embeddings-00002.npy", "labels-00000.npy", "labels-00001.npy",
                                                       "labels-00002.npy", "manifest.json"]
    stored = read_set(path)
    assert stored.embeddings.shape == (30, 16) and stored.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(stored.embeddings, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(stored.labels, ds.labels)
    m = json.loads((path / "manifest.json").read_text())
    assert m["model"]["id"] == "task3" and m["model"]["task"] == 3 and len(m["model"]["sha256"]) == 64
    assert m["dataset"]["spec"] == "cifar10:test" and m["dataset"]["split"] == "test"
    assert m["dataset"]["location"] == f"cifar10:test:{(tmp_path / 'data' / 'cifar-10-batches-py').resolve()}"
    assert m["dataset"]["fingerprint"] == ds.fingerprint
    assert (m["count"], m["dim"], m["provider"], m["skipped"], m["shard_rows"]) == (30, 16, "cpu", [], 12)
    assert [s["rows"] for s in m["shards"]] == [12, 12, 6]
    assert m["shards"][1]["labels_sha256"] == file_sha256(path / "labels-00001.npy")
    assert m["preprocessing"]["resize"] == 36 and m["versions"]["onnxruntime"] and m["created"]
    assert not leftovers(tmp_path / "store")


def test_batch_and_shard_sizes_do_not_change_embeddings(setup):
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    one = embed_dataset(model, ds, tmp_path / "a", runtime=RuntimeOptions(provider="cpu", batch_size=1)).set.embeddings
    many = embed_dataset(model, ds, tmp_path / "b", runtime=RuntimeOptions(provider="cpu", batch_size=64)).set.embeddings
    sharded = embed_dataset(model, ds, tmp_path / "c", runtime=RuntimeOptions(provider="cpu", batch_size=4),
                            shard_rows=7).set
    assert len(sharded.manifest.shards) == 5
    np.testing.assert_allclose(one, many, atol=1e-6)
    np.testing.assert_allclose(sharded.embeddings, many, atol=1e-6)


def test_reuse_force_and_changed_model(setup):
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    first = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
    again = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
    assert again.reused and again.set.manifest.created == first.set.manifest.created
    assert not embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"), force=True).reused
    write_model(model, task=3, seed=99)  # re-exported: same name, other weights
    said = []
    changed = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"), warn=said.append)
    assert not changed.reused and "another model file" in said[0]
    assert not np.allclose(changed.set.embeddings, first.set.embeddings)


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_output_is_an_error_and_nothing_is_stored(setup, poison):
    tmp_path, _ = setup
    model = write_model(tmp_path / "exports" / "broken.onnx", poison=poison)
    with pytest.raises(InputError, match=r"broken.onnx: 'embedding' is NaN or Inf for cifar10:test\[0\]; nothing stored"):
        embed_dataset(model, open_dataset("cifar10:test", tmp_path / "data"), tmp_path / "store",
                      runtime=RuntimeOptions(provider="cpu"))
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_unreadable_image_stops_or_is_skipped_and_listed(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    ds = open_dataset(f"folder:{write_folder(tmp_path / 'pets', bad=True)}")
    with pytest.raises(InputError, match="broken.png: unreadable image"):
        embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
    r = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu", skip_bad=True, batch_size=2))
    assert r.set.manifest.skipped == ("cat/broken.png",) and r.set.count == 6
    assert r.set.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu", skip_bad=True)).reused
    with pytest.raises(InputError, match="broken.png"):  # without --skip-bad the partial set is not reused
        embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))


def test_embed_command(setup):
    tmp_path, model = setup
    args = ["embed", "--model", str(model), "--dataset", "cifar10:test", "--data-path", "data", "--store", "emb",
            "--provider", "cpu", "--batch-size", "8"]
    first = run_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    key = open_dataset("cifar10:test", tmp_path / "data").key
    assert f"wrote emb/task3/{key}: 30 x 16 in 1 shard(s) on cpu" in first.stdout
    assert "100%" in first.stderr  # progress bar
    second = run_cli(*args, "--quiet", cwd=tmp_path)
    assert second.returncode == 0 and f"reused emb/task3/{key}" in second.stdout and not second.stderr
    bad = run_cli("embed", "--model", "nope.onnx", "--dataset", "cifar10:test", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: nope.onnx: no such ONNX file\n"


def test_embed_command_on_gpu_providers(setup):
    from dpcompat.infer.runtime.session import gpu_problem

    if gpu_problem("cuda") is None:
        pytest.skip("CUDA works on this host")
    tmp_path, model = setup
    base = ["embed", "--model", str(model), "--dataset", "cifar10:test", "--store", "emb", "--quiet"]
    cuda = run_cli(*base, "--provider", "cuda", cwd=tmp_path)
    assert cuda.returncode == 2 and cuda.stderr.startswith("error: --provider cuda: ")
    assert len(cuda.stderr.splitlines()) == 1 and "Traceback" not in cuda.stderr
    auto = run_cli(*base, "--provider", "auto", cwd=tmp_path)
    assert auto.returncode == 0 and "running on CPU" in auto.stderr and "on cpu" in auto.stdout


def test_two_folders_of_one_name_are_two_sets(tmp_path):
    """Issue 10: folder:/a/images and folder:/b/images once shared one store folder."""
    model = write_model(tmp_path / "task1.onnx")
    a = open_dataset(f"folder:{write_folder(tmp_path / 'a' / 'images')}")
    b = open_dataset(f"folder:{write_folder(tmp_path / 'b' / 'images')}")
    first = embed_dataset(model, a, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
    second = embed_dataset(model, b, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"))
    assert first.set.path != second.set.path and not second.reused
    assert first.set.path.name.startswith("folder-images-")
    assert read_set(first.set.path).manifest.dataset.location == f"folder:{(tmp_path / 'a' / 'images').resolve()}"
    assert embed_dataset(model, a, tmp_path / "store", runtime=RuntimeOptions(provider="cpu")).reused


@pytest.mark.parametrize("edit", ["labels", "embeddings"])
def test_an_edited_set_is_recomputed(setup, edit):
    """Issue 10: an edited labels file was trusted; now its digest refuses it and embed recomputes."""
    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    first = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"), shard_rows=16).set
    file = first.path / f"{edit}-00001.npy"
    x = np.load(file)
    with open(file, "wb") as f:
        np.save(f, x[::-1].copy())
    with pytest.raises(InputError, match=f"{edit}-00001.npy: its sha256 differs"):
        read_set(first.path)
    said = []
    again = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"), shard_rows=16,
                          warn=said.append)
    assert not again.reused and "sha256 differs" in said[0] and said[0].endswith("recomputing")
    np.testing.assert_array_equal(read_set(first.path).labels, ds.labels)


def _as_format_1(stored, folder, **changes):
    """Write ``stored`` as store format 1 wrote sets: one file per array, a manifest without digests."""
    folder.mkdir(parents=True)
    np.save(folder / "embeddings.npy", np.asarray(stored.embeddings))
    np.save(folder / "labels.npy", stored.labels)
    m = stored.manifest
    old = {"format_version": "1", "model": {"id": m.model.id, "sha256": m.model.sha256, "task": m.model.task},
           "dataset": {"spec": m.dataset.spec, "fingerprint": m.dataset.fingerprint, "size": m.dataset.size},
           "skipped": list(m.skipped), "count": m.count, "dim": m.dim, "preprocessing": m.preprocessing,
           "provider": "cpu", "created": "2024-01-01T00:00:00+00:00", **changes}
    (folder / "manifest.json").write_text(json.dumps(old))


def test_format_1_sets_are_migrated_when_they_match(setup):
    import shutil

    tmp_path, model = setup
    ds = open_dataset("cifar10:test", tmp_path / "data")
    fresh = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu")).set
    legacy = tmp_path / "store" / "task3" / "cifar10-test"
    _as_format_1(fresh, legacy)
    embeddings = np.asarray(fresh.embeddings).copy()
    shutil.rmtree(fresh.path)
    said = []
    migrated = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"), shard_rows=8,
                             warn=said.append)
    assert migrated.reused and said == [f"migrated {legacy} (store format 1) to {fresh.path}; the old folder "
                                        "can be deleted"]
    again = read_set(fresh.path)
    np.testing.assert_array_equal(again.embeddings, embeddings)
    assert again.manifest.created == "2024-01-01T00:00:00+00:00" and len(again.manifest.shards) == 4
    shutil.rmtree(fresh.path)
    np.save(legacy / "labels.npy", np.zeros(30, np.int64))  # edited labels: not taken over
    said.clear()
    recomputed = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu"), warn=said.append)
    assert not recomputed.reused and "labels or dimension are not this data's" in said[0]
    np.testing.assert_array_equal(recomputed.set.labels, ds.labels)


def test_provenance_is_copied_and_an_unwritable_store_is_refused_first(tmp_path):
    from dataclasses import replace

    from onnx_fixtures import model_info

    info = replace(model_info(), provenance={"data": "generated", "backbone": "random"})
    model = write_model(tmp_path / "task1.onnx", info=info)
    ds = open_dataset("generated:20")
    stored = embed_dataset(model, ds, tmp_path / "store", runtime=RuntimeOptions(provider="cpu")).set
    assert stored.manifest.provenance == {"data": "generated", "backbone": "random"}
    assert stored.manifest.dataset.location == "generated:20" and stored.count == 20
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(InputError, match=r"--store .*file: cannot write"):
        embed_dataset(model, ds, tmp_path / "file", runtime=RuntimeOptions(provider="cpu"))
