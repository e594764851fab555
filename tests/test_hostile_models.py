"""Hostile model files (issue 21, "Hostile input on the new surfaces"): a broken contract, bundle metadata
nested 200,000 deep, resource bombs in the graph or in its metadata. Each ends in one ``error:`` line with
exit code 2 (CLI) or one InputError (library), quickly and in bounded memory: the commands run in child
processes with a timeout and an address-space limit."""
import resource
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dpcompat.common.errors import InputError
from dpcompat.infer.runtime.bundle import read_props
from dpcompat.infer.runtime.graph import check_graph
from dpcompat.infer.runtime.protobuf import MODEL_PROPS, length_header, varint
from dpcompat.infer.runtime.session import create_session, model_info, run_model
from onnx_fixtures import ROOT, write_data, write_model

EMBED_ARGS = ("--store", "s", "--provider", "cpu", "--quiet", "--dataset", "cifar10:test", "--data-path")
MEMORY = 6 * 2**30  # address space of every child process: far below any bomb here


def cli(*args, cwd, timeout=180, memory=MEMORY) -> subprocess.CompletedProcess:
    """``python cli.py ARGS`` in a child process limited to ``memory`` bytes of address space."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit)


def assert_one_line(r: subprocess.CompletedProcess, *expected: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr[-2000:]
    for text in expected:
        assert text in r.stderr, (text, r.stderr)


def edited(path, change):
    """The tiny export at ``path`` after ``change(model)`` (an onnx ModelProto), saved in place."""
    model = onnx.load(path)
    change(model)
    onnx.save(model, path)
    return path


def rename_prompt_index(model):
    for node in model.graph.node:
        node.output[:] = ["idx" if o == "prompt_index" else o for o in node.output]
    model.graph.output[1].name = "idx"


def drop_prompt_index(model):
    del model.graph.output[1]


def extra_input(model):
    model.graph.input.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]))


def _add_to_embedding(model, nodes, scalar: str, initializers=()):
    """Append ``nodes`` computing the float scalar ``scalar`` and add it to the embedding."""
    for node in model.graph.node:
        node.output[:] = ["raw_embedding" if o == "embedding" else o for o in node.output]
    model.graph.node.extend([*nodes, helper.make_node("Add", ["raw_embedding", scalar], ["embedding"])])
    model.graph.initializer.extend(initializers)


def expand_64_gib(model):
    """ConstantOfShape [8, 2^31] float32 (64 GiB) summed to a scalar at run time."""
    shape = numpy_helper.from_array(np.array([8, 2**31], np.int64), "bomb_shape")
    _add_to_embedding(model, [
        helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"],
                         value=helper.make_tensor("one", TensorProto.FLOAT, [1], [0.0])),
        helper.make_node("ReduceSum", ["bomb"], ["bomb_sum"], keepdims=0)], "bomb_sum", [shape])


def loop_2_62(model):
    """A Loop of 2^62 iterations carrying a scalar that is added to the embedding."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])])
    _add_to_embedding(model, [helper.make_node("Loop", ["trips", "go", "start"], ["looped"], body=body)], "looped",
                      [numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
                       numpy_helper.from_array(np.array(True), "go"),
                       numpy_helper.from_array(np.array(0.0, np.float32), "start")])


@pytest.fixture
def data(tmp_path):
    return write_data(tmp_path / "data", test_per_class=1)


@pytest.mark.parametrize("change, expected", [
    (rename_prompt_index, "output 'prompt_index' is missing"),
    (drop_prompt_index, "output 'prompt_index' is missing"),
    (extra_input, "requires input(s) 'x' besides 'image'"),
])
def test_a_broken_contract_is_one_line_in_embed_verify_and_bench(tmp_path, data, change, expected):
    model = edited(write_model(tmp_path / "task1.onnx"), change)
    with pytest.raises(InputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        model_info(create_session(model, "cpu")[0], model)
    for args in (["embed", "--model", model, *EMBED_ARGS, data],
                 ["verify", "--onnx", model, "--random", "2"],
                 ["bench", "embed", "--model", model, "--batch-sizes", "1", "--repeats", "1", "--photos", "0"]):
        assert_one_line(cli(*args, cwd=tmp_path), f"{model}: ", expected)


def test_bundle_metadata_nested_200000_deep_is_one_line_in_verify_and_evaluate(tmp_path, data):
    model = edited(write_model(tmp_path / "tasks.onnx"),
                   lambda m: helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props},
                                                        "bundle_tasks": "[" * 200_000 + "]" * 200_000}))
    assert_one_line(cli("verify", "--onnx", model, "--random", "2", cwd=tmp_path),
                    "malformed bundle_tasks metadata (nested too deeply)")
    assert_one_line(cli("evaluate", "--models", model, "--query", "cifar10:test", "--data-path", data, cwd=tmp_path),
                    "malformed bundle_tasks metadata (nested too deeply)")


def test_a_graph_that_expands_to_64_gib_is_one_line(tmp_path, data):
    model = edited(write_model(tmp_path / "task1.onnx"), expand_64_gib)
    session, _ = create_session(model, "cpu")
    with pytest.raises(InputError, match="asks for 64.0 GiB more memory than the limit"):
        run_model(session, np.zeros((1, 3, 32, 32), np.float32))
    start = time.perf_counter()
    r = cli("embed", "--model", model, *EMBED_ARGS, data,
            "--workers", "0", cwd=tmp_path)
    assert_one_line(r, f"{model}: running it asks for 64.0 GiB")
    assert time.perf_counter() - start < 60
    assert not [p for p in (tmp_path / "s").rglob("*.partial")]  # nothing written, nothing left


def test_a_loop_of_2_62_iterations_is_refused_before_a_session_opens(tmp_path, data):
    model = edited(write_model(tmp_path / "task1.onnx"), loop_2_62)
    with pytest.raises(InputError, match="holds a 'Loop' node .*refused"):
        check_graph(model)
    r = cli("embed", "--model", model, *EMBED_ARGS, data,
            cwd=tmp_path, timeout=60)
    assert_one_line(r, f"{model}: its graph holds a 'Loop' node")


def test_subgraphs_in_local_functions_and_attributes_are_refused(tmp_path):
    def in_function(model):
        body = helper.make_graph([helper.make_node("Identity", ["a"], ["b"])], "g",
                                 [helper.make_tensor_value_info("a", TensorProto.FLOAT, [])],
                                 [helper.make_tensor_value_info("b", TensorProto.FLOAT, [])])
        fn = helper.make_function("local", "Spin", ["x"], ["y"],
                                  [helper.make_node("If", ["x"], ["y"], then_branch=body, else_branch=body)],
                                  [helper.make_opsetid("", 17)])
        model.functions.append(fn)
    model = edited(write_model(tmp_path / "f.onnx"), in_function)
    with pytest.raises(InputError, match="holds a 'If' node"):
        check_graph(model)
    check_graph(write_model(tmp_path / "plain.onnx"))  # the contract's own graph passes


def _with_props_field(model_bytes: bytes, declared: int, stored: bytes) -> bytes:
    """``model_bytes`` with one more metadata_props field declaring ``declared`` bytes and holding ``stored``."""
    return model_bytes + length_header(MODEL_PROPS, declared) + stored


def test_a_metadata_field_declaring_2_50_bytes_is_refused_unread(tmp_path, data):
    good = write_model(tmp_path / "good.onnx").read_bytes()
    model = tmp_path / "task1.onnx"
    model.write_bytes(_with_props_field(good, 2**50, b"\x0a\x01k\x12\x01v"))
    with pytest.raises(InputError, match="not an ONNX file"):
        read_props(model)
    r = cli("embed", "--model", model, *EMBED_ARGS, data,
            cwd=tmp_path, timeout=60)
    assert_one_line(r, f"{model}: not an ONNX file")
    big = tmp_path / "big.onnx"  # declared lengths that are all there, but more metadata than any export holds
    field = b"\x0a\x01k\x12" + varint(17 * 2**20) + b"v" * 17 * 2**20
    big.write_bytes(_with_props_field(good, len(field), field))
    with pytest.raises(InputError, match="metadata declares more than 16,777,216 bytes"):
        read_props(big)


@pytest.mark.parametrize("size", [100_000, 4_000_000])
def test_varints_are_capped_so_a_file_of_ff_bytes_is_refused_at_once(tmp_path, size):
    path = tmp_path / "ff.onnx"
    path.write_bytes(b"\xff" * size)
    start = time.perf_counter()
    for read in (read_props, check_graph):
        with pytest.raises(InputError, match="not an ONNX file"):
            read(path)
    assert time.perf_counter() - start < 1.0  # quadratic decoding took 1.7 s at 100 KB, hours at a few MB
    path.write_bytes(b"\x08" + b"\xff" * size)  # a valid tag, then an endless varint value
    with pytest.raises(InputError, match="not an ONNX file"):
        read_props(path)
