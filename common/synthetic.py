"""Generated stand-ins for CIFAR when the real data cannot be had (no network): 32x32 RGB images whose
class sets a hue and a stripe orientation, with random phase, brightness, colour jitter and noise,
so a small model can tell classes apart but no two images are alike. Written in CIFAR's own layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cifar import write_cifar
from .provenance import write_marker


def synthetic_images(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """uint8 [N, 32, 32, 3] images for int ``labels`` [N] of ``num_classes`` classes."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    hue = (labels * 0.61803398875 * 2 * np.pi)[:, None]  # golden-ratio spacing keeps neighbouring classes apart
    colour = 0.5 + 0.4 * np.cos(hue + np.array([0.0, 2.094, 4.189]))  # [N, 3]
    angle = (labels % 4) * np.pi / 4 + rng.normal(0, 0.08, n)
    freq = 0.35 + 0.08 * (labels // 4 % 3)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    stripes = 0.5 + 0.5 * np.sin(freq[:, None, None] * proj + rng.uniform(0, 2 * np.pi, n)[:, None, None])
    brightness = rng.uniform(0.6, 1.0, (n, 1, 1, 1))
    jitter = rng.normal(0, 0.06, (n, 1, 1, 3))
    img = brightness * (stripes[..., None] * (colour[:, None, None, :] + jitter)) + rng.normal(0, 0.05, (n, 32, 32, 3))
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_synthetic_cifar(root: str | Path, name: str, num_classes: int, train_per_class: int,
                          test_per_class: int, seed: int = 0, first_class: int = 0) -> Path:
    """Write a generated dataset as ``cifar10`` or ``cifar100`` under ``root``; returns its folder.

    Its labels are 0..num_classes-1, drawn as generator classes ``first_class`` onwards, so two
    datasets with disjoint ranges have disjoint classes (as CIFAR-10 and CIFAR-100 do). The folder gets
    the generated-data marker (:mod:`common.provenance`), so every reader knows it is not CIFAR.
    """
    splits = {}
    for i, (split, per) in enumerate((("train", train_per_class), ("test", test_per_class))):
        labels = np.tile(np.arange(num_classes), per)
        images = synthetic_images(labels + first_class, first_class + num_classes, seed * 2 + i)
        splits[split] = (images, labels)
    classes = [f"generated_{first_class + c:02d}" for c in range(num_classes)]
    folder = write_cifar(root, name, splits, classes)
    write_marker(folder, {"generator": "dpcompat.common.synthetic", "classes": num_classes,
                          "first_class": first_class, "seed": seed})
    return folder


def write_photo_folder(root: str | Path, count: int, size: tuple[int, int] = (500, 375), classes: int = 4,
                       seed: int = 0) -> Path:
    """A ``folder:`` data set of ``count`` photo-sized JPEGs (``size`` = width, height; quality 90):
    generated class patterns scaled up, with per-pixel noise so they do not compress like flat colour.
    Images already there (same names) are kept, so a benchmark can reuse the folder."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % classes
    small = synthetic_images(labels, classes, seed)
    for i, label in enumerate(labels):
        path = root / f"class{label}" / f"{i:06d}.jpg"
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        big = np.asarray(Image.fromarray(small[i]).resize(size, Image.Resampling.BICUBIC), np.float64)
        noisy = np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=90)
    return root
