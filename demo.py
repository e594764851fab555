"""The whole chain in one run: train -> export -> verify -> embed -> evaluate -> report (embedding with the
bundle of every task, so the frozen backbone is evaluated beside the tasks).

Every stage calls the same library functions as its own command; nothing here is demo-only except
choosing small settings and, offline, generating data in CIFAR's on-disk format.
"""
from __future__ import annotations

import resource
import shlex
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import numpy as np

from .common.cifar import download_cifar, load_cifar, write_cifar
from .common.errors import InputError
from .common.provenance import GENERATED_NOTE, RANDOM_BACKBONE_NOTE, notes as provenance_notes
from .common.synthetic import write_synthetic_cifar
from .infer.runtime.options import RuntimeOptions

if TYPE_CHECKING:
    from .evaluate.pipeline import Evaluation


@dataclass(frozen=True)
class DemoSettings:
    """How small the demo runs. ``arch`` overrides the timm model's widths (the smoke setting)."""

    model: str
    arch: tuple[tuple[str, int], ...]
    num_tasks: int
    classes_per_task: int
    train_per_class: int
    test_per_class: int
    eval_per_class: int
    epochs: int
    batch_size: int
    lr: float
    verify_count: int
    verify_batch_sizes: tuple[int, ...]


# The demo trains for a few dozen steps, so its base learning rate is 10x the reference's 0.03:
# at 0.03 the keys barely move and every image picks the same prompt.
# Sized for <= 500 CPU-seconds on two cores (train is most of it; embed runs 4 passes per image).
DEMO = DemoSettings(model="vit_tiny_patch16_224", arch=(), num_tasks=3, classes_per_task=2, train_per_class=40,
                    test_per_class=20, eval_per_class=20, epochs=2, batch_size=24, lr=0.3, verify_count=16,
                    verify_batch_sizes=(1, 7, 16))
# A miniature ViT on 32x32 inputs: the same code paths in well under a minute, for CI and the tests.
SMOKE = DemoSettings(model="vit_tiny_patch16_224",
                     arch=(("img_size", 32), ("patch_size", 8), ("embed_dim", 64), ("depth", 6), ("num_heads", 4)),
                     num_tasks=2, classes_per_task=2, train_per_class=16, test_per_class=6, eval_per_class=8,
                     epochs=2, batch_size=8, lr=0.3, verify_count=16, verify_batch_sizes=(1, 7, 16))

def _real_cifar(data_path: Path, download: bool) -> Optional[tuple]:
    """(CIFAR-100 train, CIFAR-100 test, CIFAR-10 test) when present or downloadable, else None."""
    try:
        if download:
            download_cifar(data_path, "cifar100")
            download_cifar(data_path, "cifar10")
        return (load_cifar(data_path, "cifar100", "train"), load_cifar(data_path, "cifar100", "test"),
                load_cifar(data_path, "cifar10", "test"))
    except (InputError, OSError, RuntimeError):
        return None


def _subset(split, classes: int, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    from .train.data import limit_per_class

    idx = limit_per_class(split.labels, list(range(classes)), per_class)
    return split.images[idx], split.labels[idx]


def prepare_data(workdir: Path, data_path: Path, download: bool, s: DemoSettings) -> tuple[Path, bool]:
    """Write the demo's CIFAR-100 (training) and CIFAR-10 (evaluation) subsets under ``workdir/data``.

    Returns the folder and whether the data is generated.
    """
    out = workdir / "data"
    classes = s.num_tasks * s.classes_per_task
    real = _real_cifar(data_path, download)
    if real is not None:
        train, test, eval10 = real
        write_cifar(out, "cifar100", {"train": _subset(train, classes, s.train_per_class),
                                      "test": _subset(test, classes, s.test_per_class)}, train.classes[:classes])
        write_cifar(out, "cifar10", {"train": _subset(eval10, 10, 1), "test": _subset(eval10, 10, s.eval_per_class)},
                    eval10.classes)
        return out, False
    write_synthetic_cifar(out, "cifar100", classes, s.train_per_class, s.test_per_class, seed=1)
    # Evaluation classes disjoint from the training classes, as CIFAR-10 is from CIFAR-100.
    write_synthetic_cifar(out, "cifar10", 10, 1, s.eval_per_class, seed=2, first_class=classes)
    return out, True


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended (workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Stages:
    """Logs each stage's start and records its wall time (``times``) and CPU time (``cpu``, seconds of
    every core: on a shared machine the wall time depends on the load, the CPU time much less)."""

    def __init__(self, log: Callable[[str], None]):
        self.log, self.times, self.cpu = log, {}, {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.log(f"== {name}")
        t0, c0 = time.perf_counter(), cpu_seconds()
        yield
        self.times[name] = round(time.perf_counter() - t0, 1)
        self.cpu[name] = round(cpu_seconds() - c0, 1)
        self.log(f"   {name}: {self.times[name]} s ({self.cpu[name]} CPU-s)")


def _choose_provider(provider: str, log: Callable[[str], None]) -> str:
    if provider == "auto":
        from .infer.runtime.session import gpu_problem

        if problem := gpu_problem("cuda"):
            log(f"   CUDA unavailable ({problem}); running on CPU")
            return "cpu"
    return provider


def train_stage(workdir: Path, data: Path, s: DemoSettings, pretrained_weights: Optional[str], smoke: bool,
                log: Callable[[str], None], distill: tuple[float, str] = (0.0, "cosine")) -> list[dict]:
    """Train every task; falls back to a random backbone (recorded in the checkpoints' provenance)
    when no pretrained weights can be had. ``distill``: (weight, kind) of train's feature distillation."""
    from .train.loop import TrainOptions, train
    from .train.weights import PretrainedUnavailable, hub_reachable

    pretrained = pretrained_weights is not None or (not smoke and hub_reachable())
    if not pretrained:
        log(f"   !!! {RANDOM_BACKBONE_NOTE}")
    opts = TrainOptions(data_path=str(data), output_dir=str(workdir / "output"), num_tasks=s.num_tasks,
                        epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, workers=0, quiet=True,
                        pretrained=pretrained, pretrained_weights=pretrained_weights, device="cpu",
                        distill_weight=distill[0], distill_kind=distill[1])
    arch = {"model": s.model, **dict(s.arch)}
    try:
        return train(opts, arch, log=lambda m: log(f"   {m}")).rows
    except PretrainedUnavailable:  # only a download failure: a diverged run or bad data stops the demo
        if pretrained_weights is not None:
            raise
        log(f"   !!! pretrained download failed; {RANDOM_BACKBONE_NOTE}")
        return train(TrainOptions(**{**asdict(opts), "pretrained": False}), arch, log=lambda m: log(f"   {m}")).rows


def export_provenance(path: Path) -> dict:
    """The provenance an export's metadata carries (what its checkpoint recorded in training)."""
    from .infer.runtime.session import create_session, model_info

    return model_info(create_session(path, "cpu")[0], path).provenance


def export_stage(workdir: Path, s: DemoSettings, log: Callable[[str], None]) -> tuple[list[Path], Path]:
    """Every task's own file (what one deploys), then the bundle of all tasks (what the study embeds with)."""
    from .export.bundle import DEFAULT_NAME, export_bundle
    from .export.onnx_export import TaskExporter

    exports, exporter = [], TaskExporter()  # the tasks share one trace
    checkpoints = {t: workdir / "output" / "checkpoint" / f"task{t}_checkpoint.pth" for t in range(1, s.num_tasks + 1)}
    for t, checkpoint in checkpoints.items():
        r = exporter.export(checkpoint, workdir / "exports" / f"task{t}.onnx", task=t)
        exports.append(r.path)
        log(f"   {r.path} ({r.file_bytes / 1e6:.1f} MB)")
    r = export_bundle(checkpoints, workdir / "exports" / DEFAULT_NAME)
    log(f"   {r.path} ({r.file_bytes / 1e6:.1f} MB: every task, the frozen backbone stored once)")
    return exports, r.path


def verify_stage(workdir: Path, data: Path, exports: list[Path], bundle: Path, s: DemoSettings, provider: str,
                 log: Callable[[str], None]) -> None:
    """Verify every export (each task of the bundle and its query output too) against its checkpoint;
    a parity failure stops the demo."""
    from .export.verify import Inputs
    from .export.verify_file import verify_file

    parity = []
    inputs = Inputs(dataset="cifar10:test", data_path=str(data), count=s.verify_count)
    for path in [*exports, bundle]:
        reports = verify_file(path, workdir / "output" / "checkpoint", inputs=inputs,
                              runtime=RuntimeOptions(provider=provider), batch_sizes=s.verify_batch_sizes,
                              report=workdir / "verify" / f"verify_{path.stem}.json")
        parity += [r.passed for r in reports]
        verdicts = [("PASS" if r.passed else "FAIL") if len(reports) == 1 else
                    f"{r.context['task']} {'PASS' if r.passed else 'FAIL'}" for r in reports]
        log(f"   {path.name}: {', '.join(verdicts)}")
    if not all(parity):
        raise RuntimeError("ONNX parity failed; see the verify_*.json reports")


def evaluate_stage(workdir: Path, query, gallery, provenance: dict, notes: list[str],
                   log: Callable[[str], None]) -> tuple[list[Path], Evaluation]:
    from .evaluate.pipeline import evaluate_sets
    from .evaluate.report.writer import summary, write_reports

    ev = evaluate_sets(query, gallery, notes=notes)
    ev.protocol["demo"] = provenance
    ev.provenance = [p or {"data": provenance["data"], "backbone": provenance["backbone"]} for p in ev.provenance]
    written = write_reports(ev, workdir / "reports")
    log(summary(ev))
    return written, ev


ADAPTER_FIT_DATA = "cifar100:train"  # disjoint from the evaluation's CIFAR-10 and as many items as the embedding's width


def adapter_stage(workdir: Path, data: Path, bundle: Path, query, gallery, ev, provider: str,
                  log: Callable[[str], None]) -> Path:
    """Fit one orthogonal query adapter for the least compatible pair (the lowest primary-metric
    difference) on the CIFAR-100 training subset embedded by both models, and add its adapted row
    (with the learning curve) to the report's JSON, Markdown and HTML, as ``evaluate --adapters`` does."""
    from .evaluate.adapt.collect import evaluate_rows, row_inputs
    from .evaluate.adapt.fit import fit_adapter
    from .evaluate.decide import DecisionOptions
    from .evaluate.pipeline import collect_from_models
    from .evaluate.report.adapters import adapters_summary
    from .evaluate.report.writer import rewrite_adapters

    worst = min(ev.decision.pairs, key=lambda p: p.difference)
    fit, _ = collect_from_models([bundle], ADAPTER_FIT_DATA, ADAPTER_FIT_DATA, data, workdir / "embeddings",
                                 runtime=RuntimeOptions(provider=provider))
    fit = {s.model_id: s for s in fit}
    adapter = fit_adapter(fit[worst.query], fit[worst.gallery], kind="orthogonal", direction="query")
    path = adapter.save(workdir / "adapters" / f"{adapter.default_id}.adapter.npz")
    q, g = ([next(s for s in sets if s.model_id == m) for m in ev.models] for sets in (query, gallery))  # task order
    ev.adapters = evaluate_rows(ev, q, g, row_inputs([(path, adapter)], [], q, g, store=workdir / "embeddings"),
                                DecisionOptions())
    rewrite_adapters(ev, workdir / "reports")
    for line in adapters_summary(ev):
        log(line)
    return path


def q(path: str | Path) -> str:
    """``path`` as one shell word."""
    return shlex.quote(str(path))


def next_commands(workdir: str | Path, s: DemoSettings, *, launcher: str) -> list[str]:
    """The stages one by one on the demo's files, as commands that run from the folder the demo ran in
    (``workdir`` as it was given; ``launcher``: how to start the command line, e.g. ``python cli.py``):
    export and verify the last task's file, embed it, evaluate every task's file and
    the release decision for the last task on the first task's gallery (``--allow-demo``: the demo's data
    is generated or its backbone random, which the gate otherwise refuses)."""
    w, last = Path(workdir), s.num_tasks
    ckpt, exports, data, store = q(w / "output" / "checkpoint"), w / "exports", q(w / "data"), q(w / "embeddings")
    files = [q(exports / f"task{t}.onnx") for t in range(1, last + 1)]
    commands = [f"export --task {last} --checkpoint-dir {ckpt} --output-dir {q(exports)}",
                f"verify --task {last} --export-dir {q(exports)} --checkpoint-dir {ckpt} --dataset cifar10:test "
                f"--data-path {data} --limit {s.verify_count}",
                f"embed --model {files[-1]} --dataset cifar10:test --data-path {data} --store {store}",
                f"evaluate --models {' '.join(files)} --query cifar10:test --data-path {data} --store {store} "
                f"--out {q(w / 'reports-tasks')}",
                f"gate --report {q(w / 'reports-tasks')} --deployed {files[0]} --candidate {files[-1]} --allow-demo"]
    return [f"{launcher} {c}" for c in commands]


def run_demo(workdir: str | Path = "demo-run", data_path: str | Path = "data", download: bool = False,
             pretrained_weights: Optional[str] = None, smoke: bool = False, provider: str = "auto",
             log: Callable[[str], None] = print, distill: tuple[float, str] = (0.0, "cosine")) -> dict:
    """Run every stage into ``workdir``; returns a summary with the report's location, stage times
    (``times`` wall, ``cpu`` CPU) and the whole run's ``seconds`` and ``cpu_seconds``.
    ``distill``: (weight, kind) of a feature-distillation term in training (weight 0: none)."""
    from .evaluate.pipeline import collect_from_models

    start, cpu_start = time.perf_counter(), cpu_seconds()
    s = SMOKE if smoke else DEMO
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    stages = _Stages(log)
    provider = _choose_provider(provider, log)
    with stages.stage("data"):
        data, generated = prepare_data(workdir, Path(data_path), download, s)
        if generated:
            log(f"   !!! {GENERATED_NOTE}")
    with stages.stage("train"):
        rows = train_stage(workdir, data, s, pretrained_weights, smoke, log, distill)
    with stages.stage("export"):
        exports, bundle = export_stage(workdir, s, log)
        model_provenance = export_provenance(exports[-1])
        notes = provenance_notes(model_provenance)
    with stages.stage("verify"):
        verify_stage(workdir, data, exports, bundle, s, provider, log)
    with stages.stage("embed"):  # one pass of the bundle: every task's sets and the frozen backbone's
        query, gallery = collect_from_models([bundle], "cifar10:test", "cifar10:test", data, workdir / "embeddings",
                                             runtime=RuntimeOptions(provider=provider))
    with stages.stage("evaluate"):
        provenance = {**model_provenance, "evaluation_data": "generated" if generated else "cifar10", "notes": notes,
                      "settings": {**asdict(s), "arch": dict(s.arch)}, "training": rows,
                      "distillation": {"weight": distill[0], "kind": distill[1]}}
        written, ev = evaluate_stage(workdir, query, gallery, provenance, notes, log)
    if ev.decision.pairs:
        with stages.stage("adapt"):
            adapter_stage(workdir, data, bundle, query, gallery, ev, provider, log)
    return {"reports": [str(p) for p in written], "times": stages.times, "cpu": stages.cpu, "generated": generated,
            "notes": notes, "seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu_start}
