"""The command line's parameter types, its shared options (each declared once, with its range) and the
bridges from parsed options to the library's options objects.

A bridge works as timm's ``optimizer_kwargs(cfg)`` does: :func:`grouped` adds a group of options to
a command and hands the command one object built from their values (:func:`runtime_options` builds
:class:`~infer.runtime.options.RuntimeOptions`), so a command reads ``runtime``, not a dozen loose
values. A value out of its declared range is refused by click while parsing, before any work, as one
line ``--option value: expected ...``.
"""
from __future__ import annotations

import functools
import math
import re
from pathlib import Path
from typing import Callable, Optional

import click

from ..common.contract import GATHERS, PROVIDERS, QUERIES, parse_provider
from ..common.errors import InputError
from ..common.outputs import writable_file
from ..infer.runtime.options import (MAX_ACTORS, MAX_BATCH, MAX_GPUS_PER_ACTOR, MAX_THREADS, MAX_TRT_WORKSPACE_GIB,
                                     MAX_WORKERS, RayOptions, RuntimeOptions, TensorRTOptions)


class BadValue(click.BadParameter):
    """A refused option value; the message starts with the value: ``--k 0: expected ...``."""

    def __init__(self, value, reason: str):
        super().__init__(f"{value}: {reason}")


class Int(click.ParamType):
    """An integer from ``minimum`` to ``maximum`` (inclusive; None: unbounded)."""

    name = "integer"

    def __init__(self, minimum: int, maximum: Optional[int] = None):
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise BadValue(value, "not an integer") from None
        if number < self.minimum or (self.maximum is not None and number > self.maximum):
            bound = f"{self.minimum} to {self.maximum}" if self.maximum is not None else f">= {self.minimum}"
            raise BadValue(value, f"expected an integer {bound}")
        return number


class Float(click.ParamType):
    """A finite number from ``minimum`` (or above it, with ``above``) to ``maximum`` (None: unbounded).
    click's FloatRange lets NaN through."""

    name = "number"

    def __init__(self, minimum: float, maximum: Optional[float] = None, *, above: bool = False):
        self.minimum, self.maximum, self.above = minimum, maximum, above

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise BadValue(value, "not a number") from None
        low = number > self.minimum if self.above else number >= self.minimum
        if not (math.isfinite(number) and low and (self.maximum is None or number <= self.maximum)):
            raise BadValue(value, f"expected a finite number {self.describe()}")
        return number

    def describe(self) -> str:
        if self.maximum is None:
            return f"above {self.minimum:g}" if self.above else f">= {self.minimum:g}"
        return f"above {self.minimum:g} up to {self.maximum:g}" if self.above else \
            f"from {self.minimum:g} to {self.maximum:g}"


POSITIVE = Int(1)
NON_NEGATIVE = Int(0)
SEED = Int(0, 2**32 - 1)  # numpy's legacy seeding (train, the data order) takes 32 bits
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def int_list(minimum: int, maximum: Optional[int] = None):
    """Callback parsing ``1,3,5``: one or more distinct integers from ``minimum`` to ``maximum``."""
    each = Int(minimum, maximum)

    def parse(ctx, param, value):
        if value is None:
            return None
        items = [v.strip() for v in value.split(",")]
        if not any(items) or not all(items):
            raise BadValue(value, "expected one or more comma-separated integers, e.g. 1,3,5")
        try:
            numbers = tuple(each.convert(v, param, ctx) for v in items)
        except BadValue as e:
            raise BadValue(value, e.message) from None
        if len(set(numbers)) < len(numbers):
            raise BadValue(value, "names a value more than once")
        return numbers

    return parse


def json_file(ctx, param, value):
    return value and writable_file(value, param.opts[0])


def device(ctx, param, value):
    if not _DEVICE.match(value):
        raise BadValue(value, "expected auto, cpu, cuda or cuda:N")
    return value


def architecture(ctx, param, value):
    """A timm ViT name the model builder supports (checked with it; needs torch, which every command
    naming an architecture needs anyway)."""
    from ..train.model import DualPromptConfig

    try:
        DualPromptConfig.from_name(value)
    except ValueError as e:
        raise BadValue(value, str(e)) from None
    return value


# ---- shared options ----

DATASET_HELP = ("cifar10:train|test, cifar100:train|test (under --data-path), folder:PATH (one sub-folder per class, "
                "or a flat folder of images: no labels), images:PATH (every image below PATH, no labels), list:FILE "
                "(image paths, one per line, or a .csv with the columns path[,label]), npz:PATH[:train|val|test] "
                "(MedMNIST layout) or generated:N (N generated 8x8 images, for benchmarks).")


def data_path(help_text: str = "Folder holding CIFAR's folders."):
    return click.option("--data-path", default="data", show_default=True, help=help_text)


def download(help_text: str = "Fetch CIFAR-10/100 into --data-path first when missing (the official tarball, "
                              "md5-checked)."):
    return click.option("--download", is_flag=True, help=help_text)


JSON = click.option("--json", "json_path", type=click.Path(dir_okay=False), callback=json_file,
                    help="Write every figure as JSON here.")
QUIET = click.option("--quiet", is_flag=True, help="No progress bars.")


def batch_size(default: Optional[int] = 64, help_text: Optional[str] = None):
    return click.option("--batch-size", type=Int(1, MAX_BATCH), default=default, show_default=default is not None,
                        help=help_text)


def provider(default: str, help_text: str = ""):
    def check(ctx, param, value):
        parse_provider(value)  # an InputError here is one line and exit code 2, before any work
        return value
    return click.option("--provider", default=default, show_default=True, callback=check,
                        metavar="|".join(PROVIDERS) + "|cuda:N|tensorrt:N",
                        help="onnxruntime execution provider; cuda:N / tensorrt:N for GPU N. " + help_text)


AUTO_PROVIDER = provider("auto", "auto = CUDA when it really initialises, else CPU (said on stderr). "
                                 "Never a silent fallback.")
THREADS = click.option("--threads", type=Int(1, MAX_THREADS), help="onnxruntime intra-op threads (default: the cores "
                                                                   "this process may use, from its CPU affinity mask).")
TRT = (click.option("--trt-fp16", is_flag=True, help="TensorRT: allow fp16 kernels."),
       click.option("--trt-cache", type=click.Path(file_okay=False),
                    help="TensorRT: keep built engines in this folder, so later runs skip the build."),
       click.option("--trt-workspace", type=Float(0, MAX_TRT_WORKSPACE_GIB, above=True),
                    help="TensorRT: GPU memory (GiB) it may use to build engines."))


def workers(default: Optional[int] = None, help_text: str = "Processes that decode and preprocess images while the "
                                                            "model runs (default: the usable cores; 0 or 1: in this "
                                                            "process)."):
    return click.option("--workers", type=Int(0, MAX_WORKERS), default=default, show_default=default is not None,
                        help=help_text)


def skip_bad(help_text: str):
    return click.option("--skip-bad", is_flag=True, help=help_text)


RAY = (click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                    help="local: this process (and --workers); ray: an actor pool on a Ray cluster (extra [ray])."),
       click.option("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a new local cluster)."),
       click.option("--actors", type=Int(1, MAX_ACTORS), default=2, show_default=True,
                    help="--engine ray: onnxruntime sessions running at once."),
       click.option("--gpus-per-actor", type=Float(0, MAX_GPUS_PER_ACTOR), default=0.0, show_default=True,
                    help="--engine ray: GPUs each actor reserves."))
GATHER = click.option("--gather", type=click.Choice(GATHERS), default="per-sample", show_default=True,
                      help="E-prompt gather; reference reproduces the public reference's, whose key/value roles "
                           "depend on the batch position (for reproducing its numbers only).")
QUERY = click.option("--query", type=click.Choice(QUERIES), default="cls", show_default=True,
                     help="Prompt-selection query: the frozen [CLS] after the final norm (the paper), or notebook, "
                          "the max over the embedded tokens that the original study's notebook used.")
# FAISS index settings (evaluate --index, bench index); FAISS takes them as 32-bit integers
NLIST = click.option("--nlist", type=Int(1, 2**20), help="IVF lists (default: sqrt(gallery size), at least 39 "
                                                         "vectors per list).")
NPROBE = click.option("--nprobe", type=Int(1, 2**20), default=16, show_default=True,
                      help="IVF lists scanned per query.")
PQ_M = click.option("--pq-m", type=Int(1, 2**16), help="PQ sub-vectors (default: the largest divisor of the "
                                                      "dimension <= dim/8).")


def grouped(name: str, build: Callable[..., object], *options):
    """A decorator that adds ``options`` to a command and hands it one keyword argument ``name`` =
    ``build(**their values)`` instead of the values (built when the command runs, so a refusal in
    ``build`` is one error line)."""
    def decorate(command):
        names: list[str] = []

        @functools.wraps(command)
        def run(*args, **kwargs):
            values = {n: kwargs.pop(n) for n in names}
            return command(*args, **kwargs, **{name: build(**values)})

        before = len(getattr(run, "__click_params__", ()))
        for option in reversed(options):
            run = option(run)
        names.extend(p.name for p in run.__click_params__[before:])
        return run
    return decorate


def runtime_options(provider: str = "auto", threads: Optional[int] = None, trt_fp16: bool = False,
                    trt_cache: Optional[str] = None, trt_workspace: Optional[float] = None,
                    workers: Optional[int] = None, batch_size: int = 64, skip_bad: bool = False, quiet: bool = False,
                    engine: str = "local", ray_address: Optional[str] = None, actors: int = 2,
                    gpus_per_actor: float = 0.0) -> RuntimeOptions:
    """The runtime group's values (whichever a command has) as :class:`RuntimeOptions`."""
    ray = None
    if engine == "ray":
        ray = RayOptions(address=ray_address, actors=actors, gpus_per_actor=gpus_per_actor)
    elif ray_address or gpus_per_actor:
        raise InputError("--ray-address and --gpus-per-actor need --engine ray")
    trt = TensorRTOptions(fp16=trt_fp16, cache=Path(trt_cache) if trt_cache else None, workspace_gib=trt_workspace)
    return RuntimeOptions(provider=provider, threads=threads, workers=workers, batch_size=batch_size,
                          skip_bad=skip_bad, trt=trt, progress=not quiet, ray=ray)


def runtime(*options):
    """The ``runtime`` group of a command: ``options`` (from those above) become one RuntimeOptions."""
    return grouped("runtime", runtime_options, *options)
