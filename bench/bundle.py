"""``bench embed`` on a bundle: the T-task bundle against the T single-task files of the same tasks,
in one run on the same images, provider and threads, as images x tasks per second; and ``--against``:
one file against another of the same task (an int8 file against its fp32 one) the same way."""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..common.contract import EMBEDDING_OUTPUT, INPUT_NAME, PROMPT_INDEX_OUTPUT, QUERY_OUTPUT
from ..common.errors import InputError
from ..common.tables import format_table
from .machine import machine_info
from ..infer.runtime.options import TensorRTOptions
from ..infer.runtime.bundle import BundleInfo, bundle_info, read_props
from ..infer.runtime.metadata import ModelInfo
from ..infer.runtime.session import create_session

_COMPARED = ("checkpoint_sha256", "selection", "pool", "precision", "input_size", "gather", "query")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def single_files(info: BundleInfo, singles_dir: Path) -> list[Path]:
    """``<singles_dir>/task<N>.onnx`` for every task of the bundle, each checked (from its metadata) to
    be that task's export from the same checkpoint with the same options."""
    files = [singles_dir / f"task{t}.onnx" for t in info.task_numbers]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"--singles-dir {singles_dir}: no {', '.join(missing)} (export them with "
                         f"python cli.py export --tasks {','.join(map(str, info.task_numbers))})")
    for path, expected in zip(files, info.tasks):
        got = ModelInfo.from_props(read_props(path), str(path))
        differ = [f"{k} {getattr(got, k)!r} (bundle: {getattr(expected, k)!r})" for k in _COMPARED
                  if getattr(got, k) != getattr(expected, k)]
        if differ:
            raise InputError(f"{path}: not the bundle's task {expected.task}: {', '.join(differ)}")
    return files


def _seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _paired(bundle: Callable[[], object], singles: Sequence[Callable[[], object]], repeats: int) -> dict:
    """After one untimed run of each: ``repeats`` rounds, each timing the bundle and every single file
    once, back to back (the bundle first in even rounds, last in odd ones), so that both see the same
    machine; the ratio is the median of the rounds' ratios, ``worst_ratio`` the smallest, and
    ``rounds`` every round's [bundle seconds, singles seconds, ratio] in order (a drift over the
    repeats shows there)."""
    bundle()
    for run in singles:
        run()
    rounds = []
    for i in range(repeats):
        if i % 2:
            s = sum(_seconds(run) for run in singles)
            b = _seconds(bundle)
        else:
            b = _seconds(bundle)
            s = sum(_seconds(run) for run in singles)
        rounds.append((b, s, s / b))
    return {"bundle_seconds": statistics.median(b for b, _, _ in rounds),
            "singles_seconds": statistics.median(s for _, s, _ in rounds),
            "ratio": statistics.median(r for _, _, r in rounds), "worst_ratio": min(r for _, _, r in rounds),
            "rounds": rounds}


def bench_against(path: str | Path, baseline: str | Path, provider: str, batch_sizes: Sequence[int], *,
                  repeats: int = 3, warn: Callable[[str], None] = _stderr, threads: Optional[int] = None,
                  trt: Optional[TensorRTOptions] = None) -> dict:
    """Per batch size: seconds per batch of the export ``path`` and of ``baseline`` (another file of the
    same task, e.g. its fp32 file against an int8 one), in rounds as :func:`_paired` times them, on
    the same random images, provider and threads; ``ratio`` is the baseline's time over ``path``'s
    (above 1: ``path`` is faster)."""
    sessions = [create_session(p, provider, warn, threads=threads, trt=trt) for p in (path, baseline)]
    used = sessions[0][1]
    infos = [ModelInfo.from_props(read_props(p), str(p)) for p in (path, baseline)]
    if infos[0].task != infos[1].task or infos[0].checkpoint_sha256 != infos[1].checkpoint_sha256:
        raise InputError(f"--against {baseline}: not from {path}'s checkpoint (task {infos[1].task}, not "
                         f"{infos[0].task}, or another checkpoint sha256)")
    rng, size, rows = np.random.default_rng(0), infos[0].input_size, []
    outputs = [EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT]
    for bs in batch_sizes:
        feed = {INPUT_NAME: rng.random((bs, 3, size, size), dtype=np.float32)}
        runs = [lambda s=s: s.run(outputs, feed) for s, _ in sessions]
        row = _paired(runs[0], runs[1:], repeats)
        rows.append({"batch_size": bs, "seconds": row["bundle_seconds"], "baseline_seconds": row["singles_seconds"],
                     "images_per_s": bs / row["bundle_seconds"], "baseline_images_per_s": bs / row["singles_seconds"],
                     "ratio": row["ratio"], "worst_ratio": row["worst_ratio"], "rounds": row["rounds"]})
    return {"benchmark": "embed-against", "model": str(path), "baseline": str(baseline), "task": infos[0].task,
            "precision": infos[0].precision, "baseline_precision": infos[1].precision, "provider": used,
            "threads": threads, "repeats": repeats, "rows": rows, "machine": machine_info()}


def bench_bundle(path: str | Path, singles_dir: str | Path, provider: str, batch_sizes: Sequence[int], *,
                 repeats: int = 3, warn: Callable[[str], None] = _stderr, threads: Optional[int] = None,
                 trt: Optional[TensorRTOptions] = None) -> dict:
    """Per batch size: seconds per batch of the bundle and of all its single-task files together
    (medians), images x tasks per second of both, and ``ratio``, singles' time over the bundle's, from
    rounds that time both back to back (see :func:`_paired`; a shared machine's load changes between
    rounds, not within one). All T single files are open at once (T copies of the backbone in memory),
    each session with the same ``threads`` and ``trt`` options."""
    session, used = create_session(path, provider, warn, threads=threads, trt=trt)
    info = bundle_info(session, path)
    files = single_files(info, Path(singles_dir))
    singles = [create_session(f, used, warn, threads=threads, trt=trt)[0] for f in files]
    rng = np.random.default_rng(0)
    size, t = info.common.input_size, len(info.tasks)
    outputs = [EMBEDDING_OUTPUT, PROMPT_INDEX_OUTPUT, QUERY_OUTPUT]
    rows = []
    for bs in batch_sizes:
        feed = {INPUT_NAME: rng.random((bs, 3, size, size), dtype=np.float32)}
        row = _paired(lambda: session.run(outputs, feed), [lambda s=s: s.run(outputs[:2], feed) for s in singles],
                      repeats)
        rows.append({"batch_size": bs, **row, "bundle_images_tasks_per_s": bs * t / row["bundle_seconds"],
                     "singles_images_tasks_per_s": bs * t / row["singles_seconds"]})
    return {"benchmark": "embed-bundle", "model": str(path), "tasks": info.task_numbers,
            "singles": [str(f) for f in files], "architecture": info.common.architecture,
            "precision": info.common.precision, "provider": used, "threads": threads, "repeats": repeats, "rows": rows,
            "machine": machine_info()}


def format_bundle(result: dict) -> str:
    """``bench embed``'s table for a bundle, or for a file against another (``--against``)."""
    if result["benchmark"] == "embed-against":
        cols = [("batch_size", "batch", "d"), ("images_per_s", f"{result['precision']} img/s", ".2f"),
                ("baseline_images_per_s", f"{result['baseline_precision']} img/s", ".2f"),
                ("ratio", "speed-up (median)", ".2f"), ("worst_ratio", "worst round", ".2f")]
        head = f"{result['model']} against {result['baseline']} (task {result['task']}) on {result['provider']}"
        return "\n".join([head, format_table(result["rows"], cols)])
    cols = [("batch_size", "batch", "d"), ("bundle_images_tasks_per_s", "bundle img x tasks/s", ".2f"),
            ("singles_images_tasks_per_s", f"{len(result['tasks'])} single files img x tasks/s", ".2f"),
            ("ratio", "bundle / singles (median)", ".2f"), ("worst_ratio", "worst round", ".2f")]
    head = (f"{result['model']} (tasks {', '.join(map(str, result['tasks']))}) vs their single files on "
            f"{result['provider']} ({result['precision']})")
    return "\n".join([head, format_table(result["rows"], cols)])
