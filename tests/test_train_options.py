"""Issue 21: the library refuses option values out of range instead of replacing them (``None`` is the
only "not given"), and a missing checkpoint folder says where it looked and where checkpoints are."""
import argparse
import math
from pathlib import Path

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.export.verify import source_checkpoint
from dpcompat.export.verify_file import export_path
from dpcompat.train.accuracy import AccuracyOptions, resolve_settings
from dpcompat.train.checkpoint import checkpoint_path, find_checkpoints
from dpcompat.train.data import limit_per_class
from dpcompat.train.options import TrainOptions
from onnx_fixtures import model_info, write_model
from test_train_finite import save_raw
from test_validation_cli import assert_one_line, run


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "--batch-size 0: must be at least 1"),
    ("batch_size", -8, "--batch-size -8: must be at least 1"),
    ("batch_size", 2.5, "--batch-size 2.5: expected an integer"),
    ("batch_size", True, "--batch-size True: expected an integer"),
    ("limit_per_class", -1, "--limit-per-class -1: must be at least 1"),
    ("limit_per_class", 0, "--limit-per-class 0: must be at least 1"),
])
def test_accuracy_options_out_of_range_are_refused(field, value, message):
    with pytest.raises(InputError, match=f"^{message}"):
        AccuracyOptions(**{field: value})


def test_accuracy_options_none_takes_the_checkpoints_values():
    args = argparse.Namespace(num_tasks=2, batch_size=6, limit_per_class=3)
    settings = resolve_settings(AccuracyOptions(), args, Path("t1.pth"))
    assert (settings["batch_size"], settings["limit_per_class"]) == (6, 3)
    settings = resolve_settings(AccuracyOptions(batch_size=1, limit_per_class=1), args, Path("t1.pth"))
    assert (settings["batch_size"], settings["limit_per_class"]) == (1, 1)
    assert resolve_settings(AccuracyOptions(), argparse.Namespace(num_tasks=2), Path("t"))["batch_size"] == 24


@pytest.mark.parametrize("key, value", [("batch_size", 0), ("batch_size", -4), ("limit_per_class", -1),
                                        ("limit_per_class", 0), ("batch_size", "24")])
def test_a_checkpoints_recorded_setting_out_of_range_is_refused_not_replaced(key, value):
    args = argparse.Namespace(num_tasks=2, **{key: value})
    with pytest.raises(InputError, match=f"^t1.pth: args.{key} {value!r} is not a positive integer; "
                                         f"pass --{key.replace('_', '-')}"):
        resolve_settings(AccuracyOptions(), args, Path("t1.pth"))


@pytest.mark.parametrize("field, value, option", [
    ("num_tasks", 0, "--num-tasks"), ("epochs", 0, "--epochs"), ("epochs", -1, "--epochs"),
    ("batch_size", 0, "--batch-size"), ("limit_per_class", 0, "--limit-per-class"),
    ("limit_per_class", -1, "--limit-per-class"), ("seed", -1, "--seed"), ("workers", -1, "--workers"),
    ("lr", 0.0, "--lr"), ("lr", -0.03, "--lr"), ("lr", math.nan, "--lr"), ("lr", math.inf, "--lr"),
    ("clip_grad", 0.0, "clip_grad"), ("pull_constraint_coeff", math.nan, "pull_constraint_coeff"),
    ("distill_weight", -1.0, "--distill-weight"), ("selection", "every", "--selection"),
    ("gather", "mixed", "--gather"), ("distill_kind", "l2", "--distill-kind"),
])
def test_train_options_out_of_range_are_refused(field, value, option):
    with pytest.raises(InputError, match=f"^{option} "):
        TrainOptions(**{field: value})


def test_a_limit_per_class_below_one_is_never_a_negative_slice():
    labels = np.repeat(np.arange(2), 6)
    assert len(limit_per_class(labels, [0, 1], None)) == 12 and len(limit_per_class(labels, [0, 1], 5)) == 10
    for limit in (0, -1):
        with pytest.raises(InputError, match=f"--limit-per-class {limit}: must be an integer of at least 1"):
            limit_per_class(labels, [0, 1], limit)


@pytest.mark.parametrize("option, value", [("--batch-size", "0"), ("--limit-per-class", "-1")])
def test_accuracy_command_refuses_instead_of_replacing(tmp_path, monkeypatch, option, value):
    monkeypatch.chdir(tmp_path)
    save_raw(tmp_path / "ckpt", 1)
    r = run("accuracy", "--checkpoint-dir", "ckpt", option, value, "--data-path", tmp_path / "none", "--out", "out")
    assert_one_line(r, f"{option} {value}")
    assert not (tmp_path / "out").exists()


# ---- a missing checkpoint folder after the demo ----

def test_missing_default_folder_names_where_it_looked_and_the_demos_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as e:
        find_checkpoints("output/checkpoint")
    assert str(e.value) == f"--checkpoint-dir output/checkpoint: no such folder in {tmp_path}"
    save_raw(tmp_path / "demo-run" / "output" / "checkpoint", 3)
    save_raw(tmp_path / "mine" / "output" / "checkpoint", 1)
    with pytest.raises(InputError) as e:
        find_checkpoints("output/checkpoint")
    assert str(e.value) == (f"--checkpoint-dir output/checkpoint: no such folder in {tmp_path}; task checkpoints are "
                            "in demo-run/output/checkpoint (also in mine/output/checkpoint): pass --checkpoint-dir "
                            "demo-run/output/checkpoint")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="^empty: no task<N>_checkpoint.pth files; task checkpoints are in "
                                         "demo-run/output/checkpoint"):
        find_checkpoints("empty")


def test_export_after_the_demo_points_to_its_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_raw(tmp_path / "demo-run" / "output" / "checkpoint", 3)
    r = run("export", "--task", "3")
    assert_one_line(r, "--checkpoint-dir output/checkpoint: no such folder in ",
                    "pass --checkpoint-dir demo-run/output/checkpoint")
    assert not (tmp_path / "exports").exists()


def searched(message: str) -> list[str]:
    return message.split(" is in none of ")[1].split(";")[0].split(", ")


def test_verify_lists_each_folder_it_searched_once_and_points_to_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = model_info(task=3)
    with pytest.raises(InputError) as e:
        source_checkpoint(Path("exports") / "task3.onnx", info, None)
    assert searched(str(e.value)) == ["output/checkpoint", "exports/checkpoint", "checkpoint"]
    assert str(e.value).endswith("; name its folder with --checkpoint-dir")
    save_raw(tmp_path / "demo-run" / "output" / "checkpoint", 2)  # not the one the export names
    save_raw(tmp_path / "run2" / "output" / "checkpoint", 3)
    with pytest.raises(InputError) as e:
        source_checkpoint(Path("exports") / "task3.onnx", info, None)
    assert str(e.value).endswith("; task3_checkpoint.pth is in run2/output/checkpoint: pass --checkpoint-dir "
                                 "run2/output/checkpoint")
    assert source_checkpoint(Path("exports") / "task3.onnx", info, "run2/output/checkpoint") == \
        checkpoint_path("run2/output/checkpoint", 3)


def test_verify_task_after_the_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exports").mkdir()
    write_model(tmp_path / "exports" / "task3.onnx", task=3)
    save_raw(tmp_path / "demo-run" / "output" / "checkpoint", 3)
    r = run("verify", "--task", "3")
    assert_one_line(r, "task3_checkpoint.pth is in demo-run/output/checkpoint: pass --checkpoint-dir "
                       "demo-run/output/checkpoint")
    assert searched(r.stderr) == ["output/checkpoint", "exports/checkpoint", "checkpoint"]


def test_verify_task_without_export_dir_after_the_demo_points_to_its_exports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as e:
        export_path(3, None, "exports")
    assert str(e.value) == "exports/task3.onnx: no such ONNX file (run: python cli.py export --task 3)"
    (tmp_path / "demo-run" / "exports").mkdir(parents=True)
    write_model(tmp_path / "demo-run" / "exports" / "task3.onnx", task=3)
    r = run("verify", "--task", "3")
    assert_one_line(r, "exports/task3.onnx: no such ONNX file; task3.onnx is in demo-run/exports: pass --export-dir "
                       "demo-run/exports")
    assert export_path(3, None, "demo-run/exports") == Path("demo-run/exports/task3.onnx")
