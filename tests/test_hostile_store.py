"""The store and the report folder under hostile edits and on day-one paths (issue 21): a reused set's
manifest never overrides the model file, an edited data spec never relabels a report, the FAISS index
cache is verified before use, ``--out`` never deletes what a report did not write, a failed embed leaves
no empty folder behind, ``--from-store`` says where it looked, and an explicit GPU request is checked even
when every set is reused."""
import json
import shutil

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.common.provenance import GENERATED_NOTE
from dpcompat.evaluate.pipeline import collect_from_models, evaluate_sets, order_by_task
from dpcompat.evaluate.report.writer import check_out_dir
from dpcompat.infer.data.datasets import dataset_key, dataset_location, open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.infer.runtime.session import gpu_problem
from dpcompat.infer.store.manifest import content_digest
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import model_info, run_cli, write_data, write_model, write_random_set
from test_hostile_models import assert_one_line


CPU = RuntimeOptions(provider="cpu")


def _notes(events):
    return lambda message: events.append(message)


@pytest.fixture
def work(tmp_path):
    """Two generated-data exports (task 1, task 2), CIFAR-layout data under D/, their sets embedded in S/."""
    from dataclasses import replace

    data = write_data(tmp_path / "D", test_per_class=4)
    for task in (1, 2):
        info = replace(model_info(task, dim=8), provenance={"data": "generated", "backbone": "random"})
        write_model(tmp_path / f"task{task}.onnx", info=info)
    models = [tmp_path / "task1.onnx", tmp_path / "task2.onnx"]
    collect_from_models(models, "cifar10:test", "cifar10:test", data, tmp_path / "S", runtime=CPU)
    return tmp_path, models, data


def _set(work_dir, model_id):
    return work_dir / "S" / model_id / dataset_key("cifar10:test", work_dir / "D")


def _edit(path, change, reseal):
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    if reseal:
        m["manifest_sha256"] = content_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _evaluate(work_dir, models, data, events):
    q, g = collect_from_models(models, "cifar10:test", "cifar10:test", data, work_dir / "S", runtime=CPU,
                               warn=_notes(events))
    return evaluate_sets(*order_by_task(q, g, _notes(events)), k=3)


@pytest.mark.parametrize("reseal", [False, True])
def test_an_edited_manifest_never_overrides_the_model_file(work, reseal):
    """model.task edited to 7 (which would put task 2 first) and provenance emptied (which would drop the
    banner): an edit the manifest's own digest catches, or, resealed, one the model file contradicts."""
    tmp_path, models, data = work
    _edit(_set(tmp_path, "task1"), lambda m: (m["model"].update(task=7), m.update(provenance={})), reseal)
    events = []
    ev = _evaluate(tmp_path, models, data, events)
    assert ev.models == ["task1", "task2"] and GENERATED_NOTE in ev.notes
    said = "disagrees with the model file" if reseal else "differs from its own digest"
    assert any(said in e and "recomputing" in e for e in events), events
    restored = read_set(_set(tmp_path, "task1")).manifest
    assert restored.model.task == 1 and restored.provenance == {"data": "generated", "backbone": "random"}


def test_from_store_refuses_an_edited_manifest_in_one_line(work):
    tmp_path, _, data = work
    _edit(_set(tmp_path, "task1"), lambda m: m["model"].update(task=7), reseal=False)
    r = run_cli("evaluate", "--from-store", "task1,task2", "--store", "S", "--data-path", "D", cwd=tmp_path)
    assert_one_line(r, "manifest.json: its content differs from its own digest (manifest_sha256)")


def test_an_edited_data_spec_is_checked_against_its_location_and_the_data_asked_for(work):
    tmp_path, models, data = work
    for model_id in ("task1", "task2"):
        _edit(_set(tmp_path, model_id), lambda m: m["dataset"].update(spec="cifar100:train"), reseal=True)
    r = run_cli("evaluate", "--from-store", "task1,task2", "--query", "cifar10:test", "--store", "S", "--data-path",
                "D", "--quiet", cwd=tmp_path)
    assert_one_line(r, "its manifest names the data 'cifar100:train', which is not cifar10:test at "
                       f"{dataset_location('cifar10:test', data)}")
    assert not (tmp_path / "reports").exists()
    events = []
    ev = _evaluate(tmp_path, models, data, events)  # from the model files: recomputed, the spec the data's
    assert ev.query["spec"] == "cifar10:test" and any("dataset.spec 'cifar100:train'" in e for e in events), events


def test_from_store_without_data_path_says_where_it_looked_and_what_the_store_holds(work):
    tmp_path, _, data = work
    r = run_cli("evaluate", "--from-store", "task1,task2", "--store", "S", "--quiet", cwd=tmp_path)
    looked, held = dataset_location("cifar10:test", tmp_path / "data"), dataset_location("cifar10:test", data)
    assert_one_line(r, f"no stored set of task1 on cifar10:test at {looked}", f"the store holds task1 on {held} "
                       "(cifar10:test)", "--data-path decides where a CIFAR spec points")
    assert run_cli("evaluate", "--from-store", "task1,task2", "--store", "S", "--data-path", "D", "--quiet",
                   cwd=tmp_path).returncode == 0


def test_one_model_from_the_command_line_reports_its_own_quality_and_decides_nothing(work):
    """`evaluate --models task1.onnx` ended in a traceback (issue 21): one model has no pair; its top-1
    is brute force's on its stored set (cosine, own image left out, ties to the lower index)."""
    tmp_path, models, _ = work
    r = run_cli("evaluate", "--models", str(models[0]), "--store", "S", "--data-path", "D", "--out", "one", "--quiet",
                cwd=tmp_path)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr[-2000:]
    assert "decision: no pair to decide (one model)" in r.stdout
    report = json.loads((tmp_path / "one" / "compatibility.json").read_text())
    assert report["models"] == ["task1"] and report["decision"]["pairs"] == []
    stored = read_set(_set(tmp_path, "task1"))
    x = stored.embeddings / np.linalg.norm(stored.embeddings, axis=1, keepdims=True)
    hits = [stored.labels[min((-float(x[q] @ x[g]), g) for g in range(len(x)) if g != q)[1]] == stored.labels[q]
            for q in range(len(x))]
    assert report["metrics"]["top1"][0][0] == pytest.approx(np.mean(hits))


@pytest.mark.skipif(gpu_problem("cuda") is None, reason="CUDA works here: the request is served")
def test_an_explicit_gpu_request_is_checked_when_every_set_is_reused(work):
    tmp_path, models, _ = work
    for args in (["evaluate", "--models", *map(str, models), "--store", "S", "--data-path", "D", "--out", "r"],
                 ["evaluate", "--from-store", "task1,task2", "--store", "S", "--data-path", "D", "--out", "r"],
                 ["embed", "--model", str(models[0]), "--dataset", "cifar10:test", "--store", "S", "--data-path",
                  "D"]):
        assert_one_line(run_cli(*args, "--provider", "cuda", "--quiet", cwd=tmp_path), "--provider cuda: ")
    assert not (tmp_path / "r").exists()


def test_out_never_replaces_what_a_report_did_not_write(work):
    tmp_path, _, _ = work
    args = ("evaluate", "--from-store", "task1,task2", "--store", "S", "--data-path", "D", "--out", "rep", "--quiet")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    report = tmp_path / "rep" / "compatibility.json"
    report.unlink()
    report.mkdir()
    (report / "notes.txt").write_text("mine")
    assert_one_line(run_cli(*args, cwd=tmp_path), "--out rep: compatibility.json is a folder")
    assert (report / "notes.txt").read_text() == "mine"
    shutil.rmtree(report)
    (tmp_path / "rep" / "compatibility.md").write_text("my own notes, under a report's name\n")
    with pytest.raises(InputError, match="compatibility.md is not a report's md file"):
        check_out_dir(tmp_path / "rep")
    (tmp_path / "rep" / "compatibility.md").unlink()
    (tmp_path / "rep" / "cmc.png").unlink()
    (tmp_path / "rep" / "cmc.png").symlink_to(tmp_path / "D")
    with pytest.raises(InputError, match="cmc.png is a link"):
        check_out_dir(tmp_path / "rep")


def test_a_failed_embed_leaves_no_empty_partial_folder_and_says_when_it_resumes(tmp_path):
    data = write_data(tmp_path / "D", test_per_class=1)
    nan = write_model(tmp_path / "nan.onnx", poison=float("nan"))
    with pytest.raises(InputError, match="NaN or Inf") as e:
        embed_dataset(nan, open_dataset("cifar10:test", data), tmp_path / "S", runtime=CPU)
    assert "resumes" not in str(e.value) and not list((tmp_path / "S").rglob("*.partial"))
    ds = open_dataset("generated:3")
    model = write_model(tmp_path / "task1.onnx")
    options = dict(runtime=RuntimeOptions(provider="cpu", batch_size=1, workers=0), shard_rows=1,
                   warn=lambda m: None)

    def unreadable_third(index, image=ds.image):
        if index == 2:
            raise InputError(f"{ds.item_name(index)}: unreadable image (a disk that failed for a while)")
        return image(index)
    ds.image = unreadable_third
    with pytest.raises(InputError, match="2 rows of complete shards are kept: the same command resumes after them"):
        embed_dataset(model, ds, tmp_path / "S", **options)
    assert len(list((tmp_path / "S").rglob("*.partial"))) == 1
    del ds.image
    done = embed_dataset(model, ds, tmp_path / "S", **options)
    assert done.resumed_rows == 2 and done.set.count == 3 and not list((tmp_path / "S").rglob("*.partial"))


faiss = pytest.importorskip("faiss", reason="faiss is not installed (extra [faiss])")


@pytest.fixture
def galleries(tmp_path):
    from dpcompat.evaluate.search.cells import CACHE_FOLDER

    sets = [read_set(write_random_set(tmp_path / "store" / f"m{i}" / "k", f"m{i}", n=200, dim=16, seed=i).path)
            for i in range(2)]
    return sets, tmp_path / "store", tmp_path / "store" / CACHE_FOLDER


def _search(index, sets):
    return index.search(np.ascontiguousarray(sets[0].embeddings[:20]), 5)[1]


@pytest.mark.parametrize("damage", ["copied index", "copied index and record", "flipped byte", "truncated",
                                    "garbage record", "deep record", "missing record"])
def test_a_cached_index_is_verified_before_use_or_rebuilt(galleries, damage):
    from dpcompat.evaluate.search.cells import cached_index, record_path
    from dpcompat.evaluate.search.indexes import IndexParams

    sets, store, cache = galleries
    kind = "flat" if "copied" in damage else "ivf"
    resolved = IndexParams(nlist=4).resolve(kind, 200, 16)
    fresh = [cached_index(s, kind, resolved, store)[0] for s in sets]
    files = [next((cache / s.model_id).glob("*.faiss")) for s in sets]
    if damage.startswith("copied"):
        shutil.copyfile(files[0], files[1])  # task 1's index under task 2's name
        if damage.endswith("record"):
            shutil.copyfile(record_path(files[0]), record_path(files[1]))
    elif damage == "flipped byte":
        data = bytearray(files[1].read_bytes())
        data[len(data) // 2] ^= 0x01
        files[1].write_bytes(bytes(data))
    elif damage == "truncated":
        files[1].write_bytes(files[1].read_bytes()[:100])
    elif damage == "garbage record":
        record_path(files[1]).write_text("{not json")
    elif damage == "deep record":
        record_path(files[1]).write_text("[" * 200_000 + "]" * 200_000)
    else:
        record_path(files[1]).unlink()
    warnings = []
    index, cached, _ = cached_index(sets[1], kind, resolved, store, warn=warnings.append)
    assert cached is False and len(warnings) == 1 and "rebuilding" in warnings[0], warnings
    assert np.array_equal(_search(index, sets), _search(fresh[1], sets))
    again, cached, _ = cached_index(sets[1], kind, resolved, store)  # the rebuilt one is verified and used
    assert cached is True and np.array_equal(_search(again, sets), _search(fresh[1], sets))
