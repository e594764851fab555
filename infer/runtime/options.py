"""How an export runs wherever the project embeds: one frozen :class:`RuntimeOptions` that ``embed``
(single files and bundles, the local and the Ray engine), ``evaluate`` (its own sets and
``--precision-exports``), ``audit --model`` and ``verify`` all take, so an option given on the command
line reaches every session and every decoding pool of the run.

This module imports neither onnxruntime nor numpy: the command line builds these objects before it
loads anything heavy. The ranges below are the ones the command line declares for its options.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ...common.errors import InputError

MAX_BATCH = 4096  # images per inference batch: 2.3 GiB of float32 input at 224 x 224
MAX_WORKERS = 256  # decoding processes; each holds a data set handle and a few batches
MAX_THREADS = 1024  # onnxruntime intra-op threads (onnxruntime starts every one of them at once)
MAX_ACTORS = 1024  # Ray actors, each with its own session
MAX_GPUS_PER_ACTOR = 64.0
MAX_TRT_WORKSPACE_GIB = 1024.0


@dataclass(frozen=True)
class TensorRTOptions:
    """What ``--provider tensorrt`` passes to onnxruntime's TensorRT provider.

    ``fp16``: let TensorRT pick fp16 kernels; ``cache``: a folder where built engines (and timing
    caches) are kept, so later runs skip the build; ``workspace_gib``: the most GPU memory TensorRT
    may use for building (onnxruntime's default otherwise).
    """

    fp16: bool = False
    cache: Optional[Path] = None
    workspace_gib: Optional[float] = None

    @property
    def given(self) -> bool:
        return self != TensorRTOptions()

    def check(self) -> None:
        """InputError for a workspace that is not positive or a cache folder that cannot be made."""
        if self.workspace_gib is not None and not 0 < self.workspace_gib <= MAX_TRT_WORKSPACE_GIB:
            raise InputError(f"--trt-workspace {self.workspace_gib}: must be a positive number of GiB "
                             f"(at most {MAX_TRT_WORKSPACE_GIB:g})")
        if self.cache is not None:
            try:
                Path(self.cache).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"--trt-cache {self.cache}: cannot make the folder ({e.strerror or e})") from None

    def provider_options(self, device_id: int) -> dict[str, str]:
        options = {"device_id": str(device_id), "trt_fp16_enable": str(self.fp16)}
        if self.cache is not None:
            cache = str(Path(self.cache).resolve())
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache,
                           trt_timing_cache_enable="True", trt_timing_cache_path=cache)
        if self.workspace_gib is not None:
            options["trt_max_workspace_size"] = str(int(self.workspace_gib * 2 ** 30))
        return options


@dataclass(frozen=True)
class RayOptions:
    """``address``: a Ray cluster (``ray://host:10001`` or ``host:6379``); default ``RAY_ADDRESS``,
    else a new local cluster. ``actors``: sessions running at once; ``gpus_per_actor``: GPUs each
    actor reserves (fractions share a GPU); ``cpus_per_actor``: CPUs each reserves, also its
    onnxruntime threads unless ``threads`` says otherwise."""

    address: Optional[str] = None
    actors: int = 2
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0

    def check(self) -> None:
        if not 1 <= self.actors <= MAX_ACTORS:
            raise InputError(f"--actors {self.actors}: must be from 1 to {MAX_ACTORS}")
        if not (math.isfinite(self.gpus_per_actor) and 0 <= self.gpus_per_actor <= MAX_GPUS_PER_ACTOR
                and math.isfinite(self.cpus_per_actor) and self.cpus_per_actor > 0):
            raise InputError(f"--gpus-per-actor {self.gpus_per_actor} / CPUs per actor {self.cpus_per_actor}: "
                             f"GPUs must be from 0 to {MAX_GPUS_PER_ACTOR:g} and CPUs more than 0")


@dataclass(frozen=True)
class RuntimeOptions:
    """How every model file of a run is opened and fed.

    ``provider``: 'auto', 'cpu', 'cuda[:N]' or 'tensorrt[:N]' (see
    :func:`infer.runtime.session.create_session`); ``threads``: onnxruntime intra-op threads per session
    (None: the usable cores); ``workers``: decoding processes (None: the usable cores; 0 or 1: in the
    calling process); ``batch_size``: images per model run (a bundle's rows, see
    :func:`infer.embed.run_sizes`); ``skip_bad``: leave unreadable images out (listed in the manifest)
    instead of stopping; ``trt``: TensorRT settings (only with a tensorrt provider); ``progress``: bars on
    stderr; ``ray``: run the model in Ray actors instead of this process (None: the local engine).
    """

    provider: str = "auto"
    threads: Optional[int] = None
    workers: Optional[int] = None
    batch_size: int = 64
    skip_bad: bool = False
    trt: TensorRTOptions = TensorRTOptions()
    progress: bool = False
    ray: Optional[RayOptions] = None

    def check(self) -> None:
        """InputError for a value out of its range, before any work (the command line checks the same
        ranges while parsing)."""
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InputError(f"--batch-size {self.batch_size}: must be from 1 to {MAX_BATCH}")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise InputError(f"--threads {self.threads}: must be from 1 to {MAX_THREADS}")
        if self.workers is not None and not 0 <= self.workers <= MAX_WORKERS:
            raise InputError(f"--workers {self.workers}: must be from 0 to {MAX_WORKERS} "
                             "(0 or 1: decode in this process)")
        if self.ray is not None:
            self.ray.check()
