"""onnxruntime sessions on the execution provider asked for, never silently on another one.

onnxruntime quietly falls back to the CPU when the CUDA or TensorRT provider cannot load (missing
CUDA/cuDNN/TensorRT libraries, no driver, no GPU). Here an explicit ``cuda`` or ``tensorrt`` that does
not really run on the GPU is an error that says why, and ``auto`` says on stderr that it runs on CPU.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import io
import os
import platform
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnxruntime as ort

from ...common.errors import InputError, shown
from ...common.contract import BUNDLE_TASKS_KEY, EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT, parse_provider
from .device import ORT_PROVIDER, provider_chain, run_bound
from .graph import check_graph, check_inputs, check_outputs
from .limits import ORT_ERRORS, cap_cpu_memory, quiet_run, remember, run_failure
from .options import TensorRTOptions
from .metadata import ModelInfo
from .packages import format_packages, installed_packages, torch_pairing

_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# embedding = image + image for float32 [2], opset 13: the smallest model with our input/output names
# that every provider can take (made with onnx.helper; kept as bytes because production hosts have
# onnxruntime but not the onnx package).
_PROBE_MODEL = (b'\x08\x07\x12\x00:U\n\x1e\n\x05image\n\x05image\x12\tembedding"\x03Add\x12\x05probeZ\x13\n'
                b'\x05image\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x02b\x17\n\tembedding\x12\n\n\x08\x08\x01'
                b'\x12\x04\n\x02\x08\x02B\x04\n\x00\x10\r')


class ProviderUnavailable(InputError):
    """An explicitly requested GPU provider cannot run here; the message says why."""


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


@functools.lru_cache(maxsize=None)
def preload_gpu_libraries() -> str:
    """Load CUDA/cuDNN from the nvidia-* wheels (``onnxruntime.preload_dlls``, where it exists), once.

    Returns what it reported (it prints to stdout; that would mix with our output).
    """
    if not hasattr(ort, "preload_dlls"):
        return ""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ort.preload_dlls()
        except (OSError, RuntimeError) as e:
            print(e)
    return out.getvalue().strip()


def list_gpus() -> tuple[list[Gpu], Optional[str]]:
    """NVIDIA GPUs the driver reports (name, total memory), and why there are none when there are none."""
    library = "nvcuda.dll" if platform.system() == "Windows" else "libcuda.so.1"
    try:
        cuda = ctypes.CDLL(library)
    except OSError:
        return [], f"no NVIDIA driver ({library} not found)"
    rc = cuda.cuInit(0)
    if rc != 0:
        message = ctypes.c_char_p()
        cuda.cuGetErrorString(rc, ctypes.byref(message))
        reason = message.value.decode() if message.value else f"error {rc}"
        return [], f"the NVIDIA driver sees no usable GPU (cuInit: {reason})"
    count = ctypes.c_int()
    cuda.cuDeviceGetCount(ctypes.byref(count))
    gpus = []
    for i in range(count.value):
        device, name, memory = ctypes.c_int(), ctypes.create_string_buffer(256), ctypes.c_size_t()
        cuda.cuDeviceGet(ctypes.byref(device), i)
        cuda.cuDeviceGetName(name, len(name), device)
        cuda.cuDeviceTotalMem_v2(ctypes.byref(memory), device)
        gpus.append(Gpu(i, name.value.decode(errors="replace"), memory.value))
    return gpus, (None if gpus else "the NVIDIA driver reports no GPU")


def _provider_library_problem(provider: str) -> Optional[str]:
    """Why onnxruntime's shared library for ``provider`` cannot load (the first missing dependency)."""
    capi = Path(ort.__file__).parent / "capi"
    for name, kind in {"cuda": [("cuda", "CUDA/cuDNN")], "tensorrt": [("cuda", "CUDA/cuDNN"), ("tensorrt", "TensorRT")]}[provider]:
        candidates = sorted(capi.glob(f"*onnxruntime_providers_{name}.*"))
        if not candidates:
            return f"this onnxruntime build has no {name} provider library"
        try:
            ctypes.CDLL(str(candidates[0]))
        except OSError as e:
            if "cannot open shared object file" in str(e):
                return f"missing {kind} library {str(e).split(':')[0]} (needed by {candidates[0].name})"
            return f"{candidates[0].name} cannot load: {e}"
    return None


def gpu_problem(provider: str) -> Optional[str]:
    """Why ``provider`` ('cuda' or 'tensorrt') cannot run here, or None when it should.

    Checked before onnxruntime is asked, so its own fallback (and log noise) never happens unseen.
    """
    name = ORT_PROVIDER[provider]
    if name not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {name}; install onnxruntime-gpu"
    preload_gpu_libraries()
    problems = []
    gpus, no_gpu = list_gpus()
    if no_gpu:
        problems.append(no_gpu)
    library = _provider_library_problem(provider)
    if library:
        problems.append(library)
    return "; ".join(problems) or None


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which onnxruntime's default ignores)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _open(model: str | Path | bytes, providers: list, threads: Optional[int] = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: node-placement warnings are expected on GPUs
    options.intra_op_num_threads = threads or usable_cores()
    cap_cpu_memory(options)
    source = model if isinstance(model, bytes) else str(model)
    where = "model" if isinstance(model, bytes) else shown(model)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except ORT_ERRORS as e:
        raise InputError(f"{where}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
    remember(session, where)
    return session


def create_session(path: str | Path | bytes, provider: str = "auto",
                   warn: Callable[[str], None] = _warn, *,
                   threads: Optional[int] = None, trt: Optional[TensorRTOptions] = None,
                   option: str = "--provider") -> tuple[ort.InferenceSession, str]:
    """Open an ONNX model on ``provider`` ('auto', 'cuda', 'tensorrt' or 'cpu'; 'cuda:N' or
    'tensorrt:N' for the GPU with index N, default 0).

    Parameters
    ----------
    path : the .onnx file (or its bytes).
    provider : 'cpu'; 'cuda' or 'tensorrt' (error unless the session really runs there); 'auto'
        (CUDA when it initialises, otherwise CPU with a message through ``warn``).
    warn : where the CPU-fallback message of 'auto' goes (stderr by default).
    threads : onnxruntime's intra-op threads; default :func:`usable_cores` (onnxruntime's own default
        is every core of the machine, which oversubscribes a host shared through affinity masks).
    trt : TensorRT options (fp16, engine cache folder, workspace); only with 'tensorrt'.
    option : the command-line option that chose ``provider``, as error messages name it.

    Returns
    -------
    (session, provider_used) with provider_used one of 'cuda', 'tensorrt', 'cpu'.

    Raises
    ------
    InputError : missing or unreadable file, bad options, a GPU index the driver does not report;
    ProviderUnavailable : explicit GPU provider unusable.
    """
    name, device_id = parse_provider(provider)
    trt = trt or TensorRTOptions()
    if trt.given and name != "tensorrt":
        raise InputError(f"--trt-fp16, --trt-cache and --trt-workspace need --provider tensorrt, not {provider}")
    trt.check()
    if not isinstance(path, bytes) and not Path(path).is_file():
        raise InputError(f"{shown(path)}: no such ONNX file")
    check_graph(path)
    if threads is not None and threads < 1:
        raise InputError(f"--threads {threads}: must be at least 1")
    if name == "cpu":
        return _open(path, [ORT_PROVIDER["cpu"]], threads), "cpu"
    wanted = "cuda" if name == "auto" else name
    problem = gpu_problem(wanted)
    session = None
    if problem is None:
        _check_device_id(provider, device_id, option)
        session = _open(path, provider_chain(wanted, device_id or 0, trt), threads)
        if session.get_providers()[0] == ORT_PROVIDER[wanted]:
            return session, wanted
        problem = f"onnxruntime could not initialise {ORT_PROVIDER[wanted]} (its log above says why)"
    if name == "auto":
        warn(f"CUDA unavailable ({problem}); running on CPU")
        return session or _open(path, [ORT_PROVIDER["cpu"]], threads), "cpu"
    raise ProviderUnavailable(f"{option} {provider}: {problem}")


def check_provider(provider: str) -> None:
    """For an explicit ``cuda`` or ``tensorrt`` (with its device id): :class:`ProviderUnavailable` when it
    cannot run here, whether or not a session will open (a run whose sets are all reused from the
    store still refuses a GPU request this host cannot serve). 'auto' and 'cpu' always pass."""
    name, device_id = parse_provider(provider)
    if name in ("auto", "cpu"):
        return
    problem = gpu_problem(name)
    if problem:
        raise ProviderUnavailable(f"--provider {provider}: {problem}")
    _check_device_id(provider, device_id)


def _check_device_id(provider: str, device_id: Optional[int], option: str = "--provider") -> None:
    if device_id is None:
        return
    gpus, _ = list_gpus()
    if device_id >= len(gpus):
        raise InputError(f"{option} {provider}: no GPU {device_id}; the driver reports {len(gpus)} "
                         f"(indices 0 to {len(gpus) - 1}, as CUDA_VISIBLE_DEVICES leaves them)")


def model_info(session: ort.InferenceSession, path: str | Path) -> ModelInfo:
    """The export's metadata, after checking the session's inputs and outputs against the contract
    (:mod:`dpcompat.common.contract`) with the metadata's sizes."""
    check_inputs(session, path)
    props = session.get_modelmeta().custom_metadata_map
    if BUNDLE_TASKS_KEY in props:
        raise InputError(f"{shown(path)}: a bundle of several tasks, where one task's file is expected "
                         "(export one with: python cli.py export --task N)")
    info = ModelInfo.from_props(props, shown(path))
    check_outputs(session, path, info.top_k)
    embedding = next(o for o in session.get_outputs() if o.name == EMBEDDING_OUTPUT)
    info.check_graph(session.get_inputs()[0].shape, embedding.shape, shown(path))
    return info


def run_model(session: ort.InferenceSession, images: np.ndarray,
              outputs: Sequence[str] = (EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT)) -> dict[str, np.ndarray]:
    """Run a batch through an exported model.

    Parameters
    ----------
    session : from :func:`create_session`.
    images : float32 [N, 3, S, S], the output of :func:`infer.data.preprocess.preprocess_batch`.
    outputs : output names wanted.

    Returns
    -------
    ``{name: numpy array}`` in host memory. On CUDA or TensorRT the batch goes to the session's GPU
    once through IO binding (from pinned host memory where the CUDA runtime is found, see
    :func:`infer.runtime.device.run_bound`) and the outputs are bound on that device, copied back after the run.
    """
    images = np.ascontiguousarray(images, dtype=np.float32)
    try:
        if session.get_providers()[0] not in _GPU_PROVIDERS:
            return dict(zip(outputs, session.run(list(outputs), {INPUT_NAME: images}, quiet_run())))
        values, _ = run_bound(session, images, outputs)
    except (*ORT_ERRORS, MemoryError) as e:
        raise run_failure(session, e) from None
    return dict(zip(outputs, values))


def _installed(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _probe(provider: str) -> Optional[str]:
    """None when a tiny session really runs on ``provider`` and computes right; otherwise why not."""
    if provider != "cpu" and (problem := gpu_problem(provider)):
        return problem
    try:
        session, _ = create_session(_PROBE_MODEL, provider)
        x = np.array([1.5, -2.0], np.float32)
        y = run_model(session, x, outputs=(EMBEDDING_OUTPUT,))[EMBEDDING_OUTPUT]
    except InputError as e:
        return str(e)
    if not np.array_equal(y, 2 * x):
        return f"wrong result from the probe model: {y}"
    return None


# Oldest Linux driver of each CUDA major release (NVIDIA's CUDA toolkit release notes, minor-version
# compatibility): what a host needs before any CUDA library of that major version can load.
_MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}
_NVIDIA_REQ = re.compile(r"^(nvidia-[a-z-]+?)(?:-cu(\d+))?\s*~=\s*(\d+)")


def gpu_runtime_requirements(distribution: str = "onnxruntime-gpu") -> Optional[dict]:
    """The CUDA and cuDNN versions the installed onnxruntime-gpu wheel declares (its ``cuda`` and
    ``cudnn`` extras), the driver that implies, and the pip command that brings the libraries.
    None when that distribution is not installed or declares no CUDA runtime."""
    try:
        requires = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = {}
    for req in requires:
        if m := _NVIDIA_REQ.match(req):
            found[m.group(1)] = (int(m.group(3)), m.group(2))
    if "nvidia-cuda-runtime" not in found:
        return None
    cuda = found["nvidia-cuda-runtime"][0]
    cudnn, cudnn_cuda = found.get("nvidia-cudnn", (None, None))
    return {"package": f"{distribution} {importlib.metadata.version(distribution)}", "cuda": cuda,
            "cudnn": cudnn, "cudnn_for_cuda": int(cudnn_cuda) if cudnn_cuda else None,
            "min_driver": _MIN_DRIVER.get(cuda), "pip": f'pip install "{distribution}[cuda,cudnn]"'}


def describe_gpu_requirements(req: Optional[dict]) -> str:
    """One line for :func:`gpu_runtime_requirements`."""
    if req is None:
        return "no onnxruntime-gpu with declared CUDA requirements is installed"
    cudnn = f"cuDNN {req['cudnn']} for CUDA {req['cudnn_for_cuda'] or req['cuda']}" if req["cudnn"] else "cuDNN"
    driver = f"NVIDIA driver >= {req['min_driver']}" if req["min_driver"] else "a driver for that CUDA release"
    return (f"{req['package']} is built for CUDA {req['cuda']} and {cudnn} ({driver}); "
            f"the libraries come with `{req['pip']}` or from the system")


def doctor_report() -> dict:
    """Versions, providers (listed and actually working, by running a tiny model on each), GPUs, the
    packages around dpcompat and whether torch and torchvision are a matching pair (see
    :mod:`.packages`: nothing is imported here)."""
    gpus, gpu_missing = list_gpus()
    packages = installed_packages()
    available = ort.get_available_providers()
    providers = {}
    for short, name in ORT_PROVIDER.items():
        problem = _probe(short) if name in available else f"not in this onnxruntime build ({ort.__version__})"
        providers[name] = {"available": name in available, "works": problem is None, "problem": problem}
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "onnxruntime": ort.__version__,
        "onnxruntime_package": next((d for d in ("onnxruntime-gpu", "onnxruntime") if _installed(d)), None),
        "numpy": np.__version__,
        "packages": packages,
        "torch_pairing": torch_pairing(packages),
        "providers": providers,
        "gpus": [{"index": g.index, "name": g.name, "memory_gib": round(g.memory_bytes / 2 ** 30, 1)} for g in gpus],
        "gpu_problem": gpu_missing,
        "gpu_libraries": preload_gpu_libraries() or None,
        "gpu_requirements": gpu_runtime_requirements(),
    }


def format_doctor(report: dict) -> str:
    """:func:`doctor_report` as lines for the terminal."""
    lines = [f"python       {report['python']} ({report['platform']})",
             f"onnxruntime  {report['onnxruntime']} ({report['onnxruntime_package'] or 'unknown package'})",
             f"numpy        {report['numpy']}",
             *format_packages(report["packages"], report["torch_pairing"]),
             "providers:"]
    for name, p in report["providers"].items():
        state = "works" if p["works"] else ("FAILS: " + p["problem"] if p["available"] else p["problem"])
        lines.append(f"  {name:<27} {state}")
    if report["gpus"]:
        lines.extend(f"gpu {g['index']}        {g['name']}, {g['memory_gib']} GiB" for g in report["gpus"])
    else:
        lines.append(f"gpu          none ({report['gpu_problem']})")
    lines.append("needs        " + describe_gpu_requirements(report["gpu_requirements"]))
    if report["gpu_libraries"]:
        lines.append("onnxruntime.preload_dlls: " + " | ".join(report["gpu_libraries"].splitlines()))
    return "\n".join(lines)
