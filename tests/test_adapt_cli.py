"""`adapt` and `evaluate --adapters` end to end on generated stored sets with known answers: an exact
rotation (the adapted row is compatible, keep the index), a nonlinear map (the adapter improves, the
pair stays not compatible), the leakage guard, the adapted row's numbers against the library's,
compatibility.json's `adapters` schema, the learning curve, refusals, a model file with the adapter
inside among --models, and both commands with torch blocked."""
import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from dpcompat.cli import cli
from dpcompat.evaluate.adapt.adapter import Adapter
from dpcompat.evaluate.adapt.curve import adapted_metrics, curve_sizes, learning_curve
from dpcompat.evaluate.metrics.decision import Rule
from dpcompat.evaluate.metrics.table import METRICS, chosen
from dpcompat.evaluate.report.adapters import adapters_dict
from dpcompat.infer.data.datasets import dataset_key, dataset_location
from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord, content_digest
from dpcompat.infer.store.sets import read_set, set_path
from dpcompat.infer.store.shards import write_set
from onnx_fixtures import ROOT, write_data, write_model
from test_adapt import clustered, rotation, unit
from test_evaluate_cli import BLOCK_TORCH

SHA = {"task1": "1" * 64, "task2": "2" * 64}
ROW_KEYS = {"label", "file", "adapter", "query", "gallery", "compares", "metric", "value", "reference", "difference",
            "low", "high", "verdict", "queries", "queries_needed", "metrics", "unadapted", "reindex_value",
            "backfill_equivalent", "learning_curve", "words"}


def spec(root, name):
    return f"folder:{root / name}"


def put(root, model, x, labels, name, shard_rows=128):
    """The stored set of ``model`` (task 1 or 2) on the folder data ``name`` under ``root``, as embed writes it."""
    location = dataset_location(spec(root, name))
    data = DataRecord(spec=spec(root, name), location=location, name="folder", split=name,
                      fingerprint=hashlib.sha256(location.encode()).hexdigest(), size=len(x))
    manifest = Manifest(model=ModelRecord(id=model, sha256=SHA[model], task=int(model[-1])), dataset=data,
                        preprocessing={})
    return write_set(set_path(root / "store", model, dataset_key(spec(root, name))), unit(x),
                     np.asarray(labels, np.int64), manifest, shard_rows=shard_rows)


def world(root, new_of, fit=600, dim=16):
    """task1's embeddings x and task2's ``new_of(x)`` of a fit set and an evaluation set (400 items)."""
    fx, fl = clustered(fit, dim, seed=0)
    ex, el = clustered(400, dim, seed=5)
    return {(m, name): put(root, m, x if m == "task1" else new_of(x), labels, name)
            for name, x, labels in (("fit", fx, fl), ("eval", ex, el)) for m in ("task1", "task2")}


def run(capfd, *args, cwd):
    """``cli.py ARGS`` in this process from ``cwd``: (exit code, stdout, stderr)."""
    import os

    before = os.getcwd()
    os.chdir(cwd)
    try:
        code = cli.main(list(map(str, args)), prog_name="cli.py", standalone_mode=False) or 0
    finally:
        os.chdir(before)
    out, err = capfd.readouterr()
    return code, out, err


def adapt(capfd, root, *extra, fit="fit", kind="orthogonal", direction="query"):
    return run(capfd, "adapt", "--deployed", "task1", "--candidate", "task2", "--fit-data", spec(root, fit),
               "--store", "store", "--kind", kind, "--direction", direction, *extra, cwd=root)


def evaluate(capfd, root, *extra, out="reports"):
    code, stdout, err = run(capfd, "evaluate", "--from-store", "task1,task2", "--query", spec(root, "eval"), "--store",
                            "store", "--out", out, "--quiet", *extra, cwd=root)
    report = json.loads((root / out / "compatibility.json").read_text()) if code == 0 else None
    return code, stdout, err, report


@pytest.fixture
def rotated(tmp_path):
    r = rotation(16)
    return tmp_path, world(tmp_path, lambda x: x @ r)


def test_a_rotation_adapter_makes_the_pair_compatible_in_both_directions(rotated, capfd):
    root, sets = rotated
    code, out, err = adapt(capfd, root)
    assert code == 0, err
    assert "orthogonal query adapter task2 -> task1" in out and "adapters/task2-to-task1.adapter.npz" in out
    code, out, err = adapt(capfd, root, "--export", "g.onnx", "--apply", "--gallery", spec(root, "eval"),
                           direction="gallery")
    assert code == 0, err
    moved = read_set(root / "store" / "task1-to-task2" / dataset_key(spec(root, "eval")))
    assert moved.manifest.transformed and (root / "g.onnx").is_file() and "transformed gallery:" in out
    np.testing.assert_allclose(moved.embeddings, sets["task2", "eval"].embeddings, atol=1e-5)
    code, out, err, report = evaluate(capfd, root, "--adapters", "adapters")
    assert code == 0, err
    top1 = report["metrics"]["top1"]
    (pair,) = report["decision"]["pairs"]
    assert pair["verdict"] == "not compatible"  # a rotation breaks compatibility
    rows = {r["adapter"]["direction"]: r for r in report["adapters"]["rows"]}
    assert sorted(rows) == ["gallery", "query"] and report["models"] == ["task1", "task2"]
    for row in rows.values():  # the adapter recovers the diagonal exactly
        assert row["verdict"] == "compatible" and row["value"] == row["reference"] == top1[0][0] == top1[1][1]
        assert (row["query"], row["gallery"]) == ("task2", "task1") and row["difference"] == 0
        assert row["unadapted"]["verdict"] == "not compatible" and row["backfill_equivalent"] is not None
        assert row["learning_curve"]["metric"] == "top1" and row["learning_curve"]["note"] is None
        assert [p["size"] for p in row["learning_curve"]["points"]] == curve_sizes(600, 16) == [100, 300, 600]
        assert row["learning_curve"]["points"][-1]["value"] == row["value"]
    assert "keep the index and ship the query model" in rows["query"]["words"]
    assert "transform the stored gallery (adapt --apply)" in rows["gallery"]["words"]
    assert "adapters (" in out and "task2 \u2192 task1 via orthogonal query adapter" in out
    md = (root / "reports" / "compatibility.md").read_text()
    for table in (out, md):  # each row names its file: two adapters of one kind and pair stay apart
        assert "orthogonal query (task2-to-task1.adapter.npz)" in table
        assert "orthogonal gallery (task1-to-task2.adapter.npz)" in table
    assert "## Adapters" in md and "Learning curve" in md and md.index("## Adapters") < md.index("## Provenance")
    assert 'id="adapters"' in (root / "reports" / "report.html").read_text()


def test_the_adapted_row_s_numbers_are_the_library_s_and_the_schema(rotated, capfd):
    root, sets = rotated
    assert adapt(capfd, root, "--kind", "linear", "--ridge", "0.1", kind="linear")[0] == 0
    code, _, err, report = evaluate(capfd, root, "--adapters", "adapters")
    assert code == 0, err
    (row,) = report["adapters"]["rows"]
    adapter = Adapter.load(root / "adapters" / "task2-to-task1.adapter.npz")
    assert row["adapter"]["digest"] == adapter.digest and row["adapter"]["kind"] == "linear"
    library = adapted_metrics(adapter, sets["task2", "eval"], sets["task1", "eval"])
    assert list(row["metrics"]) == list(chosen())  # the label metrics computed (exact mAP: --full-map)
    for name in chosen():
        m = row["metrics"][name]
        assert m["value"] == library[name] and m["reference"] == report["metrics"][name][0][0]
        assert m["difference"] == pytest.approx(m["value"] - m["reference"], abs=1e-12)
        assert m["interval"][0] <= m["difference"] <= m["interval"][1]
        assert (m["mcnemar"] is not None) == METRICS[name].binary
    curve = learning_curve(sets["task2", "fit"], sets["task1", "fit"], sets["task2", "eval"], sets["task1", "eval"],
                           kind="linear", direction="query", ridge=0.1)
    assert [p["value"] for p in row["learning_curve"]["points"]] == [p.metrics["top1"] for p in curve]
    assert all(p["ridge"] == 0.1 for p in row["learning_curve"]["points"])
    # the schema of compatibility.json's adapters section
    assert set(row) == ROW_KEYS and "C[j][j]" in report["adapters"]["comparison"]
    assert set(row["adapter"]) == {"digest", "kind", "direction", "source_id", "source_sha256", "target_id",
                                   "target_sha256", "dim_in", "dim_out", "fit_location", "fit_fingerprint", "fit_rows"}
    assert set(row["metrics"]) == set(chosen()) and set(row["metrics"]["top1"]) == {"value", "reference", "difference",
                                                                                  "interval", "mcnemar"}
    assert set(row["unadapted"]) == {"value", "difference", "low", "high", "verdict", "recommendation",
                                     "backfill_fraction"}
    assert set(row["backfill_equivalent"]) == {"fraction", "value"}
    assert set(row["learning_curve"]["points"][0]) == {"size", "ridge", "value", "difference", "low", "high", "verdict"}
    without = SimpleNamespace(adapters=[], decision=SimpleNamespace(rule=Rule()))
    assert adapters_dict(without) == {"comparison": report["adapters"]["comparison"], "rows": []}


def test_a_nonlinear_map_improves_and_stays_not_compatible(tmp_path, capfd):
    mix = np.random.default_rng(4).standard_normal((16, 16))
    world(tmp_path, lambda x: unit(np.sin(1.5 * x @ mix)), fit=4000)
    code, out, err = adapt(capfd, tmp_path, kind="affine")
    assert code == 0, err
    assert "ridge" in out and "chosen on a held-out tenth" in out
    code, out, err, report = evaluate(capfd, tmp_path, "--adapters", "adapters")
    assert code == 0, err
    (row,) = report["adapters"]["rows"]
    unadapted = report["metrics"]["top1"][1][0]
    assert row["verdict"] == "not compatible" and row["high"] < -0.01
    assert unadapted + 0.3 < row["value"] < row["reference"] - 0.1
    assert "not compatible through the adapter" in row["words"]
    fraction = row["backfill_equivalent"]["fraction"]
    assert 0 < fraction < 1 and row["backfill_equivalent"]["value"] >= row["value"]
    assert f"as much as backfilling {fraction:.0%} of the gallery" in row["words"]
    points = row["learning_curve"]["points"]
    assert [p["size"] for p in points] == [100, 300, 1000, 3000, 4000] and points[0]["value"] < points[-1]["value"]


def test_the_leakage_guard_refuses_an_adapter_fitted_on_the_evaluation_data(rotated, capfd):
    root, sets = rotated
    assert adapt(capfd, root, fit="eval")[0] == 0
    code, out, err, _ = evaluate(capfd, root, "--adapters", "adapters")
    assert code == 2 and not (root / "reports").exists()
    assert err.count("\n") == 1 and err.startswith("error: adapters/task2-to-task1.adapter.npz: fitted on folder:")
    assert "overlaps the query data" in err and "(the same data" in err and "Traceback" not in err
    # a copy of the evaluation data under another name: caught by the fingerprint, after reading the sets
    copy = {m: put(root, m, sets[m, "eval"].embeddings, sets[m, "eval"].labels, "copy") for m in ("task1", "task2")}
    for m, s in copy.items():
        manifest = json.loads((s.path / "manifest.json").read_text())
        manifest["dataset"]["fingerprint"] = sets[m, "eval"].manifest.dataset.fingerprint
        manifest["manifest_sha256"] = content_digest(manifest)  # resealed, as a copy made by a tool would be
        (s.path / "manifest.json").write_text(json.dumps(manifest))
    (root / "adapters" / "task2-to-task1.adapter.npz").unlink()
    assert adapt(capfd, root, fit="copy")[0] == 0
    code, _, err, _ = evaluate(capfd, root, "--adapters", "adapters")
    assert code == 2 and err.count("\n") == 1 and "task2-to-task1.adapter.npz: fitted on folder:" in err
    assert "(the same content (fingerprint" in err


@pytest.mark.parametrize("changed, extra, message", [
    ({}, ["--ridge", "1"], "--ridge 1.0: an orthogonal adapter has no ridge strength"),
    ({}, ["--apply", "--gallery", "x"], "--apply: transforms a stored gallery"),
    ({}, ["--export", "x.onnx"], "--export x.onnx: a query adapter is exported inside the candidate's model file"),
    ({}, ["--out", "x.npz"], "--out x.npz: an adapter file's name ends in .adapter.npz"),
    ({"--candidate": "task3"}, [], "no stored set of task3 on folder:"),
    ({"--candidate": "task1"}, [], "--candidate task1: the same model as --deployed"),
    ({"--fit-data": "folder:elsewhere"}, [], "no stored set of task2 on folder:elsewhere"),
    ({"--direction": "gallery"}, ["--model", "m.onnx", "--export", "g.onnx"], "--model: a gallery adapter is exported "
                                                                              "alone"),
    ({"--direction": "gallery"}, ["--apply"], "--gallery: names the deployed gallery --apply transforms"),
    ({"--kind": "sideways"}, [], "--kind: 'sideways' is not one of"),
    ({"--kind": "linear"}, [], None),  # a valid run, for contrast
])
def test_adapt_refuses_in_one_line_before_any_work(rotated, capfd, changed, extra, message):
    root, _ = rotated
    options = {"--deployed": "task1", "--candidate": "task2", "--fit-data": spec(root, "fit"), "--store": "store",
               **changed}
    code, out, err = run(capfd, "adapt", *(x for kv in options.items() for x in kv), *extra, cwd=root)
    if message is None:
        assert code == 0 and (root / "adapters" / "task2-to-task1.adapter.npz").is_file(), err
        return
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert not (root / "adapters").exists()


def test_adapt_says_how_many_rows_a_fit_needs(tmp_path, capfd):
    world(tmp_path, lambda x: x[:, ::-1], fit=40, dim=48)
    code, _, err = adapt(capfd, tmp_path)
    assert code == 2 and "40 paired rows, the orthogonal adapter from dimension 48 needs at least 48" in err
    code, _, err = adapt(capfd, tmp_path, kind="affine")
    assert code == 2 and "needs at least 55 (49 parameters per output dimension, plus a held-out tenth" in err


def test_an_adapter_that_puts_old_queries_on_a_new_gallery_is_refused(rotated, capfd):
    root, _ = rotated
    code, _, err = run(capfd, "adapt", "--deployed", "task2", "--candidate", "task1", "--fit-data", spec(root, "fit"),
                       "--store", "store", cwd=root)
    assert code == 0, err
    code, _, err, _ = evaluate(capfd, root, "--adapters", "adapters")
    assert code == 2 and "task1-to-task2.adapter.npz: the orthogonal query adapter of task1's queries on task2's " \
                         "gallery, but task1 is not newer than task2" in err


def test_evaluate_adapters_needs_a_folder_of_adapter_files(rotated, capfd):
    root, _ = rotated
    (root / "empty").mkdir()
    for folder, message in (("empty", "--adapters empty: no *.adapter.npz files there"),
                            ("nothere", "--adapters nothere: not a folder")):
        code, _, err, _ = evaluate(capfd, root, "--adapters", folder)
        assert code == 2 and err == f"error: {message}" + err[len(f"error: {message}"):] and err.count("\n") == 1


def test_adapters_refuse_a_label_free_primary_metric_before_any_work(rotated, capfd):
    root, _ = rotated
    assert adapt(capfd, root)[0] == 0
    code, _, err, _ = evaluate(capfd, root, "--adapters", "adapters", "--primary-metric", "self-top1")
    assert code == 2 and err.count("\n") == 1 and not (root / "reports").exists()
    assert err.startswith("error: --adapters: adapted rows are judged by a label metric, and --primary-metric "
                          "self-top1 is label-free: choose one of top1")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Two tiny exports (tasks 1 and 2, dimension 8) and data: cifar10 train (20 fit items) and test."""
    root = tmp_path_factory.mktemp("exports")
    write_data(root / "data", test_per_class=6)
    for t in (1, 2):
        write_model(root / "exports" / f"task{t}.onnx", task=t, dim=8, seed=t)
    return root


def test_a_model_file_with_the_adapter_inside_is_an_adapted_row(exports, capfd, tmp_path):
    root = exports
    for t in (1, 2):
        assert run(capfd, "embed", "--model", f"exports/task{t}.onnx", "--dataset", "cifar10:train", "--provider",
                   "cpu", "--quiet", "--store", tmp_path / "store", cwd=root)[0] == 0
    code, out, err = run(capfd, "adapt", "--deployed", "task1", "--candidate", "task2", "--fit-data", "cifar10:train",
                         "--store", tmp_path / "store", "--out", tmp_path / "a.adapter.npz", "--export",
                         tmp_path / "task2-to-task1.onnx", "--model", "exports/task2.onnx", cwd=root)
    assert code == 0, err
    assert "real inputs" in out
    models = ["exports/task1.onnx", "exports/task2.onnx", tmp_path / "task2-to-task1.onnx"]
    code, out, err = run(capfd, "evaluate", "--models", *models, "--store", tmp_path / "store", "--out",
                         tmp_path / "r", "--provider", "cpu", "--quiet", cwd=root)
    assert code == 0, err
    report = json.loads((tmp_path / "r" / "compatibility.json").read_text())
    assert report["models"] == ["task1", "task2"]  # not a model of the matrix, and no task clash with task2
    (row,) = report["adapters"]["rows"]
    assert row["file"].endswith("task2-to-task1.onnx") and (row["query"], row["gallery"]) == ("task2", "task1")
    assert "task2-to-task1's queries (the model file with the adapter inside)" in row["compares"]
    assert row["learning_curve"]["points"] == [] and "evaluate its *.adapter.npz" in row["learning_curve"]["note"]
    # its numbers: the file's float32 graph, within the ONNX check's tolerance of the adapter file's row
    (tmp_path / "ad").mkdir()
    (tmp_path / "a.adapter.npz").rename(tmp_path / "ad" / "a.adapter.npz")
    code, _, err = run(capfd, "evaluate", "--models", *models[:2], "--store", tmp_path / "store", "--out",
                       tmp_path / "r2", "--provider", "cpu", "--quiet", "--adapters", tmp_path / "ad", cwd=root)
    assert code == 0, err
    (from_file,) = json.loads((tmp_path / "r2" / "compatibility.json").read_text())["adapters"]["rows"]
    assert from_file["adapter"]["digest"] == row["adapter"]["digest"]
    assert abs(from_file["value"] - row["value"]) <= 2 / row["queries"]  # a tie or two may break otherwise
    stored = "task2-to-task1"
    code, _, err = run(capfd, "evaluate", "--from-store", f"task1,{stored}", "--store", tmp_path / "store", "--out",
                       tmp_path / "r3", cwd=root)
    assert code == 2 and "not a model of the matrix; evaluate the two models with --adapters DIR" in err


def test_the_leakage_guard_refuses_before_anything_is_embedded(exports, capfd, tmp_path):
    root, fit_store, store = exports, tmp_path / "fit-store", tmp_path / "store"
    for t in (1, 2):
        assert run(capfd, "embed", "--model", f"exports/task{t}.onnx", "--dataset", "cifar10:test", "--provider", "cpu",
                   "--quiet", "--store", fit_store, cwd=root)[0] == 0
    assert run(capfd, "adapt", "--deployed", "task1", "--candidate", "task2", "--fit-data", "cifar10:test", "--store",
               fit_store, "--out", tmp_path / "leak" / "l.adapter.npz", cwd=root)[0] == 0
    code, out, err = run(capfd, "evaluate", "--models", "exports/task1.onnx", "exports/task2.onnx", "--query",
                         "cifar10:test", "--store", store, "--out", tmp_path / "r", "--provider", "cpu", "--quiet",
                         "--adapters", tmp_path / "leak", cwd=root)
    assert code == 2 and err.count("\n") == 1 and "l.adapter.npz: fitted on cifar10:test, which overlaps the query" in err
    assert not (tmp_path / "r").exists() and not [p for p in store.rglob("*") if p.is_file()]  # nothing embedded


ADAPT_AND_EVALUATE = '''
import runpy, sys
runpy.run_path(sys.argv[1])["import_checkout"]()
from dpcompat.cli import cli
for args in (sys.argv[2].split("|"), sys.argv[3].split("|")):
    code = cli.main(args, prog_name="cli.py", standalone_mode=False)
    assert code in (None, 0), code
print("loaded", sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm")))
'''


def test_adapt_and_evaluate_adapters_run_with_torch_blocked(rotated):
    root, _ = rotated
    blocker = root / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_TORCH)
    adapt_args = ["adapt", "--deployed", "task1", "--candidate", "task2", "--fit-data", spec(root, "fit"), "--store",
                  "store", "--kind", "affine", "--direction", "gallery", "--export", "g.onnx"]
    evaluate_args = ["evaluate", "--from-store", "task1,task2", "--query", spec(root, "eval"), "--store", "store",
                     "--adapters", "adapters", "--quiet"]
    r = subprocess.run([sys.executable, "-c", ADAPT_AND_EVALUATE, str(ROOT / "checkout.py"), "|".join(adapt_args),
                        "|".join(evaluate_args)], cwd=root, env={"PYTHONPATH": str(blocker), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "loaded []" in r.stdout and "gallery adapter" in r.stdout
    assert json.loads((root / "reports" / "compatibility.json").read_text())["adapters"]["rows"][0]["verdict"]


def test_bench_adapt_measures_fits_and_the_transform_against_the_peak(tmp_path, monkeypatch, capfd):
    from dpcompat.bench.adapt import bench_adapt, format_adapt
    from dpcompat.infer.runtime import throughput

    monkeypatch.setattr(throughput, "matmul_peak", lambda provider: {"provider": provider, "runs": [], "peak": 1e10})
    result = bench_adapt(tmp_path, rows=3000, dim=32, kinds=("orthogonal", "linear"), repeats=1)
    assert [f["kind"] for f in result["fit"]] == ["orthogonal", "linear"] and result["fit"][1]["ridge"] is not None
    assert all(f["seconds"] > 0 and f["peak_extra_mib"] > 0 and f["rows_per_s"] > 0 for f in result["fit"])
    a = result["apply"]
    assert a["rows"] == 3000 and a["kernel_rows"] == 3000 and a["kind"] == "orthogonal"
    assert a["fraction_of_peak"] == pytest.approx(2 * 32 * 32 * 3000 / a["seconds"] / 1e10)
    assert a["kernel_fraction_of_peak"] == pytest.approx(a["kernel_flops"] / 1e10)
    old = read_set(set_path(tmp_path / "store", "old", dataset_key("generated:3000")))
    new = read_set(set_path(tmp_path / "store", "new", dataset_key("generated:3000")))
    moved = read_set(set_path(tmp_path / "store", "old-to-new", dataset_key("generated:3000")))
    assert moved.manifest.transformed and np.einsum("nd,nd->n", moved.embeddings, new.embeddings).mean() > 0.95
    assert old.count == 3000 and "of peak" in format_adapt(result) and "load average" in format_adapt(result)
    code, _, err = run(capfd, "bench", "adapt", "--kinds", "orthogonal,sideways", "--workdir", "b", cwd=tmp_path)
    assert code == 2 and "--kinds 'sideways': expected one of orthogonal, linear, affine" in err
    code, out, err = run(capfd, "bench", "adapt", "--rows", 500, "--dim", 8, "--kinds", "affine", "--repeats", 1,
                         "--workdir", "b", "--json", "b.json", cwd=tmp_path)
    assert code == 0, err
    saved = json.loads((tmp_path / "b.json").read_text())
    assert saved["rows"] == 500 and saved["dim"] == 8 and [f["kind"] for f in saved["fit"]] == ["affine"]
    assert saved["apply"]["rows"] == 500 and saved["matmul_peak"]["peak"] == 1e10 and "machine" in saved
    assert "of peak" in out and (tmp_path / "b" / "store" / "old-to-new").is_dir()
