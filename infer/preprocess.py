"""The reference evaluation transform with numpy and Pillow, driven by an export's metadata.

Equal, value for value, to torchvision's ``Compose([Resize(resize, BICUBIC), CenterCrop(crop),
ToTensor(), Normalize(mean, std)])`` on PIL images: the same PIL resize call, the same crop offsets
(Python's round), the same float32 division by 255.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from PIL import Image

from .metadata import Preprocessing

ImageLike = Union[Image.Image, np.ndarray]

_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC, "box": Image.Resampling.BOX,
             "hamming": Image.Resampling.HAMMING, "lanczos": Image.Resampling.LANCZOS}


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """(width, height) after resizing the shorter side to ``shorter``, as torchvision computes it."""
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def preprocess_image(image: ImageLike, spec: Preprocessing) -> np.ndarray:
    """One image -> float32 [3, crop, crop] model input.

    Parameters
    ----------
    image : PIL image (any mode; converted to RGB) or uint8 array [H, W, 3] (RGB).
    spec : the export's :class:`~infer.metadata.Preprocessing`; ``crop <= resize``.
    """
    if spec.interpolation not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {spec.interpolation!r}: expected one of {', '.join(_RESAMPLE)}")
    if spec.crop > spec.resize:
        raise ValueError(f"crop {spec.crop} larger than the resized shorter side {spec.resize}")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    image = image.resize(resized_size(*image.size, spec.resize), _RESAMPLE[spec.interpolation])
    width, height = image.size
    top = int(round((height - spec.crop) / 2.0))
    left = int(round((width - spec.crop) / 2.0))
    image = image.crop((left, top, left + spec.crop, top + spec.crop))
    x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    # Division (not multiplication by the scale) keeps ToTensor's float32 rounding.
    x /= np.float32(1.0 / spec.scale)
    x -= np.asarray(spec.mean, np.float32)[:, None, None]
    x /= np.asarray(spec.std, np.float32)[:, None, None]
    return x


def preprocess_batch(images: Sequence[ImageLike], spec: Preprocessing) -> np.ndarray:
    """Several images -> float32 [N, 3, crop, crop]; see :func:`preprocess_image`."""
    out = np.empty((len(images), 3, spec.crop, spec.crop), np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess_image(image, spec)
    return out
