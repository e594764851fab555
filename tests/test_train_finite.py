"""Issue 21: weights holding NaN or Inf, or of a dtype the model does not hold, never give a number.
``accuracy``, ``export`` (single files, bundles, int8) and ``inspect`` refuse them with one line naming
the file and the tensor; a training run whose loss or trained parameters stop being finite stops with
one line, writes nothing of that task, and ``train --resume`` continues from the last finite checkpoint."""
import json
import math

import pytest
import torch

from dpcompat.common.errors import InputError
from dpcompat.common.synthetic import write_synthetic_cifar
from dpcompat.train.checkpoint import (checkpoint_path, config_to_args, list_checkpoints, load_checkpoint,
                                       model_from_checkpoint)
from dpcompat.train.loop import _write_metrics, train
from dpcompat.train.options import TrainOptions
from test_validation_cli import assert_one_line, run
from train_fixtures import TINY_ARCH, TINY_CLI, tiny_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Generated CIFAR-100 (4 classes, for accuracy and train) and CIFAR-10 (int8 calibration) files."""
    root = tmp_path_factory.mktemp("finite-data")
    write_synthetic_cifar(root, "cifar100", num_classes=4, train_per_class=8, test_per_class=3)
    write_synthetic_cifar(root, "cifar10", num_classes=10, train_per_class=1, test_per_class=1)
    return root


def save_raw(folder, task: int, change=None, seed: int = 0):
    """A reference-layout checkpoint of a tiny 4-class model, its state dict passed through ``change``
    first (written with torch.save directly: nothing of ours checks it on the way out)."""
    model = tiny_model(seed=seed, num_classes=4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if change:
        change(state)
    path = checkpoint_path(folder, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "optimizer": {}, "epoch": 0,
                "args": config_to_args(model.cfg, num_tasks=2, batch_size=4)}, path)
    return path


def poison(key: str, value: float):
    return lambda state: state[key].fill_(value)


def retype(key: str, dtype: torch.dtype):
    return lambda state: state.__setitem__(key, state[key].to(dtype))


@pytest.mark.parametrize("key, value", [("head.weight", math.nan), ("pos_embed", math.nan), ("g_prompt", math.inf),
                                        ("blocks.3.attn.qkv.bias", -math.inf)])
def test_load_refuses_non_finite_weights_naming_file_and_tensor(tmp_path, key, value):
    path = save_raw(tmp_path, 1, poison(key, value))
    numel = tiny_model(num_classes=4).state_dict()[key].numel()
    with pytest.raises(InputError) as e:
        model_from_checkpoint(path)
    assert str(e.value).startswith(f"{path}: NaN or Inf weights in {key} ({numel:,} of {numel:,} values)")
    assert "\n" not in str(e.value)


def test_one_non_finite_value_is_enough_and_every_bad_tensor_is_named(tmp_path):
    def change(state):
        state["head.bias"][1] = math.nan
        state["e_prompt.prompt_key"][0, 0] = math.inf
    with pytest.raises(InputError, match=r"e_prompt\.prompt_key \(1 of 640 values\), head\.bias \(1 of 4 values\)"):
        load_checkpoint(save_raw(tmp_path, 1, change))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.int64, torch.int8, torch.bool, torch.float64, torch.uint8])
def test_load_refuses_dtypes_the_model_does_not_hold(tmp_path, dtype):
    path = save_raw(tmp_path, 1, retype("pos_embed", dtype))
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(InputError, match=f"^{path}: weights of a type the model does not hold \\(pos_embed is {name}\\)"):
        model_from_checkpoint(path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_are_widened_exactly(tmp_path, dtype):
    path = save_raw(tmp_path, 1, retype("pos_embed", dtype))
    stored = torch.load(path, weights_only=False)["model"]["pos_embed"]
    model, _ = model_from_checkpoint(path)
    assert model.pos_embed.dtype == torch.float32 and torch.equal(model.pos_embed.data, stored.float())


@pytest.fixture
def nan_task2(tmp_path, monkeypatch):
    """A working directory whose ``ckpt`` holds a sound task 1 and a task 2 whose head is all NaN."""
    monkeypatch.chdir(tmp_path)
    save_raw(tmp_path / "ckpt", 1, seed=1)
    save_raw(tmp_path / "ckpt", 2, poison("head.weight", math.nan), seed=2)
    return tmp_path


@pytest.mark.parametrize("command", [
    ["accuracy", "--out", "out"],
    ["export", "--task", "2", "--output-dir", "out"],
    ["export", "--tasks", "1,2", "--bundle", "--output-dir", "out"],
    ["export", "--task", "2", "--precision", "int8", "--calibration", "cifar10:test", "--output-dir", "out"],
], ids=lambda c: " ".join(c[:3]))
def test_commands_refuse_a_nan_checkpoint(nan_task2, data, command):
    r = run(*command, "--checkpoint-dir", "ckpt", "--data-path", data)
    assert_one_line(r, "task2_checkpoint.pth: NaN or Inf weights in head.weight (256 of 256 values)")
    assert not (nan_task2 / "out").exists()


def test_inspect_refuses_a_nan_checkpoint(nan_task2):
    assert_one_line(run("inspect", "ckpt/task2_checkpoint.pth"), "task2_checkpoint.pth: NaN or Inf weights in head.weight")


@pytest.mark.parametrize("command", [["accuracy", "--checkpoint-dir", "ckpt", "--out", "out"],
                                     ["inspect", "ckpt/task1_checkpoint.pth"]], ids=lambda c: c[0])
def test_complex_position_embedding_is_refused_not_cast(tmp_path, monkeypatch, data, command, recwarn):
    monkeypatch.chdir(tmp_path)
    save_raw(tmp_path / "ckpt", 1, retype("pos_embed", torch.complex64))
    r = run(*command, "--data-path", data) if command[0] == "accuracy" else run(*command)
    assert_one_line(r, "task1_checkpoint.pth: weights of a type the model does not hold (pos_embed is complex64)")
    assert not [w for w in recwarn if "imaginary" in str(w.message)]


def test_finite_weights_whose_logits_overflow_get_no_accuracy(tmp_path, monkeypatch, data):
    """Every weight is finite, but a head of 1e38 overflows the logits: an argmax of Inf is no answer."""
    monkeypatch.chdir(tmp_path)
    save_raw(tmp_path / "ckpt", 1, poison("head.weight", 1e38))
    r = run("accuracy", "--checkpoint-dir", "ckpt", "--data-path", data, "--out", "out", "--quiet")
    assert_one_line(r, "task1_checkpoint.pth: the model gives NaN or Inf logits on 6 of 6 test images of task 1")
    assert not (tmp_path / "out").exists()


def train_options(tmp_path, data, **overrides) -> TrainOptions:
    return TrainOptions(**{**dict(data_path=str(data), output_dir=str(tmp_path / "out"), num_tasks=2, epochs=1,
                                  batch_size=8, lr=0.3, workers=0, quiet=True, pretrained=False, device="cpu"),
                           **overrides})


def finite_rows(path) -> list[dict]:
    """metrics.jsonl's rows, read by a parser that refuses NaN and Infinity."""
    def refuse(token):
        raise AssertionError(f"{path}: {token} written")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def test_a_huge_learning_rate_stops_training_with_one_line(tmp_path, data):
    r = run("train", "--data-path", data, "--output-dir", tmp_path / "out", *TINY_CLI, "--num-tasks", "2",
            "--epochs", "2", "--batch-size", "8", "--lr", "1e30")
    assert_one_line(r, "training stopped at task 1, epoch 1, step ", "NaN or Inf in the loss (nan)",
                    "no checkpoint was written; lower --lr (--lr 1e+30 is 3.13e+28 after scaling", progress=True)
    assert not list_checkpoints(tmp_path / "out" / "checkpoint") and not (tmp_path / "out" / "metrics.jsonl").exists()


def test_non_finite_parameter_after_a_step_stops_and_resume_goes_on_from_the_last_finite_checkpoint(
        tmp_path, data, monkeypatch):
    """Task 2's first optimizer step leaves head.bias Inf (the loss of that step is still finite): the run
    stops naming it, task 1's checkpoint and metrics row stay, all finite, and --resume trains task 2."""
    optimizers, step = set(), torch.optim.Adam.step

    def diverging_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        optimizers.add(id(self))
        if len(optimizers) == 2:  # the optimizer of task 2
            with torch.no_grad():
                self.param_groups[0]["params"][-1].fill_(math.inf)
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", diverging_step)
    with pytest.raises(InputError) as e:
        train(train_options(tmp_path, data), TINY_ARCH, log=lambda _: None)
    last = checkpoint_path(tmp_path / "out" / "checkpoint", 1)
    assert str(e.value).startswith(
        "training stopped at task 2, epoch 1, step 1 of 2: NaN or Inf in head.bias; nothing of task 2 was written and "
        f"{last} is the last checkpoint, all finite: lower --lr (--lr 0.3 is 0.0093")
    assert str(e.value).endswith("after scaling by batch size / 256) and run train --resume to continue from it")
    assert list(list_checkpoints(tmp_path / "out" / "checkpoint")) == [1]
    assert [r["task"] for r in finite_rows(tmp_path / "out" / "metrics.jsonl")] == [1]
    model_from_checkpoint(last)  # finite, loadable

    monkeypatch.undo()
    logged = []
    result = train(train_options(tmp_path, data, resume=True), TINY_ARCH, log=logged.append)
    assert logged[0].startswith("resuming after task 1") and len(result.rows) == 2
    assert [r["task"] for r in finite_rows(tmp_path / "out" / "metrics.jsonl")] == [1, 2]
    model_from_checkpoint(checkpoint_path(tmp_path / "out" / "checkpoint", 2))


def test_metrics_are_never_written_with_a_bare_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(ValueError):
        _write_metrics(path, [{"task": 1, "epoch_losses": [math.nan]}])
    assert not path.exists()
