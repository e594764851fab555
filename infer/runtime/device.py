"""GPU specifics of a session: provider options (device id, TensorRT), and runs with the batch in
pinned host memory and the outputs bound on the device.

Pinned (page-locked) host memory comes from the CUDA runtime that onnxruntime-gpu loads
(``cudaHostAlloc``); onnxruntime copies an input bound in host memory to the device itself, and
from pinned memory that copy is a direct DMA transfer instead of a staged pageable one. Where the
runtime library cannot be found, the batch is copied from ordinary memory (``pinned`` says which).
"""
from __future__ import annotations

import ctypes
import functools
import weakref
from typing import Optional, Sequence

import numpy as np
import onnxruntime as ort

from ...common.contract import INPUT_NAME
from .limits import MAX_SESSION_MEMORY
from .options import TensorRTOptions

ORT_PROVIDER = {"cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
                "cpu": "CPUExecutionProvider"}
_CUDART = ("libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so", "cudart64_13.dll",
           "cudart64_12.dll")


def provider_chain(wanted: str, device_id: int, trt: TensorRTOptions) -> list:
    """onnxruntime's ``providers`` argument for ``wanted`` ('cuda' or 'tensorrt') on GPU ``device_id``:
    TensorRT falls back to CUDA for the nodes it cannot take, then the CPU, on the same device. CUDA's
    memory arena is capped at MAX_SESSION_MEMORY, as the host's is (:mod:`.limits`)."""
    cuda = (ORT_PROVIDER["cuda"], {"device_id": str(device_id), "gpu_mem_limit": str(MAX_SESSION_MEMORY)})
    head = [(ORT_PROVIDER["tensorrt"], trt.provider_options(device_id))] if wanted == "tensorrt" else []
    return head + [cuda, ORT_PROVIDER["cpu"]]


def session_device_id(session: ort.InferenceSession) -> int:
    """The GPU a session's first provider runs on (from its provider options)."""
    provider = session.get_providers()[0]
    return int(session.get_provider_options().get(provider, {}).get("device_id", 0))


@functools.lru_cache(maxsize=None)
def _cudart() -> Optional[ctypes.CDLL]:
    for name in _CUDART:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def pinned_array(shape: Sequence[int], dtype=np.float32) -> Optional[np.ndarray]:
    """A numpy array in page-locked host memory (freed with the array), or None without a CUDA runtime."""
    cudart = _cudart()
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if cudart is None or nbytes == 0:
        return None
    pointer = ctypes.c_void_p()
    if cudart.cudaHostAlloc(ctypes.byref(pointer), ctypes.c_size_t(nbytes), 0) != 0:
        return None
    raw = (ctypes.c_byte * nbytes).from_address(pointer.value)
    weakref.finalize(raw, cudart.cudaFreeHost, pointer)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


class _Staging:
    """A session's pinned input buffer, grown to the largest batch seen (None: not available)."""

    def __init__(self):
        self.buffer: Optional[np.ndarray] = None
        self.available = True

    def rows(self, images: np.ndarray) -> Optional[np.ndarray]:
        if not self.available:
            return None
        if self.buffer is None or self.buffer.shape[1:] != images.shape[1:] or len(self.buffer) < len(images):
            self.buffer = pinned_array(images.shape, np.float32)
            self.available = self.buffer is not None
            if not self.available:
                return None
        view = self.buffer[:len(images)]
        view[...] = images
        return view


_STAGING: "weakref.WeakKeyDictionary[ort.InferenceSession, _Staging]" = weakref.WeakKeyDictionary()


def run_bound(session: ort.InferenceSession, images: np.ndarray, outputs: Sequence[str]) -> tuple[list[np.ndarray], bool]:
    """Run a GPU session with IO binding on its device: the batch from pinned host memory where
    possible (else copied to the device from ``images``), the outputs on the device, copied back
    once. Returns the outputs and whether the input came from pinned memory."""
    device_id = session_device_id(session)
    binding = session.io_binding()
    staged = _STAGING.setdefault(session, _Staging()).rows(images)
    if staged is not None:
        binding.bind_input(INPUT_NAME, "cpu", 0, np.float32, list(staged.shape), staged.ctypes.data)
    else:
        binding.bind_ortvalue_input(INPUT_NAME, ort.OrtValue.ortvalue_from_numpy(images, "cuda", device_id))
    for name in outputs:
        binding.bind_output(name, "cuda", device_id)
    session.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu(), staged is not None
