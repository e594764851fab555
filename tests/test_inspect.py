"""`inspect` of a tiny checkpoint (torchinfo) and a tiny export (torch-free): counts against direct sums."""
import json
import math

import pytest

from dpcompat.export.onnx_export import export_task
from dpcompat.export.summary import inspect_checkpoint
from dpcompat.infer.runtime.summary import dualprompt_flops
from dpcompat.infer.runtime.summary import format_inspection, inspect_onnx, parameter_shapes
from dpcompat.train.checkpoint import checkpoint_path, config_to_args, save_checkpoint
from onnx_fixtures import run_cli, write_model
from test_evaluate_cli import BLOCK_TORCH
from train_fixtures import tiny_model

ARCH = dict(depth=3, g_prompt_layers=(0,), e_prompt_layers=(1, 2), pool_size=6, prompt_length=3, g_prompt_length=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inspect")
    model = tiny_model(0, **ARCH)
    ckpt = save_checkpoint(checkpoint_path(folder, 1), model, None, 4, config_to_args(model.cfg))
    onnx_path = export_task(ckpt, folder / "task1.onnx", pool="mean").path
    return model, ckpt, onnx_path


def direct_counts(model):
    """Parameter counts summed straight from the tensors, split as DualPrompt trains them."""
    model.freeze_backbone()
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.numel() for n, p in model.named_parameters() if not p.requires_grad}
    head = sum(n for k, n in trained.items() if k.startswith("head."))
    return {"backbone": sum(frozen.values()), "prompt": sum(trained.values()) - head, "head": head,
            "trainable": sum(trained.values()), "frozen": sum(frozen.values()),
            "total": sum(trained.values()) + sum(frozen.values())}


def test_layout_restated_from_the_architecture_equals_the_model(files):
    model = files[0]
    assert parameter_shapes(model.cfg.asdict()) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_checkpoint_report(files):
    model, ckpt, _ = files
    report = inspect_checkpoint(ckpt)
    assert report["parameters"] == direct_counts(model)
    head = next(r for r in report["layers"] if r["layer"] == "head")
    assert head["params"] == model.head.weight.numel() + model.head.bias.numel() and head["trainable"] == "True"
    blocks = [r for r in report["layers"] if r["layer"] == "blocks.0"]
    assert len(blocks) == 2 and [b["repeated_call"] for b in blocks] == [False, True]  # query pass, prompted pass
    assert blocks[0]["trainable"] == "False" and blocks[0]["output_shape"] == [1, 17, 64]
    assert report["flops_per_image"]["cls"] == dualprompt_flops(model.cfg.asdict(), "cls")
    assert report["checkpoint"]["epoch"] == 4 and report["checkpoint"]["args"]["size"] == 6
    assert "Total params: " + f"{report['parameters']['total']:,}" in report["table"]
    assert "mult-adds" not in report["table"]
    json.dumps(report)
    assert "trainable 5,898 of" in format_inspection(report)


def test_onnx_report(files):
    model, _, onnx_path = files
    report = inspect_onnx(onnx_path)
    want = direct_counts(model)
    head = want["head"]
    assert report["parameters"] == {**want, "head": 0, "trainable": want["trainable"] - head,
                                    "total": want["total"] - head}
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["e_prompt"]["params"] == model.e_prompt.prompt.numel() + model.e_prompt.prompt_key.numel()
    assert rows["blocks.2"]["output_shape"] == [1, 17, 64]  # mean pool: every token of the last block
    assert sum(r["params"] for r in report["layers"]) == report["parameters"]["total"]
    assert report["flops_per_image"] == {"mean": dualprompt_flops(model.cfg.asdict(), "mean")}
    io = {(t["role"], t["name"]) for t in report["inputs_outputs"]}
    assert io == {("input", "image"), ("output", "embedding"), ("output", "prompt_index")}
    assert report["metadata"]["pool"] == "mean" and report["initializers"]["tensors"] > 0
    assert math.isclose(report["initializers"]["elements"], report["parameters"]["total"], rel_tol=0.05)


def test_cli_onnx_without_torch_and_json_checkpoint(files, tmp_path):
    _, ckpt, onnx_path = files
    (tmp_path / "sitecustomize.py").write_text(BLOCK_TORCH)
    text = run_cli("inspect", str(onnx_path), cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert text.returncode == 0, text.stderr
    assert "input  image: tensor(float)" in text.stdout and "prompts 5,248" in text.stdout
    as_json = run_cli("inspect", str(ckpt), "--json", "--depth", "1", cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["parameters"]["prompt"] == 5248
    write_model(tmp_path / "old.onnx")  # no architecture in its metadata
    for bad, message in (("none.onnx", "no such file"), ("old.onnx", "no architecture")):
        r = run_cli("inspect", bad, cwd=tmp_path)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
