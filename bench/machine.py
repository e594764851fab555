"""What a benchmark ran on: the CPU, its cores, memory, GPUs and package versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata

from ..infer.runtime.session import list_gpus


_SIMD_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "amx_tile")  # what decides BLAS and sort speed


def machine_info() -> dict:
    """CPU model and its SIMD flags, usable cores, memory, GPUs and package versions."""
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        present = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        flags = [f for f in _SIMD_FLAGS if f in present]
    except OSError:
        pass
    gpus, _ = list_gpus()
    versions = {}
    for pkg in ("numpy", "onnxruntime-gpu", "onnxruntime", "torch", "timm", "onnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cpu_flags": flags, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "versions": versions,
            "gpus": [{"name": g.name, "memory_gib": round(g.memory_bytes / 2**30, 1)} for g in gpus]}
