"""`python cli.py accuracy`: reproduces train's metrics.jsonl, and in the reference modes the numbers of
the reference's `main.py --eval` (checked against an independent restatement of its evaluation)."""
import json

import numpy as np
import pytest
import torch

from dpcompat.common.synthetic import write_synthetic_cifar
from dpcompat.train.accuracy import AccuracyOptions, evaluate_checkpoints
from dpcompat.train.checkpoint import checkpoint_path, config_to_args, model_from_checkpoint, save_checkpoint
from dpcompat.train.data import eval_transform, load_split, task_classes, task_dataset
from test_train_cli import TRAIN, run_cli
from train_fixtures import reference_outputs, tiny_model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny runs on generated CIFAR-100 files: the default modes, and the reference's (its gather and
    batchwise selection in training and in train's own evaluation)."""
    root = tmp_path_factory.mktemp("acc")
    write_synthetic_cifar(root / "data", "cifar100", num_classes=4, train_per_class=16, test_per_class=9)
    runs = {}
    for name, extra in (("default", []), ("reference", ["--gather", "reference", "--selection", "batchwise"])):
        r = run_cli("train", "--data-path", str(root / "data"), "--output-dir", name, *TRAIN, *extra, cwd=root)
        assert r.returncode == 0, r.stderr
        runs[name] = root / name
    return root, runs


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory):
    """Two task checkpoints of random-weight models (predictions near chance, so that any change of an
    embedding shows in the accuracy) and 25 test images per class."""
    root = tmp_path_factory.mktemp("acc-random")
    write_synthetic_cifar(root / "data", "cifar100", num_classes=4, train_per_class=1, test_per_class=25)
    for t in (1, 2):
        model = tiny_model(seed=t, num_classes=4)
        save_checkpoint(checkpoint_path(root / "checkpoint", t), model, None, 0,
                        config_to_args(model.cfg, num_tasks=2, batch_size=8))
    return root


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["default", "reference"])
def test_reproduces_train_metrics(trained, name):
    root, runs = trained
    r = run_cli("accuracy", "--checkpoint-dir", str(runs[name] / "checkpoint"), "--data-path", str(root / "data"),
                "--out", f"acc-{name}", "--quiet", cwd=root)
    assert r.returncode == 0, r.stderr
    report = json.loads((root / f"acc-{name}" / "accuracy.json").read_text())
    for mine, train_row in zip(report["rows"], _metrics(runs[name]), strict=True):
        for key in ("task", "accuracy", "average_accuracy", "forgetting"):
            assert mine[key] == train_row[key], (key, mine, train_row)
    expected_modes = ("reference", "batchwise") if name == "reference" else ("per-sample", "per-sample")
    assert (report["settings"]["gather"], report["settings"]["selection"]) == expected_modes
    assert report["accuracy_matrix"][1][0] is None and report["settings"]["batch_size"] == 8
    csv_lines = (root / f"acc-{name}" / "accuracy.csv").read_text().splitlines()
    assert csv_lines[0] == "test_set,after_task_1,after_task_2" and csv_lines[2].startswith("task_2,,")
    assert (root / f"acc-{name}" / "accuracy_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "average accuracy" in r.stdout and "gather " + expected_modes[0] in r.stdout


def _reference_eval(checkpoints, data_path, batch_size):
    """The reference's main.py --eval, restated: each task's test set in order in batches of
    ``batch_size``; top-1 of its logits with the query features given (batchwise_prompt on); its
    acc_matrix, average and forgetting formulas."""
    split = load_split(data_path, "test", False)
    tasks = task_classes(len(split.classes), 2)
    acc = np.zeros((2, 2))
    printed = []
    for t, path in enumerate(checkpoints):
        model = model_from_checkpoint(path)[0]
        for i in range(t + 1):
            data = task_dataset(split, tasks[i], eval_transform(model.cfg.img_size), None)
            x = torch.stack([data[j][0] for j in range(len(data))])
            y = torch.tensor([data[j][1] for j in range(len(data))])
            correct = sum(int((reference_outputs(model, x[s:s + batch_size], batchwise=True)["logits"].argmax(1)
                               == y[s:s + batch_size]).sum()) for s in range(0, len(y), batch_size))
            acc[i, t] = 100.0 * correct / len(y)
        forgetting = np.mean((np.max(acc, axis=1) - acc[:, t])[:t]) if t > 0 else 0.0
        printed.append((acc[:t + 1, t].sum() / (t + 1), forgetting))
    return acc, printed


@pytest.mark.parametrize("batch", [1, 2, 7, 8])
def test_reference_modes_reproduce_the_reference_eval(random_checkpoints, batch, tmp_path):
    root = random_checkpoints
    ckpts = [root / "checkpoint" / f"task{t}_checkpoint.pth" for t in (1, 2)]
    result = evaluate_checkpoints(AccuracyOptions(
        checkpoint_dir=str(root / "checkpoint"), data_path=str(root / "data"), out=str(tmp_path),
        batch_size=batch, selection="batchwise", gather="reference", device="cpu", quiet=True))
    acc, printed = _reference_eval(ckpts, root / "data", batch)
    assert np.allclose(np.nan_to_num(result.matrix), acc, atol=1e-9)
    for row, (average, forgetting) in zip(result.rows, printed, strict=True):
        assert row["average_accuracy"] == round(average, 4) and row["forgetting"] == round(forgetting, 4)


def test_batch_position_dependence_changes_the_numbers(random_checkpoints, tmp_path):
    """The reference modes are not a relabelling: at batch 8 they change these checkpoints' accuracies,
    so the test above would see a wrong gather."""
    root = random_checkpoints
    opts = dict(checkpoint_dir=str(root / "checkpoint"), data_path=str(root / "data"), selection="batchwise",
                batch_size=8, device="cpu", quiet=True)
    ref = evaluate_checkpoints(AccuracyOptions(out=str(tmp_path / "a"), gather="reference", **opts))
    fixed = evaluate_checkpoints(AccuracyOptions(out=str(tmp_path / "b"), gather="per-sample", **opts))
    assert not np.array_equal(np.nan_to_num(ref.matrix), np.nan_to_num(fixed.matrix))


def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    root, runs = trained
    r = run_cli("accuracy", "--checkpoint-dir", str(tmp_path / "none"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.endswith("none: no such folder\n")
    (tmp_path / "empty").mkdir()
    r = run_cli("accuracy", "--checkpoint-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "no task<N>_checkpoint.pth" in r.stderr
    gap = tmp_path / "gap"
    gap.mkdir()
    (gap / "task2_checkpoint.pth").write_bytes((runs["default"] / "checkpoint" / "task2_checkpoint.pth").read_bytes())
    r = run_cli("accuracy", "--checkpoint-dir", str(gap), "--data-path", str(root / "data"), cwd=tmp_path)
    assert r.returncode == 2 and "without gaps (found tasks 2)" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("accuracy", "--checkpoint-dir", str(runs["default"] / "checkpoint"), "--data-path",
                str(tmp_path / "nodata"), cwd=tmp_path)
    assert r.returncode == 2 and "cifar-100-python" in r.stderr and not (tmp_path / "accuracy").exists()
