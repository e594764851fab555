"""Continual training over Split CIFAR-100, reproducing the public reference's
procedure (JH-LEE-KR/dualprompt-pytorch, config ``cifar100_dualprompt``).

Per task t: pool entry t starts as a copy of entry t-1 (shared pool), a fresh Adam over the trainable
parameters (g_prompt, e-prompts, keys, head), cross-entropy with logits of classes outside the task
set to -inf, minus the pull constraint, gradient clipping at 1.0. Then accuracy on every seen task,
average accuracy and forgetting; a checkpoint per task. Distributed when launched with torchrun.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from ..common.atomic import atomic_file
from ..common.cifar import CifarSplit
from ..common.errors import InputError
from ..common.provenance import GENERATED, RANDOM
from .checkpoint import (check_state_dict, checkpoint_path, config_to_args, list_checkpoints, load_checkpoint,
                         provenance_from_args, save_checkpoint)
from .distill import Distiller
from .data import eval_transform, load_split, task_classes, task_dataset, train_transform
from .model import DualPromptConfig, DualPromptViT
from .options import TrainOptions
from .weights import load_pretrained_backbone


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _device(name: str, d: _Dist) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and d.world > 1:
        name = f"cuda:{d.local_rank}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available to this torch build or machine")
    if name not in ("cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name):
        raise InputError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    dev = torch.device(name)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def forgetting(acc: np.ndarray, t: int) -> float:
    """Reference forgetting after task t (0-based) from the accuracy matrix acc[i][t']:
    mean over i < t of max over t' <= t of acc[i][t'] minus acc[i][t]."""
    if t == 0:
        return 0.0
    return float(np.mean((acc[:t, :t + 1].max(axis=1) - acc[:t, t])))


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _read_metrics(path: Path, upto: int) -> list[dict]:
    """The rows of tasks 1..``upto`` in ``metrics.jsonl``; InputError naming the line that is not a row."""
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            valid = isinstance(row, dict) and type(row.get("task")) is int and row["task"] >= 1 \
                and isinstance(row.get("accuracy"), list) and len(row["accuracy"]) == row["task"] \
                and all(type(a) in (int, float) and 0 <= a <= 100 for a in row["accuracy"])  # NaN fails too
        except ValueError:
            valid = False
        if not valid:
            raise InputError(f"{path}: line {number} is not a metrics row (task, accuracy % per seen task); "
                             "fix or delete it to resume")
        rows.append(row)
    return [r for r in rows if r["task"] <= upto]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))  # never a bare NaN


@torch.inference_mode()
def evaluate_task(model: torch.nn.Module, dataset, device: torch.device, batch_size: int, d: _Dist,
                  selection: str, amp: bool, *, gather: str = "per-sample", query: str = "cls",
                  queries: Optional[list[torch.Tensor]] = None) -> float:
    """Top-1 accuracy (%) over all classes, the samples split across ranks and the counts summed
    (``gather``, ``query``: the model's reference modes). ``FloatingPointError`` ("NaN or Inf logits
    on n of N test images") when any image's logits are not all finite: an argmax of NaN is no answer.

    ``queries``: the frozen backbone's q(x) of each batch, filled on the first call and read on later
    ones (after every task, a run evaluates the same test images through the same frozen backbone:
    the query pass is half of the work, and its result never changes). None: computed each time."""
    subset = torch.utils.data.Subset(dataset, range(d.rank, len(dataset), d.world))
    loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, shuffle=False)
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct, images, images with non-finite logits
    for b, (x, y) in enumerate(loader):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if queries is not None and b == len(queries):
                queries.append(model.query(x, query=query))
            logits = model(x, selection=selection, gather=gather, query=query,
                           query_features=queries[b] if queries is not None else None)["logits"]
        counts += torch.stack([(logits.argmax(1) == y).sum(), torch.tensor(len(y), device=device),
                               (~torch.isfinite(logits).all(1)).sum()]).to(torch.float64)
    if d.world > 1:
        dist.all_reduce(counts)
    correct, images, broken = counts.tolist()
    if broken:
        raise FloatingPointError(f"NaN or Inf logits on {broken:.0f} of {images:.0f} test images")
    return float(100.0 * correct / max(images, 1))


@dataclass
class TrainResult:
    rows: list[dict]  # one metrics row per trained task, as in metrics.jsonl
    model: DualPromptViT


def train(opts: TrainOptions, arch: dict, log: Callable[[str], None] = print) -> TrainResult:
    """Run (or resume) continual training; returns the metric rows and the final model.

    ``arch``: architecture keywords for ``DualPromptConfig.from_name`` (``model`` and overrides).
    """
    d = _init_distributed(opts.device)
    try:
        return _train(opts, arch, d, _device(opts.device, d), log if d.main else (lambda _: None))
    finally:
        if d.world > 1:
            dist.destroy_process_group()


@dataclass
class _Run:
    """What every task of a run shares: settings, data, model and the rows written so far."""

    opts: TrainOptions
    d: _Dist
    device: torch.device
    cfg: DualPromptConfig
    model: DualPromptViT
    train_split: CifarSplit
    tasks: list[list[int]]
    test_sets: list
    args: argparse.Namespace
    ckpt_dir: Path
    metrics_path: Path
    net: Optional[torch.nn.Module] = None  # what trains: the model, or its DistributedDataParallel wrapper
    test_queries: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # per test set: see evaluate_task


def _train(opts: TrainOptions, arch: dict, d: _Dist, device: torch.device, log: Callable[[str], None]) -> TrainResult:
    run, start = _initialise(opts, arch, d, device, log)
    if start >= len(run.tasks):
        log(f"all {len(run.tasks)} tasks already trained in {run.ckpt_dir}")
        return TrainResult(_read_metrics(run.metrics_path, start), run.model.eval())
    run.model.freeze_backbone()
    run.model.to(device)
    if d.world > 1:
        ids = [device] if device.type == "cuda" else None
        run.net = torch.nn.parallel.DistributedDataParallel(run.model, device_ids=ids)
    rows = _read_metrics(run.metrics_path, start)
    acc = np.zeros((len(run.tasks), len(run.tasks)))
    for r in rows:
        acc[: r["task"], r["task"] - 1] = r["accuracy"]
    for t in range(start, len(run.tasks)):
        t0 = time.time()
        optimizer, epoch_losses, train_accuracy, distill_losses = _train_task(run, t)
        row = _evaluate_seen(run, t, acc)
        row.update({"epoch_losses": epoch_losses, "distill_weight": opts.distill_weight,
                    "distill_kind": opts.distill_kind, "distill_losses": distill_losses, "train_accuracy": train_accuracy,
                    "seconds": round(time.time() - t0, 2), "checkpoint": str(checkpoint_path(run.ckpt_dir, t + 1))})
        rows = [r for r in rows if r["task"] < t + 1] + [row]
        if d.main:
            save_checkpoint(checkpoint_path(run.ckpt_dir, t + 1), run.model, optimizer, opts.epochs - 1, run.args)
            _write_metrics(run.metrics_path, rows)
        if d.world > 1:
            dist.barrier()
        log(f"task {t + 1}/{len(run.tasks)}: accuracy per seen task {row['accuracy']}  "
            f"average {row['average_accuracy']:.2f}  forgetting {row['forgetting']:.2f}  "
            f"loss {epoch_losses[0]:.4f} -> {epoch_losses[-1]:.4f}  ({row['seconds']:.0f} s)")
    log(f"done: {len(run.tasks)} tasks, average accuracy {rows[-1]['average_accuracy']:.2f}, "
        f"forgetting {rows[-1]['forgetting']:.2f}; checkpoints in {run.ckpt_dir}, metrics in {run.metrics_path}")
    return TrainResult(rows, run.model.eval())


def _initialise(opts: TrainOptions, arch: dict, d: _Dist, device: torch.device,
                log: Callable[[str], None]) -> tuple[_Run, int]:
    """Data, model (resumed from the last complete task, or with its backbone initialised) and the
    checkpoint ``args``; returns the run and the number of tasks already done."""
    out = Path(opts.output_dir)
    ckpt_dir = out / "checkpoint"
    train_split = load_split(opts.data_path, "train", opts.download and d.main)
    test_split = load_split(opts.data_path, "test", opts.download and d.main)
    tasks = task_classes(len(train_split.classes), opts.num_tasks)
    try:
        cfg = DualPromptConfig.from_name(**{**arch, "num_classes": len(train_split.classes)})
    except ValueError as e:
        raise InputError(str(e)) from None
    _seed(opts.seed)
    model = DualPromptViT(cfg)
    start = 0
    if opts.resume and (found := list_checkpoints(ckpt_dir)):
        start = max(k for k in found if all(j in found for j in range(1, k + 1))) if 1 in found else 0
    if start:
        ckpt = load_checkpoint(checkpoint_path(ckpt_dir, start))
        check_state_dict(model, ckpt["model"], checkpoint_path(ckpt_dir, start))
        model.load_state_dict(ckpt["model"])
        backbone = provenance_from_args(ckpt.get("args")).get("backbone", "unknown (resumed from an older checkpoint)")
        log(f"resuming after task {start} ({checkpoint_path(ckpt_dir, start)})")
    elif opts.pretrained:
        source = load_pretrained_backbone(model, opts.pretrained_weights)
        backbone = f"pretrained {source}"
        log(f"pretrained backbone: {source}")
    else:
        backbone = RANDOM
        log("backbone: random initialisation (--no-pretrained)")
    provenance = {"data": GENERATED if train_split.generated else "cifar100", "backbone": backbone}
    args = config_to_args(cfg, num_tasks=len(tasks), epochs=opts.epochs, batch_size=opts.batch_size,
                          lr=opts.lr * opts.batch_size / 256, pretrained=opts.pretrained, clip_grad=opts.clip_grad,
                          pull_constraint_coeff=opts.pull_constraint_coeff,
                          seed=opts.seed, data_path=str(opts.data_path), dataset="Split-CIFAR100",
                          output_dir=str(out), batchwise_prompt=opts.selection == "batchwise",
                          limit_per_class=opts.limit_per_class, opt="adam", weight_decay=0.0, sched="constant",
                          reinit_optimizer=True, distributed=d.world > 1, world_size=d.world, provenance=provenance,
                          gather=opts.gather, distill_weight=opts.distill_weight, distill_kind=opts.distill_kind)
    test_sets = [task_dataset(test_split, c, eval_transform(cfg.img_size), opts.limit_per_class) for c in tasks]
    run = _Run(opts, d, device, cfg, model, train_split, tasks, test_sets, args, ckpt_dir, out / "metrics.jsonl", model)
    return run, start


def _task_loader(run: _Run, t: int) -> tuple[torch.utils.data.DataLoader, torch.utils.data.Sampler]:
    """Task ``t``'s training images, shuffled (across the processes under torchrun), and their sampler."""
    opts, d = run.opts, run.d
    train_set = task_dataset(run.train_split, run.tasks[t], train_transform(run.cfg.img_size), opts.limit_per_class)
    sampler = torch.utils.data.DistributedSampler(train_set, d.world, d.rank, shuffle=True, seed=opts.seed + t) \
        if d.world > 1 else torch.utils.data.RandomSampler(train_set)
    loader = torch.utils.data.DataLoader(train_set, batch_size=opts.batch_size, sampler=sampler,
                                         num_workers=opts.workers, drop_last=False,
                                         persistent_workers=opts.workers > 0)
    return loader, sampler


def _train_task(run: _Run, t: int) -> tuple[torch.optim.Optimizer, list[float], float, Optional[list[float]]]:
    """Train task ``t`` (0-based); returns its optimizer, the mean loss of each epoch, the last
    epoch's training accuracy (%) and, with feature distillation, its mean term per epoch. Stops with
    an InputError as soon as the loss or a trained parameter is NaN or Inf (:func:`_stop_if_diverged`)."""
    opts, d, device, cfg, model = run.opts, run.d, run.device, run.cfg, run.model
    k = cfg.top_k
    _seed(opts.seed + t)
    distiller = Distiller(model, opts.distill_kind, selection=opts.selection, gather=opts.gather) \
        if t > 0 and opts.distill_weight else None
    if t > 0 and (t + 1) * k <= cfg.pool_size:
        with torch.no_grad():
            model.e_prompt.prompt[:, :, t * k:(t + 1) * k] = model.e_prompt.prompt[:, :, (t - 1) * k:t * k]
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in trained]
    optimizer = torch.optim.Adam(params, lr=opts.lr * opts.batch_size / 256, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)
    loader, sampler = _task_loader(run, t)
    if distiller:
        distiller.prepare(loader, run.tasks[t], [c for task in run.tasks[:t + 1] for c in task], device)
    amp, net = device.type == "cuda", run.net
    outside = torch.tensor(sorted(set(range(cfg.num_classes)) - set(run.tasks[t])), dtype=torch.long, device=device)
    model.train()
    quiet = opts.quiet or not d.main
    epochs = tqdm(range(opts.epochs), desc=f"task {t + 1}/{len(run.tasks)}", disable=quiet, leave=False)
    epoch_losses, distill_losses = [], []
    for epoch in epochs:
        if d.world > 1:
            sampler.set_epoch(epoch)
        seen = correct = 0
        loss_sum = distill_sum = 0.0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", disable=quiet, leave=False)
        for step, (x, y) in enumerate(batches, 1):
            x, y = x.to(device), y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                res = net(x, task_id=t, selection=opts.selection, gather=opts.gather)
                term = distiller.term(x, y, res["embedding"]) if distiller else None
            logits = res["logits"].float().index_fill(1, outside, float("-inf"))
            loss = F.cross_entropy(logits, y) - opts.pull_constraint_coeff * res["reduce_sim"].float()
            if distiller:
                loss = loss + opts.distill_weight * term
                distill_sum += term.item() * len(y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, opts.clip_grad)
            optimizer.step()
            value = loss.item()
            _stop_if_diverged(run, t, f"epoch {epoch + 1}, step {step} of {len(loader)}", value, trained)
            seen += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += value * len(y)
            batches.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{100 * correct / seen:.1f}")
        epoch_losses.append(round(loss_sum / max(seen, 1), 6))
        distill_losses.append(round(distill_sum / max(seen, 1), 6))
        epochs.set_postfix(loss=f"{epoch_losses[-1]:.4f}", acc=f"{100 * correct / max(seen, 1):.1f}")
    return optimizer, epoch_losses, round(100 * correct / max(seen, 1), 4), distill_losses if distiller else None


def _way_on(run: _Run, t: int) -> str:
    """What a run stopped in task ``t`` (0-based) keeps, and how to go on."""
    scaled = f"--lr {run.opts.lr:g} is {run.opts.lr * run.opts.batch_size / 256:.3g} after scaling by batch size / 256"
    if t == 0:
        return f"no checkpoint was written; lower --lr ({scaled}) and train again"
    return (f"nothing of task {t + 1} was written and {checkpoint_path(run.ckpt_dir, t)} is the last checkpoint, "
            f"all finite: lower --lr ({scaled}) and run train --resume to continue from it")


def _stop_if_diverged(run: _Run, t: int, where: str, loss: float, trained: list[tuple[str, torch.Tensor]]) -> None:
    """After an optimizer step of task ``t``: InputError when the loss or a ``trained`` (name, parameter)
    is NaN or Inf, naming them, where it happened and how to go on. Under torchrun every process
    stops together (the flags are reduced), so none waits for the others in a collective."""
    ok = torch.stack([torch.isfinite(p).all() for _, p in trained]).to(torch.int32)
    ok = torch.cat([ok, torch.tensor([int(math.isfinite(loss))], dtype=torch.int32, device=ok.device)])
    if run.d.world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    flags = ok.tolist()
    if all(flags):
        return
    what = [n for (n, _), fine in zip(trained, flags) if not fine]
    if not flags[-1]:
        what.insert(0, f"the loss ({loss})" if not math.isfinite(loss) else "the loss of another process")
    raise InputError(f"training stopped at task {t + 1}, {where}: NaN or Inf in {', '.join(what)}; {_way_on(run, t)}")


def _evaluate_seen(run: _Run, t: int, acc: np.ndarray) -> dict:
    """Accuracy on every task seen so far (written into column ``t`` of ``acc``) and the metrics row."""
    run.model.eval()
    for i in range(t + 1):
        try:
            acc[i, t] = evaluate_task(run.model, run.test_sets[i], run.device, run.opts.batch_size, run.d,
                                      run.opts.selection, run.device.type == "cuda", gather=run.opts.gather,
                                      queries=run.test_queries.setdefault(i, []))
        except FloatingPointError as e:
            raise InputError(f"training stopped after task {t + 1}: its model gives {e} of task {i + 1}; "
                             f"{_way_on(run, t)}") from None
    return {"task": t + 1, "accuracy": [round(float(a), 4) for a in acc[: t + 1, t]],
            "average_accuracy": round(float(acc[: t + 1, t].mean()), 4), "forgetting": round(forgetting(acc, t), 4)}
