"""Shipping adapters: the ONNX files (adapter alone, query model with the adapter inside) against numpy,
the metadata and manifests that mark adapted models and transformed sets, the transformed gallery
(1M rows in bounded memory), and all of it with torch and onnx blocked."""
import json
import subprocess
import sys
import tracemalloc
from dataclasses import asdict, replace

import numpy as np
import onnx
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.adapt.adapter import Adapter
from dpcompat.evaluate.adapt import export as export_module
from dpcompat.evaluate.adapt.apply import adapted_embeddings, apply_to_set
from dpcompat.evaluate.adapt.export import (TOLERANCE, adapter_graph, export_adapted_model, export_adapter,
                                            real_images)
from dpcompat.evaluate.adapt.fit import fit_adapter
from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.runtime.metadata import ModelInfo
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.infer.runtime.session import create_session, model_info as session_model_info
from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord
from dpcompat.infer.store.sets import read_set
from dpcompat.infer.store.shards import ShardWriter
from onnx_fixtures import ROOT, write_data, write_model
from test_adapt import EVAL, clustered, put, rotation, unit
from test_evaluate_cli import BLOCK_TORCH


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two tiny exports (task 7: dimension 16, task 3: 12) and their stored sets on fit and eval data."""
    root = tmp_path_factory.mktemp("tasks")
    write_data(root / "data", test_per_class=6)
    models = {t: write_model(root / "exports" / f"task{t}.onnx", task=t, dim=d) for t, d in ((7, 16), (3, 12))}
    sets = {(t, split): embed_dataset(m, open_dataset(f"cifar10:{split}", root / "data"), root / "store",
                                      runtime=RuntimeOptions(provider="cpu")).set
            for t, m in models.items() for split in ("train", "test")}
    return root, models, sets


@pytest.mark.parametrize("kind", ["orthogonal", "linear", "affine"])
def test_the_adapter_graph_equals_numpy_and_passes_the_checker(tmp_path, kind):
    x, labels = clustered(300, 16, seed=0)
    a = put(tmp_path, "new", x, labels)
    b = put(tmp_path, "old", unit(x @ rotation(16) + 0.1), labels)
    adapter = fit_adapter(a, b, kind=kind, direction="query")
    real = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32) * 3  # not unit: normalised inside
    written = export_adapter(adapter, tmp_path / "a.onnx", real=real)
    assert written.random_error <= TOLERANCE and written.real_error <= TOLERANCE
    proto = onnx.load(tmp_path / "a.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["adapter"])["digest"] == adapter.digest
    session, _ = create_session(tmp_path / "a.onnx", "cpu")
    got = session.run(["adapted"], {"embedding": real})[0]
    assert np.abs(got - adapter.apply64(real)).max() <= 1e-5
    np.testing.assert_allclose(adapter.apply(real), adapter.apply64(real), atol=1e-5)


def test_the_adapted_model_is_the_model_followed_by_the_adapter(tasks, tmp_path):
    root, models, sets = tasks
    adapter = fit_adapter(sets[7, "train"], sets[3, "train"], kind="affine", direction="query")
    out = tmp_path / "task7-to-task3.onnx"
    data = open_dataset("cifar10:test", root / "data")
    written = export_adapted_model(models[7], adapter, out, data=data)
    assert written.random_error <= TOLERANCE and written.real_error <= TOLERANCE
    images = real_images(data, session_model_info(create_session(models[7], "cpu")[0], models[7]))
    assert images.shape == (8, 3, 32, 32)
    proto = onnx.load(out)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["embedding", "prompt_index"]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] == ["N", 12]
    original, _ = create_session(models[7], "cpu")
    adapted, _ = create_session(out, "cpu")
    before, index = original.run(None, {"image": images})
    after, after_index = adapted.run(None, {"image": images})
    assert np.abs(after - adapter.apply64(before)).max() <= 1e-5
    np.testing.assert_array_equal(index, after_index)
    info = session_model_info(adapted, out)  # embed's reading: a model in task 3's space, task 7's metadata
    assert info.embedding_dim == 12 and info.adapter == adapter.record and info.task == 7
    assert info.adapter.target_sha256 == sets[3, "train"].manifest.model.sha256
    assert replace(info, adapter=None, embedding_dim=16) == session_model_info(original, models[7])
    embedded = embed_dataset(out, open_dataset("cifar10:test", root / "data"), tmp_path / "store",
                             runtime=RuntimeOptions(provider="cpu")).set
    assert embedded.model_id == "task7-to-task3" and embedded.manifest.model.adapter == adapter.record
    assert not embedded.manifest.transformed and embedded.dim == 12
    assert np.abs(embedded.embeddings - adapter.apply64(sets[7, "test"].embeddings)).max() <= 1e-5


def test_adapted_model_refusals(tasks, tmp_path):
    root, models, sets = tasks
    query = fit_adapter(sets[7, "train"], sets[3, "train"], kind="linear", direction="query")
    gallery = fit_adapter(sets[3, "train"], sets[7, "train"], kind="linear", direction="gallery")
    with pytest.raises(InputError, match="a gallery adapter transforms a stored gallery"):
        export_adapted_model(models[3], gallery, tmp_path / "x.onnx")
    with pytest.raises(InputError, match="task3.onnx: sha256 .*, but the adapter was fitted on the 'embedding' "
                                         "embeddings of task7"):
        export_adapted_model(models[3], query, tmp_path / "x.onnx")
    adapted = export_adapted_model(models[7], query, tmp_path / "a.onnx").path
    with pytest.raises(InputError, match="already holds an adapter"):
        export_adapted_model(adapted, query, tmp_path / "x.onnx")
    bundle = onnx.load(models[7])
    onnx.helper.set_model_props(bundle, {**{p.key: p.value for p in bundle.metadata_props}, "bundle_tasks": "[]"})
    onnx.save(bundle, tmp_path / "bundle.onnx")
    with pytest.raises(InputError, match="bundle.onnx: a bundle of several tasks"):
        export_adapted_model(tmp_path / "bundle.onnx", query, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_model_metadata_with_an_adapter_round_trips_and_is_checked(tasks):
    _, models, sets = tasks
    adapter = fit_adapter(sets[7, "train"], sets[3, "train"], kind="linear", direction="query")
    info = session_model_info(create_session(models[7], "cpu")[0], models[7])
    adapted = replace(info, adapter=adapter.record, embedding_dim=12)
    assert ModelInfo.from_props(adapted.to_props(), "m") == adapted
    assert "adapter" not in info.to_props()
    props = adapted.to_props()
    for change, message in [({"embedding_dim": "16"}, "differs from the adapter's output dimension 12"),
                            ({"adapter": json.dumps({**asdict(adapter.record), "direction": "gallery"})},
                             "carries a query adapter, not a gallery adapter"),
                            ({"adapter": json.dumps({**asdict(adapter.record), "digest": "x"})}, "not a sha256"),
                            ({"adapter": "[1]"}, "adapter is a JSON list")]:
        with pytest.raises(InputError, match=message):
            ModelInfo.from_props({**props, **change}, "m")


def test_the_transformed_gallery_is_numpy_s_transform_and_marked(tasks, tmp_path):
    root, models, sets = tasks
    adapter = fit_adapter(sets[3, "train"], sets[7, "train"], kind="affine", direction="gallery", ridge=0.01)
    gallery = sets[3, "test"]
    moved = apply_to_set(adapter, gallery, tmp_path / "store", shard_rows=7)
    assert moved.model_id == "task3-to-task7" and moved.path.name == gallery.path.name
    assert np.abs(moved.embeddings - adapter.apply64(gallery.embeddings)).max() <= 1e-6
    np.testing.assert_array_equal(moved.labels, gallery.labels)
    np.testing.assert_allclose(moved.embeddings, adapted_embeddings(adapter, gallery), atol=1e-6)  # other blocks
    m = read_set(moved.path).manifest
    assert m.transformed and m.transform.source_model == gallery.manifest.model
    assert m.transform.source_set == str(gallery.path) and m.dataset == gallery.manifest.dataset
    assert m.model.sha256 == adapter.digest and m.model.adapter == adapter.record and m.model.file is None
    assert m.model.embedding_dim == m.dim == 16 and [s.rows for s in m.shards] == [7] * 8 + [4]
    again = apply_to_set(adapter, gallery, tmp_path / "store", shard_rows=7)
    assert again.manifest.created == m.created  # the same transform is not redone
    with pytest.raises(InputError, match="holds a gallery transformed by an adapter, not a model's embeddings"):
        embed_dataset(models[7], open_dataset("cifar10:test", root / "data"), tmp_path / "store",
                      runtime=RuntimeOptions(provider="cpu"),
                      model_id="task3-to-task7")
    query = fit_adapter(sets[7, "train"], sets[3, "train"], kind="affine", direction="query")
    with pytest.raises(InputError, match="only a gallery adapter transforms a stored gallery"):
        apply_to_set(query, gallery, tmp_path / "store")
    with pytest.raises(InputError, match="embeddings of task7 .* but the adapter maps task3's"):
        apply_to_set(adapter, sets[7, "test"], tmp_path / "store")
    with pytest.raises(InputError, match="holds embeddings of a model, not a transformed gallery"):
        apply_to_set(adapter, gallery, root / "store", model_id="task7")


def test_manifests_of_transformed_sets_must_be_consistent(tasks, tmp_path):
    _, _, sets = tasks
    adapter = fit_adapter(sets[3, "train"], sets[7, "train"], kind="linear",
                          direction="gallery", ridge=0.01)
    m = apply_to_set(adapter, sets[3, "test"], tmp_path / "store").manifest
    assert Manifest.from_json(m.to_json(), "m") == m
    d = json.loads(m.to_json())
    for edit, message in [(lambda d: d["model"].update(sha256="0" * 64), "a transformed set's model must be"),
                          (lambda d: d["model"].pop("adapter"), "a transformed set's model must be"),
                          (lambda d: d["model"]["adapter"].update(dim_out=3), "differs from the adapter's output"),
                          (lambda d: d.pop("transform"), "can only carry a query adapter"),
                          (lambda d: d["model"]["adapter"].update(kind="orthogonal"), "maps 16 to 16|orthogonal"),
                          (lambda d: d["transform"].update(source_model=[]), "'source_model' is list")]:
        edited = json.loads(json.dumps(d))
        edit(edited)
        with pytest.raises(InputError, match=message):
            Manifest.from_json(json.dumps(edited), "m")


def test_a_million_row_gallery_is_transformed_in_bounded_memory(tmp_path):
    n, dim, rows = 1_000_000, 32, 65_536
    writer = ShardWriter(tmp_path / "old" / "g", {}, dim=dim, shard_rows=rows)
    rng = np.random.default_rng(0)
    for start in range(0, n, rows):
        writer.write(unit(rng.standard_normal((min(rows, n - start), dim))), np.arange(start, min(start + rows, n)) % 10)
    data = DataRecord(spec="folder:g", location="folder:/g", name="folder", split="g", fingerprint="a" * 64, size=n)
    old = writer.finish(Manifest(model=ModelRecord(id="old", sha256="1" * 64, task=1), dataset=data, preprocessing={}))
    adapter = Adapter(kind="orthogonal", direction="gallery", weight=rotation(dim), bias=None, source=old.manifest.model,
                      target=ModelRecord(id="new", sha256="2" * 64, task=2), fit=replace(EVAL, size=100), fit_rows=100)
    tracemalloc.start()
    try:
        moved = apply_to_set(adapter, old, tmp_path, shard_rows=16_384)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    gallery_bytes = n * dim * 4
    assert moved.count == n and peak < gallery_bytes / 5, f"peak {peak / 2**20:.1f} MiB"
    for i in (0, 123_456, n - 1):
        np.testing.assert_allclose(moved.embeddings[i], old.embeddings[i] @ adapter.weight, atol=1e-6)


END_TO_END = '''
import runpy, sys
from pathlib import Path
runpy.run_path(sys.argv[1])["import_checkout"]()
import numpy as np
from dpcompat.evaluate.adapt.adapter import Adapter
from dpcompat.evaluate.adapt.apply import apply_to_set
from dpcompat.evaluate.adapt.curve import adapted_metrics, learning_curve
from dpcompat.evaluate.adapt.export import export_adapted_model, export_adapter
from dpcompat.evaluate.adapt.fit import fit_adapter
from dpcompat.evaluate.adapt.guard import check_no_leak
from dpcompat.infer.store.sets import read_set
root = Path(sys.argv[2])
s7, s3, e7, e3 = (read_set(p) for p in sys.argv[3:7])
query = fit_adapter(s7, s3, kind="affine", direction="query")
query = Adapter.load(query.save(root / "q.adapter.npz"))
check_no_leak(query, e7, e3)
export_adapter(query, root / "q.onnx", real=np.asarray(s7.embeddings))
export_adapted_model(root / "exports" / "task7.onnx", query, root / "task7-to-task3.onnx")
gallery = fit_adapter(s3, s7, kind="linear", direction="gallery")
moved = apply_to_set(gallery, e3, root / "moved")
points = learning_curve(s3, s7, e7, e3, kind="linear", direction="gallery", sizes=[14, 20])
print("ok", moved.count, [p.size for p in points], sorted(adapted_metrics(query, e7, e3)))
print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "onnx", "sklearn")))
'''


def test_fit_export_and_apply_run_without_torch_or_onnx(tasks, tmp_path):
    root, models, sets = tasks
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH.replace('("torch", "torchvision", "timm")',
                                                                  '("torch", "torchvision", "timm", "onnx", "sklearn")'))
    (tmp_path / "exports").mkdir()
    (tmp_path / "exports" / "task7.onnx").write_bytes(models[7].read_bytes())
    paths = [str(sets[key].path) for key in ((7, "train"), (3, "train"), (7, "test"), (3, "test"))]
    run = subprocess.run([sys.executable, "-c", END_TO_END, str(ROOT / "checkout.py"), str(tmp_path), *paths],
                         env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ok 60 [14, 20] ['R-precision', 'knn', 'mAP@R', 'top1', 'top5']" in run.stdout
    assert "loaded []" in run.stdout
    assert (tmp_path / "task7-to-task3.onnx").is_file() and (tmp_path / "q.onnx").is_file()


def test_the_adapter_graph_is_deterministic_bytes(tasks):
    _, _, sets = tasks
    adapter = fit_adapter(sets[7, "train"], sets[3, "train"], kind="linear", direction="query", ridge=0.1)
    assert adapter_graph(adapter) == adapter_graph(adapter)
    assert onnx.load_from_string(adapter_graph(adapter)).opset_import[0].version == 13


def test_a_graph_that_differs_from_numpy_is_not_written(tasks, tmp_path, monkeypatch):
    _, models, sets = tasks
    adapter = fit_adapter(sets[7, "train"], sets[3, "train"], kind="affine", direction="query")
    right = export_module.adapter_nodes
    monkeypatch.setattr(export_module, "adapter_nodes", lambda a, source, output: right(
        replace(a, bias=a.bias + 0.01), source, output))  # a graph one bias step off what numpy computes
    for export, source in ((export_adapted_model, models[7]), (lambda _, a, out: export_adapter(a, out), None)):
        with pytest.raises(InputError, match=r"differs from numpy's adapter by .* nothing written"):
            export(source, adapter, tmp_path / "wrong.onnx")
        assert not list(tmp_path.iterdir())
