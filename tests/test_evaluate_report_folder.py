"""The report folder is one run's, whatever moment a run is killed; models are put in task order;
--out places that cannot hold a report are refused before any work."""
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.decide import decide_arrays
from dpcompat.evaluate.pipeline import Evaluation, evaluate_sets
from dpcompat.evaluate.report.writer import check_out_dir, write_reports
from dpcompat.infer.data.datasets import dataset_key
from onnx_fixtures import run_cli, write_random_set

ROOT = Path(__file__).resolve().parents[1]
CHILD = '''
import pickle, runpy, sys
runpy.run_path(sys.argv[1])["import_checkout"]()
from dpcompat.evaluate.report.writer import write_reports
write_reports(pickle.load(open(sys.argv[2], "rb")), sys.argv[3])
'''


def evaluation(seed, notes=()):
    rng = np.random.default_rng(seed)
    labels = np.arange(30) % 3
    sets = []
    for _ in range(3):
        x = rng.standard_normal((30, 6)).astype(np.float32)
        sets.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    result = compatibility(sets, sets, labels, labels, exclude_self=True, resamples=100)
    data = {"spec": f"cifar10:test-{seed}", "count": 30}
    models = ["task1", "task2", "task3"]
    decision = decide_arrays(result, models, [None] * 3, sets, sets, labels, labels, exclude_self=True)
    return Evaluation(result=result, models=models, query=data, gallery=data,
                      protocol={"similarity": "cosine", "k": 5, "own_image_left_out": True}, decision=decision,
                      provenance=[{}, {}, {}], notes=list(notes))


def contents(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_kill_while_writing_leaves_the_old_or_the_new_report(tmp_path):
    old, new = evaluation(1), evaluation(2, notes=["GENERATED DATA: test"])
    write_reports(old, tmp_path / "ref-old")
    write_reports(new, tmp_path / "ref-new")
    want_old, want_new = contents(tmp_path / "ref-old"), contents(tmp_path / "ref-new")
    assert len(want_new) == 14 and want_old != want_new  # the default metrics: no exact mAP heatmap
    (tmp_path / "new.pkl").write_bytes(pickle.dumps(new))
    (tmp_path / "child.py").write_text(CHILD)
    out = tmp_path / "reports"
    for files_before_kill in (1, 7, 14):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(tmp_path / "ref-old", out)
        child = subprocess.Popen([sys.executable, str(tmp_path / "child.py"), str(ROOT / "checkout.py"),
                                  str(tmp_path / "new.pkl"), str(out)])
        deadline = time.monotonic() + 120
        while child.poll() is None and time.monotonic() < deadline:
            building = list(tmp_path.glob(f".reports.{child.pid}.*.tmp"))
            if building and len(list(building[0].iterdir())) >= files_before_kill:
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        child.wait()
        assert contents(out) in (want_old, want_new), files_before_kill
    write_reports(new, out)  # a rerun completes the report and clears what the killed runs left
    assert contents(out) == want_new
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_out_places_that_cannot_hold_a_report_are_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_out_dir(tmp_path / "file")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="notes.txt"):
        check_out_dir(tmp_path / "mine")
    assert check_out_dir(tmp_path / "new" / "reports") == tmp_path / "new" / "reports"
    write_reports(evaluation(3), tmp_path / "old-report")
    assert check_out_dir(tmp_path / "old-report")  # a previous report may be replaced


def test_models_are_put_in_task_order_and_duplicate_tasks_refused(tmp_path):
    sets = {t: write_random_set(tmp_path / f"task{t}", f"task{t}", seed=t) for t in (1, 2, 10)}
    given = [sets[1], sets[10], sets[2]]  # a shell glob's order
    said = []
    ev = evaluate_sets(given, given, warn=said.append)
    assert ev.models == ["task1", "task2", "task10"]
    assert said == ["note: models put in task order task1, task2, task10 (given: task1, task10, task2)"]
    want = evaluate_sets([sets[1], sets[2], sets[10]], [sets[1], sets[2], sets[10]], warn=said.append)
    np.testing.assert_array_equal(ev.result.metrics["top1"], want.result.metrics["top1"])
    assert len(said) == 1  # in order already: nothing said
    twin = write_random_set(tmp_path / "twin", "task2b", seed=2)
    with pytest.raises(InputError, match="task2 and task2b are all task 2 in their metadata, in fp32"):
        evaluate_sets([sets[1], sets[2], twin], [sets[1], sets[2], twin])


def test_a_tasks_int8_file_follows_its_fp32_file_as_its_update(tmp_path):
    """Two precisions of one task compare: the int8 file after the fp32 one, whatever the order given,
    so C[int8][fp32] is the int8 query model against the fp32 gallery."""
    fp32 = write_random_set(tmp_path / "fp32", "task2", seed=2)
    int8 = write_random_set(tmp_path / "int8", "task2_int8", seed=3, task=2, precision="int8")
    said = []
    ev = evaluate_sets([int8, fp32], [int8, fp32], warn=said.append)
    assert ev.models == ["task2", "task2_int8"]
    assert said == ["note: models put in task order task2, task2_int8 (given: task2_int8, task2)"]


def test_evaluate_cli_says_it_reordered_and_refuses_a_foreign_out_folder(tmp_path):
    for t in (1, 2, 10):
        write_random_set(tmp_path / "embeddings" / f"task{t}" / dataset_key("cifar10:test", tmp_path / "data"), f"task{t}",
                         seed=t, data_path=tmp_path / "data")
    r = run_cli("evaluate", "--from-store", "task10,task1,task2", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "models put in task order task1, task2, task10" in r.stderr and "3 models: task1, task2, task10" in r.stdout
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    r = run_cli("evaluate", "--from-store", "task1,task2", "--out", "mine", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --out mine: holds files") and "thesis.tex" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and (tmp_path / "mine" / "thesis.tex").read_text() == "x"
