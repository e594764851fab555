"""What ``doctor`` says about the packages around dpcompat, without importing them here: versions from
the installed distributions' metadata, and whether torch and torchvision are a working pair, checked
in a child process (a broken pair can abort the interpreter that imports it; doctor survives it).

A production host has no torch: that is reported as absent, not as a problem.
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from typing import Optional

# name shown -> the distributions that provide it, the first installed one is reported
PACKAGES = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime"),
    "faiss": ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss-gpu-cu11"),
    "ray": ("ray",),
    "mlflow": ("mlflow", "mlflow-skinny"),
}
PAIR_TIMEOUT_S = 180  # importing a CUDA torch cold can take a minute

# Run by ``python -c`` in a child process: one JSON line. The ``torchvision::nms`` operator exists only
# when torchvision's C++ extension loaded against this torch (the failure of a mismatched pair).
_PAIR_PROBE = r"""
import json
out = {}
def step(name, call):
    try:
        return call()
    except BaseException as e:
        out["error"] = f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        print(json.dumps(out))
        raise SystemExit(0)
torch = step("import torch", lambda: __import__("torch"))
out.update(torch=torch.__version__, torch_cuda=torch.version.cuda)
torchvision = step("import torchvision", lambda: __import__("torchvision"))
out.update(torchvision=torchvision.__version__, torchvision_cuda=getattr(torchvision.version, "cuda", None))
step("torch.ops.torchvision.nms", lambda: torch.ops.torchvision.nms)
out["nms"] = True
print(json.dumps(out))
"""


def build_tag(version: Optional[str]) -> Optional[str]:
    """The local part of a version, which PyTorch's wheels use for their build: ``cu130`` of
    ``2.14.1+cu130``; None without one."""
    return version.partition("+")[2] or None if version else None


def installed_packages() -> dict[str, Optional[dict]]:
    """``{name: {"distribution", "version", "build"} or None (not installed)}`` for :data:`PACKAGES`."""
    out = {}
    for name, distributions in PACKAGES.items():
        out[name] = None
        for d in distributions:
            try:
                version = importlib.metadata.version(d)
            except importlib.metadata.PackageNotFoundError:
                continue
            out[name] = {"distribution": d, "version": version, "build": build_tag(version)}
            break
    return out


def _probe_pair(timeout: float) -> dict:
    """What the child process found (see ``_PAIR_PROBE``), or ``error`` when it died or hung."""
    try:
        run = subprocess.run([sys.executable, "-c", _PAIR_PROBE], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"importing torch and torchvision took more than {timeout:.0f} s"}
    lines = run.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        said = (run.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"a process importing torch and torchvision died (exit {run.returncode}): {said}"}


def cuda_text(version) -> Optional[str]:
    """A CUDA version as ``13.0``: torch says ``'13.0'``, torchvision's C++ ``13000`` (None, or below 0: a CPU build)."""
    if isinstance(version, int):
        return f"{version // 1000}.{version % 1000 // 10}" if version > 0 else None
    return version or None


def _mismatch(found: dict) -> Optional[str]:
    """Why the pair the probe found does not match (its CUDA builds, then the versions' build tags);
    None when it does."""
    if "error" in found:
        return found["error"]
    cuda = (found["torch_cuda"], found["torchvision_cuda"])
    if cuda[0] != cuda[1]:
        return (f"torch is built for {'CUDA ' + cuda[0] if cuda[0] else 'the CPU'}, torchvision for "
                f"{'CUDA ' + cuda[1] if cuda[1] else 'the CPU'}")
    tags = (build_tag(found["torch"]), build_tag(found["torchvision"]))
    if None not in tags and tags[0] != tags[1]:
        return f"torch is a {tags[0]} build, torchvision a {tags[1]} build"
    return None


def torch_pairing(packages: dict, *, timeout: float = PAIR_TIMEOUT_S) -> dict:
    """Whether torch and torchvision are a matching pair: ``status`` is ``torch absent``,
    ``torchvision absent`` (neither is a problem of this host's inference), ``matching pair`` or
    ``MISMATCHED`` (then ``problem`` says why and ``fix`` what to do); ``ok`` True, False, or None
    when there is no pair. Included: what the child found, the versions as torch and torchvision
    report themselves (with their build tag, e.g. ``2.14.1+cu130``; the wheel metadata may lack it),
    their CUDA builds and whether ``torchvision::nms`` loads."""
    for name in ("torch", "torchvision"):
        if packages[name] is None:
            return {"status": f"{name} absent", "ok": None, "problem": None}
    found = _probe_pair(timeout)
    for key in ("torch_cuda", "torchvision_cuda"):
        found[key] = cuda_text(found.get(key))
    problem = _mismatch(found)
    result = {"status": "MISMATCHED" if problem else "matching pair", "ok": problem is None, "problem": problem,
              **{k: found.get(k) for k in ("torch", "torchvision", "torch_cuda", "torchvision_cuda")},
              "nms": bool(found.get("nms"))}
    if problem:
        result["fix"] = ("install torch and torchvision from the same index and build, e.g. pip install "
                         "--force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/<build>")
    return result


def format_packages(packages: dict, pairing: dict) -> list[str]:
    """The packages and the pairing as terminal lines."""
    lines = ["packages:"]
    for name, p in packages.items():
        text = "not installed" if p is None else f"{pairing.get(name) or p['version']} ({p['distribution']})"
        lines.append(f"  {name:<12} {text}")
    state = pairing["status"]
    if pairing["ok"]:
        cuda = pairing["torch_cuda"]
        state += f" (torchvision::nms loads; both built for {'CUDA ' + cuda if cuda else 'the CPU'})"
    elif pairing["ok"] is False:
        state += f": {pairing['problem']}; {pairing['fix']}"
    lines.append(f"torch/torchvision  {state}")
    return lines
