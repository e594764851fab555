"""``embed --engine ray``: the same preprocessing and the same onnxruntime model in a pool of Ray
actors (Ray Data ``map_batches`` with a callable class holding one session per actor), results in
dataset order, so the store written from them is the one the local engine writes.

Every actor reads the data itself: on a cluster the data set (and nothing else) must be readable
at the same absolute path on every node; the model travels through Ray's object store, and this
package's torch-free code (``common`` and ``infer``) as the actors' ``py_modules``, so they run the
driver's code, not whatever dpcompat a node has installed (or none).
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ...common.contract import EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT
from ...common.errors import InputError
from ..data.base import Dataset
from ..runtime.metadata import ModelInfo
from ..runtime.options import RayOptions, RuntimeOptions, TensorRTOptions
from ..data.workers import Embedded, batch_bounds, load_batch


class EmbedActor:
    """One onnxruntime session; each call embeds one batch of dataset rows ``[start, stop)``.

    Output: one row per dataset row, in order: ``row``, ``ok`` (False: unreadable, skipped),
    ``embedding`` (the raw model output; zeros where not ok), ``prompt_index``, ``provider``.
    """

    def __init__(self, model_ref, dataset_ref, provider: str, threads: Optional[int], skip_bad: bool,
                 trt: Optional[TensorRTOptions], digest: str):
        import ray

        if code_digest() != digest:
            raise RuntimeError(f"this Ray worker imports dpcompat from {_ROOT}, other code "
                               "than the driver's: let embed start Ray, or ray.init(runtime_env="
                               "dpcompat.infer.engines.ray.runtime_env(folder))")
        from ..runtime.session import create_session, model_info

        model, self.dataset = ray.get(model_ref), ray.get(dataset_ref)
        self.session, self.provider = create_session(model, provider, threads=threads, trt=trt)
        self.info: ModelInfo = model_info(self.session, "model")
        self.skip_bad = skip_bad

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..runtime.session import run_model

        start, stop = int(batch["start"][0]), int(batch["stop"][0])
        embedding = np.zeros((stop - start, self.info.embedding_dim), np.float32)
        index_shape = (stop - start,) if self.info.top_k == 1 else (stop - start, self.info.top_k)
        prompt_index = np.full(index_shape, -1, np.int64)
        ok, error = np.zeros(stop - start, bool), ""
        try:  # bad input (an unreadable image) travels back as data: the driver raises it as one line
            b = load_batch(self.dataset, start, stop, self.info.preprocessing, skip_bad=self.skip_bad)
            ok = np.isin(np.arange(start, stop), b.rows)
            if len(b.rows):
                out = run_model(self.session, b.images)
                embedding[ok], prompt_index[ok] = out[EMBEDDING_OUTPUT], out[PROMPT_INDEX_OUTPUT]
        except InputError as e:
            error = str(e)
        return {"row": np.arange(start, stop, dtype=np.int64), "ok": ok, "embedding": embedding,
                "prompt_index": prompt_index, "provider": np.full(stop - start, self.provider),
                "error": np.full(stop - start, error, dtype=object)}


def _portable(dataset: Dataset) -> Dataset:
    """The data set with absolute paths, so that actors in other working folders find its files."""
    if not hasattr(dataset, "files"):
        return dataset
    moved = copy.copy(dataset)
    moved.files = [p.absolute() for p in dataset.files]  # item names stay relative: they name the items
    return moved


_ROOT = Path(__file__).resolve().parents[2]


def _sources() -> list[Path]:
    return [_ROOT / "__init__.py"] + sorted(_ROOT.glob("common/*.py")) + sorted(_ROOT.glob("infer/**/*.py"))


def code_digest() -> str:
    """sha256 of this package's torch-free sources: actors refuse to run other code than the driver's."""
    h = hashlib.sha256()
    for file in _sources():
        h.update(f"{file.relative_to(_ROOT).as_posix()}\n".encode() + file.read_bytes())
    return h.hexdigest()


def runtime_env(folder: str | Path) -> dict:
    """A Ray ``runtime_env`` that ships this package's torch-free code (``common``, ``infer``) to
    every worker as ``py_modules``, copied under ``folder`` (uploaded by ``ray.init``). ``embed_with_ray``
    uses it when it connects; a program that calls ``ray.init`` itself passes it there."""
    dest = Path(folder) / "dpcompat"
    for file in _sources():
        target = dest / file.relative_to(_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, target)
    return {"py_modules": [str(dest)]}


def _connect(options: RayOptions):
    """``ray.init`` on the chosen cluster unless already connected; True when this call connected."""
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install \"dpcompat[ray]\" (or pip install \"ray[data]\")") from None
    if ray.is_initialized():
        return ray, False
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    _probe(address)
    try:
        with tempfile.TemporaryDirectory(prefix="dpcompat-ray-") as code:  # uploaded by ray.init
            ray.init(address=address, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env(code))
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise InputError(f"--ray-address {address}: cannot connect to Ray ({str(e).splitlines()[0]})") from None
    return ray, True


CONNECT_TIMEOUT_S = 10.0  # for a cluster's address to answer
RESOURCES_TIMEOUT_S = 30.0  # for the cluster to offer what one actor reserves (an autoscaler may add nodes)


def _probe(address: str) -> None:
    """InputError unless something listens at a cluster ``address`` (``host:port`` or ``ray://host:port``)
    within CONNECT_TIMEOUT_S: ``ray.init`` itself would retry for minutes. 'local' and 'auto' pass."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if address in ("local", "auto") or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise InputError(f"--ray-address {address}: nothing answers there within {CONNECT_TIMEOUT_S:g} s "
                         f"({e.strerror or type(e).__name__}); start the cluster (ray start --head) or fix the "
                         "address") from None


def _check_resources(ray, options: RayOptions) -> None:
    """InputError unless the cluster offers one actor's GPUs and CPUs within RESOURCES_TIMEOUT_S: Ray
    would otherwise wait forever for an actor it cannot place."""
    wanted = {"GPU": options.gpus_per_actor, "CPU": options.cpus_per_actor}
    deadline = time.monotonic() + RESOURCES_TIMEOUT_S
    while True:
        have = ray.cluster_resources()
        short = {k: v for k, v in wanted.items() if v > have.get(k, 0)}
        if not short or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    if short:
        option = "--gpus-per-actor" if "GPU" in short else "CPUs per actor"
        raise InputError(f"{option} {short.get('GPU', short.get('CPU')):g}: the Ray cluster offers "
                         f"{have.get('GPU', 0):g} GPU(s) and {have.get('CPU', 0):g} CPU(s) in all "
                         f"(waited {RESOURCES_TIMEOUT_S:g} s); an actor could never start")


def embed_with_ray(model: str | Path, dataset: Dataset, *, runtime: RuntimeOptions = RuntimeOptions(provider="cpu"),
                   start: int = 0, align: Optional[int] = None) -> Iterator[Embedded]:
    """Raw model outputs of every ``runtime.batch_size`` rows of ``dataset``, in order, computed by Ray
    actors (one onnxruntime session each, opened with ``runtime``'s provider, threads and TensorRT
    settings; ``runtime.ray`` places them, None: :class:`RayOptions` defaults). Batches are the local
    engine's (same rows, same preprocessing, same session options), so on the CPU the outputs are equal
    bit for bit. Options are checked and Ray is connected before the first batch is asked for; a
    cluster this call started is shut down when the iterator ends or is closed. ``start`` and
    ``align``: see :func:`infer.data.workers.batch_bounds`."""
    runtime.check()
    options = runtime.ray or RayOptions()
    options.check()
    ray, started = _connect(options)
    try:
        _check_resources(ray, options)
    except InputError:
        if started:
            ray.shutdown()
        raise
    bounds = batch_bounds(start, len(dataset), runtime.batch_size, align)
    return _ordered_batches(ray, started, Path(model), dataset, options, runtime.provider, bounds, runtime.skip_bad,
                            runtime.threads or max(1, int(options.cpus_per_actor)), runtime.trt)


def _ordered_batches(ray, started, model, dataset, options, provider, bounds, skip_bad, threads, trt):
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        items = [{"start": s, "stop": e} for s, e in bounds]
        refs = (ray.put(model.read_bytes()), ray.put(_portable(dataset)))
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            EmbedActor, batch_size=1, concurrency=options.actors, num_gpus=options.gpus_per_actor,
            num_cpus=options.cpus_per_actor,
            fn_constructor_args=(*refs, provider, threads, skip_bad, trt, code_digest()))
        due = iter(bounds)
        expected = bounds[0][0] if bounds else 0
        for block in results.iter_batches(batch_size=None, batch_format="numpy"):
            rows = block["row"]
            failed = [str(e) for e in block["error"] if e]
            if failed:
                raise InputError(failed[0])
            if len(rows) and not np.array_equal(rows, np.arange(expected, expected + len(rows))):
                raise RuntimeError(f"Ray returned rows {rows[0]}..{rows[-1]} where row {expected} was due")
            first, expected = expected, expected + len(rows)
            while len(rows) and (bound := next(due)):  # a block holds whole batches (one per actor call)
                part, ok = slice(bound[0] - first, bound[1] - first), block["ok"][bound[0] - first:bound[1] - first]
                yield Embedded(start=bound[0], rows=rows[part][ok], embeddings=block["embedding"][part][ok],
                               prompt_index=block["prompt_index"][part][ok],
                               skipped=[dataset.item_name(int(r)) for r in rows[part][~ok]],
                               provider=str(block["provider"][part][0]))
                if bound[1] == expected:
                    break
    finally:
        if started:
            ray.shutdown()
