"""Accuracy of saved task checkpoints (the reference's ``main.py --eval``, the original notebook's
"Model Evaluation"): for every task checkpoint, top-1 on the test set of every task seen so far, then
the accuracy matrix, average accuracy and forgetting, with the same code and definitions as ``train``'s
``metrics.jsonl`` (``loop.evaluate_task`` and ``loop.forgetting``).

The evaluation setting defaults to the one the checkpoints record in ``args``: the batch size, the
per-class limit, batchwise selection when ``batchwise_prompt`` is set and the gather ``train`` used
(``per-sample`` for checkpoints without one, such as the reference's). Batchwise selection and the
reference's gather make every number depend on how the test set is batched: the test set of a task is
read in order in batches of ``batch_size``, as the reference reads it.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..common.atomic import atomic_file, write_json
from ..common.contract import GATHERS, QUERIES, SELECTIONS, check_choice
from ..common.errors import InputError
from ..common.heatmap import heatmap
from .checkpoint import find_checkpoints, load_checkpoint, model_from_checkpoint
from .data import eval_transform, limit_per_class, load_split, task_classes, task_dataset
from .loop import _device, _init_distributed, evaluate_task, forgetting
from .options import check_number

JSON_FILE, CSV_FILE, HEATMAP_FILE = "accuracy.json", "accuracy.csv", "accuracy_heatmap.png"


@dataclass
class AccuracyOptions:
    """What to evaluate and how; ``None`` takes the value the checkpoints' ``args`` record."""

    checkpoint_dir: str = "output/checkpoint"
    data_path: str = "data"
    out: str = "accuracy"
    batch_size: Optional[int] = None  # args.batch_size, else the reference's 24
    selection: Optional[str] = None  # batchwise when args.batchwise_prompt, else per-sample
    gather: Optional[str] = None  # args.gather (written by train), else per-sample
    query: str = "cls"
    limit_per_class: Optional[int] = None  # args.limit_per_class, else every image
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA, as train evaluates; False: float32, as the reference
    quiet: bool = False

    def __post_init__(self):
        for option, value in (("--batch-size", self.batch_size), ("--limit-per-class", self.limit_per_class)):
            if value is not None:
                check_number(option, value, integer=True, at_least=1)


@dataclass
class AccuracyResult:
    matrix: np.ndarray  # [T, T]: acc[i, t] = top-1 (%) on task i's test set after task t; NaN for i > t
    rows: list[dict]  # per checkpoint, the fields of train's metrics.jsonl rows
    settings: dict
    written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict:
        matrix = [[None if math.isnan(v) else round(float(v), 4) for v in row] for row in self.matrix]
        last = self.rows[-1]
        return {"settings": self.settings, "accuracy_matrix": matrix, "rows": self.rows,
                "average_accuracy": last["average_accuracy"], "forgetting": last["forgetting"]}


def _recorded(a: dict, key: str, source: Path) -> Optional[int]:
    """``args.<key>`` when it is a positive integer, None when absent; InputError otherwise."""
    value = a.get(key)
    if value is not None and (type(value) is not int or value < 1):
        raise InputError(f"{source}: args.{key} {value!r} is not a positive integer; pass --{key.replace('_', '-')}")
    return value


def resolve_settings(opts: AccuracyOptions, args: Optional[object], source: Path) -> dict:
    """The evaluation setting: the options given, else what ``args`` records (checked, never replaced
    when out of range); choices are checked."""
    a = vars(args) if args is not None else {}
    num_tasks = a.get("num_tasks")
    if not isinstance(num_tasks, int) or num_tasks < 1:
        raise InputError(f"{source}: its args do not say how many tasks the classes were split into (num_tasks)")
    batch_size = opts.batch_size if opts.batch_size is not None else _recorded(a, "batch_size", source)
    limit = opts.limit_per_class if opts.limit_per_class is not None else _recorded(a, "limit_per_class", source)
    settings = {
        "batch_size": batch_size if batch_size is not None else 24,  # the reference's
        "selection": opts.selection or ("batchwise" if a.get("batchwise_prompt") else "per-sample"),
        "gather": opts.gather or a.get("gather") or "per-sample",
        "query": opts.query,
        "limit_per_class": limit,
        "num_tasks": num_tasks,
    }
    for name, allowed in (("selection", SELECTIONS), ("gather", GATHERS), ("query", QUERIES)):
        check_choice(f"--{name}", settings[name], allowed)
    return settings


def _checkpoints(checkpoint_dir: str | Path) -> tuple[dict[int, Path], Optional[object]]:
    """Task checkpoints 1..T of the folder and the first one's ``args``. Each is read once up front
    (:func:`load_checkpoint` refuses NaN or Inf weights and dtypes the model does not hold), so a bad
    last one stops the command before any evaluation."""
    found = find_checkpoints(checkpoint_dir)
    if list(found) != list(range(1, len(found) + 1)):
        raise InputError(f"{checkpoint_dir}: task checkpoints must run 1..T without gaps "
                         f"(found tasks {', '.join(map(str, found))})")
    args = [load_checkpoint(path).get("args") for path in found.values()]
    return found, args[0]


def evaluate_checkpoints(opts: AccuracyOptions) -> AccuracyResult:
    """Evaluate every checkpoint of ``opts.checkpoint_dir`` (under torchrun: the test images split across
    processes, counts summed); rank 0 writes JSON, CSV and the heatmap into ``opts.out``."""
    found, args = _checkpoints(opts.checkpoint_dir)
    settings = resolve_settings(opts, args, found[1])
    if len(found) > settings["num_tasks"]:
        raise InputError(f"{opts.checkpoint_dir}: {len(found)} task checkpoints for num_tasks {settings['num_tasks']}")
    test_split = load_split(opts.data_path, "test", False)
    tasks = task_classes(len(test_split.classes), settings["num_tasks"])
    d = _init_distributed(opts.device)
    try:
        device = _device(opts.device, d)
        matrix, rows = _evaluate(found, tasks, test_split, settings, device, d, opts)
    finally:
        if d.world > 1:
            dist.destroy_process_group()
    settings.update(checkpoint_dir=str(opts.checkpoint_dir), data_path=str(opts.data_path), device=str(device),
                    processes=d.world, autocast="bf16" if device.type == "cuda" and opts.bf16 else "none",
                    test_images=[len(limit_per_class(test_split.labels, classes, settings["limit_per_class"]))
                                 for classes in tasks[:len(found)]])
    result = AccuracyResult(matrix, rows, settings)
    if d.main:
        result.written = write_outputs(result, opts.out)
    return result


def _evaluate(found: dict[int, Path], tasks: list[list[int]], test_split, settings: dict, device: torch.device, d,
              opts: AccuracyOptions) -> tuple[np.ndarray, list[dict]]:
    T = len(found)
    acc = np.zeros((T, T))  # zeros below the diagonal's future, as train's and the reference's matrices
    rows, test_sets = [], {}
    amp = device.type == "cuda" and opts.bf16
    bar = tqdm(total=T * (T + 1) // 2, desc="task test sets", unit="set", disable=opts.quiet or not d.main)
    for t, path in found.items():
        model, _ = model_from_checkpoint(path)
        model.to(device)
        for i in range(t):
            if i not in test_sets:
                test_sets[i] = task_dataset(test_split, tasks[i], eval_transform(model.cfg.img_size),
                                            settings["limit_per_class"])
            try:
                acc[i, t - 1] = evaluate_task(model, test_sets[i], device, settings["batch_size"], d,
                                              settings["selection"], amp, gather=settings["gather"],
                                              query=settings["query"])
            except FloatingPointError as e:
                raise InputError(f"{path}: the model gives {e} of task {i + 1}: no accuracy to report") from None
            bar.update()
        col = acc[:t, t - 1]
        rows.append({"task": t, "accuracy": [round(float(a), 4) for a in col],
                     "average_accuracy": round(float(col.mean()), 4), "forgetting": round(forgetting(acc, t - 1), 4),
                     "checkpoint": str(path)})
    bar.close()
    matrix = np.where(np.tri(T, dtype=bool).T, acc, np.nan)
    return matrix, rows


def write_outputs(result: AccuracyResult, out: str | Path) -> list[Path]:
    """``accuracy.json``, ``accuracy.csv`` (rows: test set of task i; columns: after task t) and the heatmap."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create ({e.strerror or e})") from None
    T = len(result.rows)
    paths = [write_json(out / JSON_FILE, result.to_dict()), out / CSV_FILE, out / HEATMAP_FILE]
    with atomic_file(paths[1]) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["test_set"] + [f"after_task_{t + 1}" for t in range(T)])
        for i, row in enumerate(result.to_dict()["accuracy_matrix"]):
            w.writerow([f"task_{i + 1}"] + ["" if v is None else v for v in row])
    s = result.settings
    title = (f"top-1 %: avg {result.rows[-1]['average_accuracy']:.2f}, forgetting {result.rows[-1]['forgetting']:.2f}\n"
             f"gather {s['gather']}, selection {s['selection']}, query {s['query']}, batch {s['batch_size']}")
    heatmap(paths[2], result.matrix, [f"task {t + 1}" for t in range(T)], title, None,
            "after training task", "test set of task")
    return paths


def format_table(result: AccuracyResult) -> str:
    """The accuracy matrix (rows: test set of task i; columns: after task t) with average and forgetting."""
    s = result.settings
    T = len(result.rows)
    lines = [f"gather {s['gather']}, selection {s['selection']}, query {s['query']}, batch size {s['batch_size']}, "
             f"{s['device']} ({s['autocast']} autocast), {s['processes']} process(es)",
             "test set \\ after task " + "".join(f"{t + 1:>8}" for t in range(T))]
    for i in range(T):
        cells = "".join(f"{'':>8}" if math.isnan(v) else f"{v:8.2f}" for v in result.matrix[i])
        lines.append(f"{'task ' + str(i + 1):<22}{cells}")
    lines.append(f"{'average accuracy':<22}" + "".join(f"{r['average_accuracy']:8.2f}" for r in result.rows))
    lines.append(f"{'forgetting':<22}" + "".join(f"{r['forgetting']:8.2f}" for r in result.rows))
    return "\n".join(lines)
