"""A tiny stand-in export with the full dpcompat contract (no torch): for benchmarks of the embedding
loop and the store, and for tests, where a real DualPrompt graph would only cost time.

image [N, 3, S, S] -> (S/4 x S/4) average pool -> flatten -> matmul -> ``embedding`` [N, D];
``prompt_index`` = argmax of another projection.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT
from ..infer.runtime.metadata import ModelInfo

POOL = 4


def write_tiny_model(path: Path, info: ModelInfo, *, seed: int = 0, poison: Optional[float] = None) -> Path:
    """Write the tiny graph for ``info`` (its input size, a multiple of 4, and embedding dimension) with
    weights from ``seed``; ``poison`` (nan, inf) goes into one weight, so every embedding carries it."""
    rng = np.random.default_rng(seed)
    size, dim, kernel = info.input_size, info.embedding_dim, info.input_size // 4
    features = 3 * 4 * 4
    weight = rng.standard_normal((features, dim)).astype(np.float32)
    if poison is not None:
        weight[0, 0] = poison
    keys = rng.standard_normal((features, POOL)).astype(np.float32)
    nodes = [helper.make_node("AveragePool", [INPUT_NAME], ["pooled"], kernel_shape=[kernel, kernel],
                              strides=[kernel, kernel]),
             helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "weight"], [EMBEDDING_OUTPUT]),
             helper.make_node("MatMul", ["flat", "keys"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], [PROMPT_INDEX_OUTPUT], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info(EMBEDDING_OUTPUT, TensorProto.FLOAT, ["N", dim]),
         helper.make_tensor_value_info(PROMPT_INDEX_OUTPUT, TensorProto.INT64, ["N"])],
        [numpy_helper.from_array(weight, "weight"), numpy_helper.from_array(keys, "keys")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, info.to_props())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path
