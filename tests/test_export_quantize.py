"""int8 static quantisation: QDQ graph, metadata, closeness to fp32 measured independently, CLI."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from dpcompat.cli import cli
from dpcompat.common.errors import InputError
from dpcompat.export.quantize import quantize_int8
from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.data.preprocess import preprocess_batch
from dpcompat.train.checkpoint import checkpoint_path, config_to_args, save_checkpoint
from onnx_fixtures import PREPROCESSING, write_data, write_model
from train_fixtures import tiny_model


def outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})


def test_quantized_file_is_qdq_int8_and_close_to_fp32(tmp_path):
    data = write_data(tmp_path / "data", test_per_class=6)
    dataset = open_dataset("cifar10:test", data)
    fp32 = write_model(tmp_path / "task1.onnx", dim=16)
    r = quantize_int8(fp32, tmp_path / "int8" / "task1.onnx", dataset, count=20)
    proto = onnx.load(str(r.path))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights, "weights stored as int8"
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["precision"] == "int8" and props["task"] == "1"
    assert r.images == 20 and r.file_bytes == r.path.stat().st_size
    held_out = preprocess_batch([dataset.image(i) for i in range(1, 60, 3)], PREPROCESSING)
    a, b = outputs(fp32, held_out)[0], outputs(r.path, held_out)[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99
    assert 0.99 < r.mean_cosine <= 1.0 + 1e-6 and r.min_cosine <= r.mean_cosine
    assert not [p for p in (tmp_path / "int8").iterdir() if p.name.startswith(".")]
    stored = embed_dataset(r.path, dataset, tmp_path / "store")  # the int8 file passes the contract checks
    assert stored.set.manifest.model.precision == "int8"
    with pytest.raises(InputError, match="starts from an fp32 export"):
        quantize_int8(r.path, tmp_path / "again.onnx", dataset)


def test_cli_exports_int8_from_a_checkpoint(tmp_path):
    ckpt = tmp_path / "checkpoint"
    model = tiny_model(0)
    save_checkpoint(checkpoint_path(ckpt, 1), model, None, 0, config_to_args(model.cfg))
    write_data(tmp_path / "data", test_per_class=2)
    run = CliRunner().invoke
    r = run(cli, ["export", "--task", "1", "--checkpoint-dir", str(ckpt), "--output-dir", str(tmp_path / "q"),
                  "--precision", "int8", "--calibration", "cifar10:test", "--calibration-count", "8",
                  "--data-path", str(tmp_path / "data")])
    assert r.exit_code == 0, r.output
    assert "int8" in r.output and "same e-prompt" in r.output
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["task1.onnx"]
    x = torch.rand(4, 3, 32, 32).numpy()
    with torch.no_grad():
        want = model.embed(torch.from_numpy(x), "per-sample", "cls")[0].numpy()
    got = outputs(tmp_path / "q" / "task1.onnx", x)[0]
    cos = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cos.min() > 0.95
    r = run(cli, ["export", "--task", "1", "--checkpoint-dir", str(ckpt), "--precision", "int8"])
    assert r.exit_code == 2 and "--precision int8 needs --calibration" in r.output
