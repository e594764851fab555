"""What a benchmark ran on: the CPU, its cores, memory, GPUs and package versions."""
from __future__ import annotations

import os
import platform
from importlib import metadata

from ..infer.runtime.session import list_gpus


def machine_info() -> dict:
    """CPU model, usable cores, memory, GPUs and package versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpus, _ = list_gpus()
    versions = {}
    for pkg in ("numpy", "onnxruntime-gpu", "onnxruntime", "torch", "timm", "onnx"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "python": platform.python_version(), "versions": versions,
            "gpus": [{"name": g.name, "memory_gib": round(g.memory_bytes / 2**30, 1)} for g in gpus]}
