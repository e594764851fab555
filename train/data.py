"""Split CIFAR-100 for continual learning: tasks of consecutive labels, the reference's transforms."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from ..common.cifar import CifarSplit, download_cifar, load_cifar
from ..common.errors import InputError


def train_transform(input_size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(input_size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])


def eval_transform(input_size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(int(256 / 224 * input_size), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(input_size),
        transforms.ToTensor(),
    ])


class ImageArrayDataset(torch.utils.data.Dataset):
    """uint8 [N, H, W, 3] images and int labels, transformed as PIL images."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def load_split(data_path: str | Path, split: str, download: bool) -> CifarSplit:
    """CIFAR-100 ``split`` from ``data_path``; with ``download``, fetched first if absent."""
    if download:
        download_cifar(data_path, "cifar100")
    return load_cifar(data_path, "cifar100", split)


def task_classes(num_classes: int, num_tasks: int) -> list[list[int]]:
    """Classes of each task: consecutive labels, the reference's order 0..C-1."""
    if num_tasks < 1 or num_classes % num_tasks:
        raise InputError(f"--num-tasks {num_tasks} must divide the {num_classes} classes")
    per = num_classes // num_tasks
    return [list(range(t * per, (t + 1) * per)) for t in range(num_tasks)]


def limit_per_class(labels: np.ndarray, classes: list[int], limit: int | None) -> np.ndarray:
    """Indices of the samples of ``classes``, the first ``limit`` of each class (all when None; never a
    negative slice)."""
    if limit is not None and (type(limit) is not int or limit < 1):
        raise InputError(f"--limit-per-class {limit!r}: must be an integer of at least 1")
    keep = [np.flatnonzero(labels == c)[:limit] for c in classes]
    return np.sort(np.concatenate(keep))


def task_dataset(split: CifarSplit, classes: list[int], transform, limit: int | None) -> ImageArrayDataset:
    idx = limit_per_class(split.labels, classes, limit)
    return ImageArrayDataset(split.images[idx], split.labels[idx], transform)
