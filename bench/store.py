"""``bench store``: the embedding loop's memory at two data sizes and the cost of resuming after a kill.

Each run is ``cli.py embed`` in a child process on ``generated:N`` (8x8 images made from the index,
no files), so its peak resident memory (``wait4``'s ``ru_maxrss``) is the command's own.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..common.errors import InputError
from ..common.faults import ENV
from ..common.tables import format_table
from .machine import machine_info

CLI = Path(__file__).resolve().parents[1] / "cli.py"


def run_embed(model: Path, count: int, store: Path, *, shard_rows: int, batch_size: int,
              kill_at: str | None = None) -> dict:
    """One ``embed`` of ``generated:count`` into ``store``: seconds, peak RSS (MiB) and the rows it took
    over from an interrupted run."""
    args = [sys.executable, str(CLI), "embed", "--model", str(model), "--dataset", f"generated:{count}", "--store",
            str(store), "--shard-rows", str(shard_rows), "--batch-size", str(batch_size), "--provider", "cpu",
            "--quiet"]
    env = {**os.environ, **({ENV: kill_at} if kill_at else {})}
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(args, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    if code != (-signal.SIGKILL if kill_at else 0):
        raise InputError(f"bench store: embed of generated:{count} ended with code {code}: {stderr.strip()[-300:]}")
    resumed = re.search(r"\((\d+) rows resumed", stdout)
    return {"rows": count, "seconds": seconds, "max_rss_mib": usage.ru_maxrss / 1024,
            "resumed_rows": int(resumed.group(1)) if resumed else 0}


def stand_in_model(workdir: Path) -> Path:
    """A tiny export on 8x8 inputs (random weights, 16 dimensions) at ``workdir/tiny.onnx``: the
    embedding loop's own costs, with next to no model time."""
    from ..common.contract import FORMAT_VERSION
    from ..export.tiny import write_tiny_model
    from ..infer.runtime.metadata import ModelInfo, Preprocessing

    info = ModelInfo(format_version=FORMAT_VERSION, task=1, checkpoint="none", checkpoint_sha256="0" * 64,
                     model="tiny-stand-in", embedding_dim=16, input_size=8, top_k=1, pool="cls",
                     selection="per-sample", precision="fp32", preprocessing=Preprocessing(resize=8, crop=8),
                     versions={}, provenance={"data": "generated", "backbone": "random"})
    return write_tiny_model(workdir / "tiny.onnx", info)


def bench_store(model: Optional[Path], workdir: Path, *, small: int, large: int, resume_rows: int, shard_rows: int,
                batch_size: int) -> dict:
    """Peak RSS of embed on ``small`` and ``large`` rows; a run of ``resume_rows`` uninterrupted, then
    killed (SIGKILL) halfway and resumed, and the ratio of the two times. ``workdir`` is replaced;
    ``model`` None: :func:`stand_in_model` there."""
    if not 0 < small < large or resume_rows < 2 * batch_size:
        raise InputError("bench store: need 0 < --small < --large and --resume-rows >= 2 x --batch-size")
    shutil.rmtree(workdir, ignore_errors=True)
    model = Path(model) if model is not None else stand_in_model(workdir)
    memory = [run_embed(model, n, workdir / f"rss-{n}", shard_rows=shard_rows, batch_size=batch_size)
              for n in (small, large)]
    full = run_embed(model, resume_rows, workdir / "full", shard_rows=shard_rows, batch_size=batch_size)
    half_batches = resume_rows // 2 // batch_size
    killed = run_embed(model, resume_rows, workdir / "resumed", shard_rows=shard_rows, batch_size=batch_size,
                       kill_at=f"embed.batch:{half_batches}")
    resumed = run_embed(model, resume_rows, workdir / "resumed", shard_rows=shard_rows, batch_size=batch_size)
    same = _set_files(workdir / "full") == _set_files(workdir / "resumed")
    computed = half_batches * batch_size + resume_rows - resumed["resumed_rows"]  # rows embedded by both runs
    labels_mib = large * 8 / 2**20
    return {"benchmark": "store", "model": str(model), "shard_rows": shard_rows, "batch_size": batch_size,
            "memory": memory, "labels_mib_at_large": labels_mib,
            "rss_ratio": memory[1]["max_rss_mib"] / (memory[0]["max_rss_mib"] + labels_mib),
            "resume": {"rows": resume_rows, "killed_after_batches": half_batches, "uninterrupted_s": full["seconds"],
                       "killed_s": killed["seconds"], "resumed_s": resumed["seconds"],
                       "ratio": (killed["seconds"] + resumed["seconds"]) / full["seconds"],
                       "rows_computed": computed, "work_ratio": computed / resume_rows, "identical": same},
            "machine": machine_info()}


def _set_files(store: Path) -> dict[str, bytes]:
    """The shard files of the one set under ``store`` (the manifests differ in their time fields)."""
    return {f.name: f.read_bytes() for f in sorted(store.glob("*/*/*.npy"))}


def format_store(result: dict) -> str:
    """``bench store``'s table, memory ratio and resume figures."""
    r, (small, large) = result["resume"], (m["rows"] for m in result["memory"])
    table = format_table(result["memory"], [("rows", "rows", ",d"), ("seconds", "embed s", ".1f"),
                                            ("max_rss_mib", "max RSS MiB", ".1f")])
    return (f"{table}\nRSS at {large:,} / (RSS at {small:,} + labels {result['labels_mib_at_large']:.1f} MiB): "
            f"{result['rss_ratio']:.3f}\nresume after SIGKILL at 50 % of {r['rows']:,} rows: "
            f"{r['killed_s']:.1f} s + {r['resumed_s']:.1f} s vs {r['uninterrupted_s']:.1f} s uninterrupted = "
            f"{r['ratio']:.3f}; rows embedded {r['rows_computed']:,} = {r['work_ratio']:.3f} x; "
            f"shards identical: {r['identical']}")
