"""Tiny ONNX exports with the full dpcompat contract, small CIFAR-layout data sets and stores, for the
infer/ and evaluate/ tests."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from dpcompat.common.cifar import write_cifar
from dpcompat.common.contract import FORMAT_VERSION
from dpcompat.export.tiny import write_tiny_model
from dpcompat.infer.runtime.metadata import ModelInfo, Preprocessing
from dpcompat.infer.data.datasets import dataset_location
from dpcompat.infer.store.manifest import DataRecord, Manifest, ModelRecord
from dpcompat.infer.store.shards import write_set

ROOT = Path(__file__).resolve().parents[1]
INPUT_SIZE = 32
PREPROCESSING = Preprocessing(resize=36, crop=INPUT_SIZE)


def model_info(task: int = 1, dim: int = 16, preprocessing: Preprocessing = PREPROCESSING) -> ModelInfo:
    return ModelInfo(format_version=FORMAT_VERSION, task=task, checkpoint=f"task{task}_checkpoint.pth",
                     checkpoint_sha256="0" * 64, model="tiny-test", embedding_dim=dim, input_size=preprocessing.crop,
                     top_k=1, pool="cls", selection="per-sample", precision="fp32", preprocessing=preprocessing,
                     versions={"onnx": onnx.__version__})


def write_model(path: Path, task: int = 1, dim: int = 16, seed: Optional[int] = None, poison: Optional[float] = None,
                info: Optional[ModelInfo] = None) -> Path:
    """The tiny export of :mod:`dpcompat.export.tiny` at ``path``; ``poison`` (nan, inf) in one weight."""
    return write_tiny_model(path, info or model_info(task, dim), seed=task if seed is None else seed, poison=poison)


def write_bundle(path: Path, tasks: tuple[int, ...] = (1, 2), dim: int = 16, seed: int = 0) -> Path:
    """A tiny bundle with the bundle contract (``embedding`` [N, T, D], ``prompt_index`` [N, T],
    ``query`` [N, D]) of ``tasks``: the tiny model's 4 x 4 average pool, then one projection per output."""
    from onnx import TensorProto, helper, numpy_helper

    from dpcompat.common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT, QUERY_OUTPUT
    from dpcompat.infer.runtime.bundle import BundleInfo

    rng, t, features, pool = np.random.default_rng(seed), len(tasks), 3 * 4 * 4, 4
    weights = {"w": rng.standard_normal((features, t * dim)), "k": rng.standard_normal((features, t * pool)),
               "q": rng.standard_normal((features, dim))}
    shapes = {"e_shape": np.array([-1, t, dim]), "k_shape": np.array([-1, t, pool])}
    nodes = [helper.make_node("AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[INPUT_SIZE // 4] * 2,
                              strides=[INPUT_SIZE // 4] * 2),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["e"]),
             helper.make_node("Reshape", ["e", "e_shape"], [EMBEDDING_OUTPUT]),
             helper.make_node("MatMul", ["flat", "k"], ["s"]),
             helper.make_node("Reshape", ["s", "k_shape"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], [PROMPT_INDEX_OUTPUT], axis=2, keepdims=0),
             helper.make_node("MatMul", ["flat", "q"], [QUERY_OUTPUT])]
    graph = helper.make_graph(
        nodes, "tiny-bundle",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", t, dim]),
         helper.make_tensor_value_info(PROMPT_INDEX_OUTPUT, TensorProto.INT64, ["N", t]),
         helper.make_tensor_value_info(QUERY_OUTPUT, TensorProto.FLOAT, ["N", dim])],
        [numpy_helper.from_array(v.astype(np.float32), n) for n, v in weights.items()]
        + [numpy_helper.from_array(v.astype(np.int64), n) for n, v in shapes.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, BundleInfo(tuple(model_info(task, dim) for task in tasks)).to_props())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def write_data(root: Path, name: str = "cifar10", test_per_class: int = 4, classes: int = 10, seed: int = 0) -> Path:
    """A CIFAR-layout data set of random images under ``root``: ``test_per_class`` test images and
    two train images per class."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, per in (("train", 2), ("test", test_per_class)):
        labels = np.tile(np.arange(classes), per)
        splits[split] = (rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels)
    write_cifar(root, name, splits, [f"class{c}" for c in range(classes)])
    return root


def write_random_set(path: Path, model_id: str, n: int = 40, dim: int = 8, classes: int = 4, seed: int = 0,
                     spec: str = "cifar10:test", fingerprint: str = "f" * 64, labels: Optional[np.ndarray] = None,
                     preprocessing: Preprocessing = PREPROCESSING, shard_rows: int = 16, data_path: str = "data",
                     task: Optional[int] = None, precision: Optional[str] = None):
    """A stored set of random unit vectors, as ``embed`` would write it (3 shards by default); its
    model's task is ``task`` (default: ``seed``)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(n) % classes if labels is None else labels
    data = DataRecord(spec=spec, location=dataset_location(spec, data_path), name=spec.split(":")[0],
                      split=spec.split(":")[1], fingerprint=fingerprint, size=n)
    manifest = Manifest(model=ModelRecord(id=model_id, sha256="0" * 64, task=seed if task is None else task,
                                                precision=precision), dataset=data,
                        preprocessing=asdict(preprocessing))
    return write_set(path, x, np.asarray(labels, np.int64), manifest, shard_rows=shard_rows)


def leftovers(root: Path) -> list[Path]:
    """Hidden files and folders under ``root`` other than lock files (which stay by design)."""
    return [p for p in root.rglob(".*") if not p.name.endswith(".lock")]


def run_cli(*args: str, cwd: Path, env: Optional[dict] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` in a subprocess (as a user runs it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
