"""The reference evaluation transform with numpy and Pillow, driven by an export's metadata.

Equal, value for value, to torchvision's ``Compose([Resize(resize, BICUBIC), CenterCrop(crop),
ToTensor(), Normalize(mean, std)])`` on PIL images: the same PIL resize call, the same crop offsets
(Python's round), the same float32 division by 255.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from PIL import Image

from ...common.contract import INTERPOLATIONS, MAX_IMAGE_PIXELS
from ...common.errors import InputError
from ..runtime.metadata import Preprocessing

ImageLike = Union[Image.Image, np.ndarray]

_RESAMPLE = {name: Image.Resampling[name.upper()] for name in INTERPOLATIONS}


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
    spec : the export's :class:`~infer.runtime.metadata.Preprocessing` (bounded when constructed).

    Raises InputError when the resized image would exceed the contract's MAX_IMAGE_PIXELS (an
    extreme aspect ratio).
    """
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    size = resized_size(*image.size, spec.resize)
    if size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise InputError(f"an image of {image.size[0]} x {image.size[1]} pixels would be resized to "
                         f"{size[0]} x {size[1]}, above the limit of {MAX_IMAGE_PIXELS:,} pixels")
    image = image.convert("RGB").resize(size, _RESAMPLE[spec.interpolation])
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
