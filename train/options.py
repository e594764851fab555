"""Training settings, checked when they are made: a value out of range is an InputError naming its
option, never replaced by a default (``None`` is the only "not given")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..common.contract import DISTILL_KINDS, GATHERS, SELECTIONS, check_choice
from ..common.errors import InputError


def check_number(option: str, value: object, *, integer: bool = False, at_least: Optional[float] = None,
                 above: Optional[float] = None) -> None:
    """InputError naming ``option`` unless ``value`` is a finite number (an int when ``integer``; a
    bool never), at least ``at_least`` and above ``above`` where given."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise InputError(f"{option} {value!r}: expected {'an integer' if integer else 'a finite number'}")
    if at_least is not None and value < at_least:
        raise InputError(f"{option} {value}: must be at least {at_least}")
    if above is not None and value <= above:
        raise InputError(f"{option} {value}: must be above {above}")


@dataclass
class TrainOptions:
    """Training settings; defaults are the reference's `cifar100_dualprompt` ones."""

    data_path: str = "data"
    output_dir: str = "output"
    download: bool = False
    num_tasks: int = 10
    epochs: int = 5
    batch_size: int = 24
    lr: float = 0.03  # scaled by batch_size / 256, as the reference does
    clip_grad: float = 1.0
    pull_constraint_coeff: float = 1.0
    seed: int = 42
    limit_per_class: Optional[int] = None  # None: every image
    device: str = "auto"
    workers: int = 2
    resume: bool = False
    quiet: bool = False
    selection: str = "per-sample"
    gather: str = "per-sample"  # "reference": the public reference's e-prompt gather, in training and evaluation
    distill_weight: float = 0.0  # λ of the distillation term from task 2 on (train/distill.py); 0: none
    distill_kind: str = "cosine"  # "cosine" (the original study) or "bct" (BCT's influence loss)
    pretrained: bool = True
    pretrained_weights: Optional[str] = None

    def __post_init__(self):
        for option, value in (("--num-tasks", self.num_tasks), ("--epochs", self.epochs),
                              ("--batch-size", self.batch_size)):
            check_number(option, value, integer=True, at_least=1)
        if self.limit_per_class is not None:
            check_number("--limit-per-class", self.limit_per_class, integer=True, at_least=1)
        check_number("--seed", self.seed, integer=True, at_least=0)
        check_number("--workers", self.workers, integer=True, at_least=0)
        check_number("--lr", self.lr, above=0)
        check_number("clip_grad", self.clip_grad, above=0)
        check_number("pull_constraint_coeff", self.pull_constraint_coeff, at_least=0)
        check_number("--distill-weight", self.distill_weight, at_least=0)
        check_choice("--selection", self.selection, SELECTIONS)
        check_choice("--gather", self.gather, GATHERS)
        check_choice("--distill-kind", self.distill_kind, DISTILL_KINDS)
