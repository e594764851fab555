"""Provider selection (never a silent CPU fallback), the model contract, the run function, doctor."""
import dataclasses

import numpy as np
import onnx
import pytest

from dpcompat.infer.runtime import session as sess
from dpcompat.common.errors import InputError
from dpcompat.common.contract import EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT
from dpcompat.infer.runtime.session import ProviderUnavailable, create_session, doctor_report, format_doctor, model_info, run_model
from onnx_fixtures import PREPROCESSING, model_info as fixture_info, write_model

CUDA_WORKS = sess.gpu_problem("cuda") is None
cpu_only = pytest.mark.skipif(CUDA_WORKS, reason="CUDA works on this host")


def test_cpu_session_runs_the_contract(tmp_path):
    path = write_model(tmp_path / "task1.onnx", dim=12)
    session, used = create_session(path, "cpu")
    assert used == "cpu" and session.get_providers() == ["CPUExecutionProvider"]
    info = model_info(session, path)
    assert info.embedding_dim == 12 and info.preprocessing == PREPROCESSING
    out = run_model(session, np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32))
    assert out[EMBEDDING_OUTPUT].shape == (3, 12) and out[EMBEDDING_OUTPUT].dtype == np.float32
    assert out[PROMPT_INDEX_OUTPUT].shape == (3,) and out[PROMPT_INDEX_OUTPUT].dtype == np.int64


@cpu_only
@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_explicit_gpu_provider_fails_clearly_on_a_cpu_host(tmp_path, provider):
    path = write_model(tmp_path / "task1.onnx")
    with pytest.raises(ProviderUnavailable) as e:
        create_session(path, provider)
    message = str(e.value)
    assert message.startswith(f"--provider {provider}: ")
    assert any(why in message for why in ("no NVIDIA driver", "no usable GPU", "reports no GPU", "missing", "no CUDA"))
    assert "\n" not in message
    assert isinstance(e.value, InputError)  # so the command line prints one line and exits 2


@cpu_only
def test_auto_says_it_falls_back_to_cpu(tmp_path):
    path = write_model(tmp_path / "task1.onnx")
    said = []
    session, used = create_session(path, "auto", warn=said.append)
    assert used == "cpu" and session.get_providers() == ["CPUExecutionProvider"]
    assert len(said) == 1 and said[0].startswith("CUDA unavailable (") and said[0].endswith("running on CPU")


@pytest.mark.skipif(not CUDA_WORKS, reason="needs a working CUDA provider")
def test_cuda_session_uses_io_binding_and_matches_cpu(tmp_path):
    path = write_model(tmp_path / "task1.onnx")
    x = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    gpu, used = create_session(path, "cuda")
    assert used == "cuda" and gpu.get_providers()[0] == "CUDAExecutionProvider"
    cpu, _ = create_session(path, "cpu")
    np.testing.assert_allclose(run_model(gpu, x)[EMBEDDING_OUTPUT], run_model(cpu, x)[EMBEDDING_OUTPUT], atol=1e-4)


def test_unknown_provider_and_bad_files(tmp_path):
    with pytest.raises(InputError, match="--provider 'rocm'"):
        create_session(tmp_path / "x.onnx", "rocm")
    with pytest.raises(InputError, match="no such ONNX file"):
        create_session(tmp_path / "missing.onnx", "cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.onnx: not an ONNX file"):
        create_session(tmp_path / "junk.onnx", "cpu")


def test_model_contract_is_checked(tmp_path):
    path = write_model(tmp_path / "plain.onnx")
    model = onnx.load(path)
    del model.metadata_props[:]
    onnx.save(model, path)
    session, _ = create_session(path, "cpu")
    with pytest.raises(InputError, match="not a dpcompat export"):
        model_info(session, path)
    bad = dataclasses.replace(fixture_info(), input_size=64)
    path = write_model(tmp_path / "bad.onnx", info=bad)
    with pytest.raises(InputError, match="preprocessing crop 32 differs from input_size 64"):
        model_info(create_session(path, "cpu")[0], path)


def test_probe_model_is_valid_onnx_and_doctor_reports_every_provider(monkeypatch):
    onnx.checker.check_model(onnx.load_from_string(sess._PROBE_MODEL))
    # the torch/torchvision child process is tested in test_doctor.py
    monkeypatch.setattr(sess, "torch_pairing", lambda packages: {"status": "torch absent", "ok": None, "problem": None})
    report = doctor_report()
    assert report["onnxruntime"] and report["python"]
    assert report["providers"]["CPUExecutionProvider"]["works"] is True
    assert set(report["providers"]) == {"CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"}
    cuda = report["providers"]["CUDAExecutionProvider"]
    assert cuda["works"] == CUDA_WORKS and (cuda["problem"] is None) == CUDA_WORKS
    text = format_doctor(report)
    assert "CPUExecutionProvider" in text and "works" in text and "gpu" in text


@pytest.mark.parametrize("cuda, cudnn", [(12, 9), (13, 9)])
def test_gpu_requirements_are_read_from_the_installed_wheel(monkeypatch, cuda, cudnn):
    declared = ["numpy>=1.21.6", f'nvidia-cuda-runtime~={cuda}.0; extra == "cuda"',
                f'nvidia-cufft~=11.0; extra == "cuda"', f'nvidia-cudnn-cu{cuda}~={cudnn}.0; extra == "cudnn"']
    monkeypatch.setattr(sess.importlib.metadata, "requires", lambda dist: declared)
    monkeypatch.setattr(sess.importlib.metadata, "version", lambda dist: "9.9.9")
    req = sess.gpu_runtime_requirements()
    assert (req["cuda"], req["cudnn"], req["cudnn_for_cuda"]) == (cuda, cudnn, cuda)
    line = sess.describe_gpu_requirements(req)
    assert f"CUDA {cuda} and cuDNN {cudnn} for CUDA {cuda}" in line and "[cuda,cudnn]" in line
    assert req["min_driver"] == {12: "525.60.13", 13: "580.65.06"}[cuda]


def test_gpu_requirements_without_cuda_runtime(monkeypatch):
    monkeypatch.setattr(sess.importlib.metadata, "requires", lambda dist: ["numpy"])
    assert sess.gpu_runtime_requirements() is None
    assert "no onnxruntime-gpu" in sess.describe_gpu_requirements(None)


def test_threads_default_to_the_affinity_mask(tmp_path, monkeypatch):
    path = write_model(tmp_path / "m.onnx", task=1, dim=4)
    seen = []
    real = sess.ort.InferenceSession

    def spy(source, options, providers):
        seen.append(options.intra_op_num_threads)
        return real(source, options, providers=providers)

    monkeypatch.setattr(sess.ort, "InferenceSession", spy)
    monkeypatch.setattr(sess.os, "sched_getaffinity", lambda pid: {0})
    create_session(path, "cpu")
    create_session(path, "cpu", threads=3)
    assert seen == [1, 3]
    with pytest.raises(InputError, match="--threads 0"):
        create_session(path, "cpu", threads=0)
