"""GPU options without a GPU: provider parsing, device-id checks, TensorRT options, and the run path
a CUDA session takes (IO binding on the chosen device, the batch staged in pinned memory), with the
GPU parts replaced by fakes."""
import ctypes

import numpy as np
import pytest

from dpcompat.common.contract import EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT, parse_provider
from dpcompat.common.errors import InputError
from dpcompat.infer.runtime import device, session as sess
from dpcompat.infer.runtime.device import provider_chain
from dpcompat.infer.runtime.limits import MAX_SESSION_MEMORY
from dpcompat.infer.runtime.options import TensorRTOptions
from onnx_fixtures import run_cli, write_model

LIMIT = str(MAX_SESSION_MEMORY)  # the CUDA arena cap every session gets (infer/runtime/limits.py)


@pytest.mark.parametrize("value, parsed", [("cpu", ("cpu", None)), ("auto", ("auto", None)),
                                           ("cuda", ("cuda", None)), ("cuda:1", ("cuda", 1)),
                                           ("tensorrt:0", ("tensorrt", 0))])
def test_provider_values(value, parsed):
    assert parse_provider(value) == parsed


@pytest.mark.parametrize("value", ["rocm", "cuda:", "cuda:-1", "cuda:x", "cpu:0", "auto:1", "cuda:1:2"])
def test_bad_provider_values(value):
    with pytest.raises(InputError, match=f"--provider '{value}'"):
        parse_provider(value)


def test_bad_provider_is_one_line_on_the_command_line(tmp_path):
    r = run_cli("embed", "--model", "m.onnx", "--dataset", "cifar10:test", "--provider", "cuda:x", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: --provider 'cuda:x'") and len(r.stderr.splitlines()) == 1


def test_device_id_beyond_the_driver_gpus_is_refused(tmp_path, monkeypatch):
    path = write_model(tmp_path / "m.onnx")
    monkeypatch.setattr(sess, "gpu_problem", lambda provider: None)
    monkeypatch.setattr(sess, "list_gpus", lambda: ([sess.Gpu(0, "A", 1), sess.Gpu(1, "B", 1)], None))
    with pytest.raises(InputError, match=r"--provider cuda:2: no GPU 2; the driver reports 2 \(indices 0 to 1"):
        sess.create_session(path, "cuda:2")


def test_chosen_device_reaches_every_gpu_provider(tmp_path, monkeypatch):
    path = write_model(tmp_path / "m.onnx")
    seen = []

    class FakeSession:
        def __init__(self, source, options, providers):
            seen.append(providers)

        def get_providers(self):
            return [seen[-1][0][0]]

    monkeypatch.setattr(sess, "gpu_problem", lambda provider: None)
    monkeypatch.setattr(sess, "list_gpus", lambda: ([sess.Gpu(i, "G", 1) for i in range(4)], None))
    monkeypatch.setattr(sess.ort, "InferenceSession", FakeSession)
    assert sess.create_session(path, "cuda:3")[1] == "cuda"
    trt = TensorRTOptions(fp16=True, cache=tmp_path / "engines", workspace_gib=2)
    assert sess.create_session(path, "tensorrt:1", trt=trt)[1] == "tensorrt"
    assert seen[0] == [("CUDAExecutionProvider", {"device_id": "3", "gpu_mem_limit": LIMIT}), "CPUExecutionProvider"]
    (name, options), cuda, cpu = seen[1]
    assert name == "TensorrtExecutionProvider" and cuda == ("CUDAExecutionProvider", {"device_id": "1",
                                                                                     "gpu_mem_limit": LIMIT})
    assert options == {"device_id": "1", "trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                       "trt_engine_cache_path": str((tmp_path / "engines").resolve()),
                       "trt_timing_cache_enable": "True", "trt_timing_cache_path": str((tmp_path / "engines").resolve()),
                       "trt_max_workspace_size": str(2 * 2 ** 30)}
    assert (tmp_path / "engines").is_dir()


def test_tensorrt_options_are_checked(tmp_path):
    path = write_model(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="need --provider tensorrt, not cpu"):
        sess.create_session(path, "cpu", trt=TensorRTOptions(fp16=True))
    with pytest.raises(InputError, match="--trt-workspace 0"):
        sess.create_session(path, "tensorrt", trt=TensorRTOptions(workspace_gib=0))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--trt-cache .*file/engines: cannot make the folder"):
        sess.create_session(path, "tensorrt", trt=TensorRTOptions(cache=tmp_path / "file" / "engines"))
    assert provider_chain("cuda", 0, TensorRTOptions()) == [
        ("CUDAExecutionProvider", {"device_id": "0", "gpu_mem_limit": LIMIT}), "CPUExecutionProvider"]


class FakeBinding:
    """Records what is bound; 'runs' the model on the bytes at the bound input address."""

    def __init__(self, model):
        self.model, self.inputs, self.outputs, self.result = model, [], [], None

    def bind_input(self, name, device_type, device_id, dtype, shape, pointer):
        self.inputs.append((name, device_type, device_id, shape))
        size = int(np.prod(shape)) * 4
        self.staged = np.frombuffer((ctypes.c_byte * size).from_address(pointer), np.float32).reshape(shape).copy()

    def bind_ortvalue_input(self, name, value):
        self.inputs.append((name, "ortvalue"))
        self.staged = value

    def bind_output(self, name, device_type, device_id):
        self.outputs.append((name, device_type, device_id))

    def copy_outputs_to_cpu(self):
        return self.model(self.staged)


class FakeCudaSession:
    def __init__(self, device_id):
        self.device_id, self.bindings = device_id, []

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_provider_options(self):
        return {"CUDAExecutionProvider": {"device_id": str(self.device_id)}}

    def io_binding(self):
        self.bindings.append(FakeBinding(lambda x: [x.reshape(len(x), -1).sum(1), np.arange(len(x))]))
        return self.bindings[-1]

    def run_with_iobinding(self, binding):
        pass


def test_cuda_runs_bind_on_the_chosen_device_from_pinned_memory(monkeypatch):
    allocated = []

    def fake_pinned(shape, dtype=np.float32):  # ordinary memory standing in for cudaHostAlloc's
        allocated.append(tuple(shape))
        return np.empty(shape, dtype)

    monkeypatch.setattr(device, "pinned_array", fake_pinned)
    s = FakeCudaSession(device_id=2)
    rng = np.random.default_rng(0)
    for n in (4, 3, 6):
        x = rng.random((n, 3, 8, 8), dtype=np.float32)
        out = sess.run_model(s, x)
        np.testing.assert_array_equal(out[EMBEDDING_OUTPUT], x.reshape(n, -1).sum(1))
        b = s.bindings[-1]
        assert b.inputs == [("image", "cpu", 0, [n, 3, 8, 8])]  # host (pinned) memory; onnxruntime copies it
        assert b.outputs == [(EMBEDDING_OUTPUT, "cuda", 2), (PROMPT_INDEX_OUTPUT, "cuda", 2)]
    assert allocated == [(4, 3, 8, 8), (6, 3, 8, 8)]  # grown only when a larger batch comes


def test_without_a_cuda_runtime_the_batch_is_copied_to_the_device(monkeypatch):
    monkeypatch.setattr(device, "_cudart", lambda: None)
    copies = []
    monkeypatch.setattr(device.ort.OrtValue, "ortvalue_from_numpy",
                        lambda x, kind, device_id: copies.append((kind, device_id)) or x)
    s = FakeCudaSession(device_id=1)
    x = np.ones((2, 3, 4, 4), np.float32)
    _, pinned = device.run_bound(s, x, (EMBEDDING_OUTPUT,))
    assert not pinned and copies == [("cuda", 1)] and s.bindings[-1].inputs == [("image", "ortvalue")]
