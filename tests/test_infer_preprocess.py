"""Preprocessing with numpy and Pillow equals the reference eval transform."""
import numpy as np
import pytest
from PIL import Image

from dpcompat.infer.runtime.metadata import Preprocessing
from dpcompat.infer.data.preprocess import preprocess_batch, preprocess_image, resized_size

SPECS = [Preprocessing(), Preprocessing.for_input_size(32),
         Preprocessing(resize=37, crop=33, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.25))]
SHAPES = [(32, 32, 3), (40, 57, 3), (57, 40, 3), (33, 90, 3)]


@pytest.mark.parametrize("spec", SPECS)
def test_equal_to_torchvision_eval_transform(spec):
    transforms = pytest.importorskip("torchvision.transforms")
    reference = transforms.Compose([transforms.Resize(spec.resize, interpolation=transforms.InterpolationMode.BICUBIC),
                                    transforms.CenterCrop(spec.crop), transforms.ToTensor(),
                                    transforms.Normalize(spec.mean, spec.std)])
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        want = reference(Image.fromarray(image)).numpy()
        got = preprocess_image(image, spec)
        assert got.dtype == np.float32 and got.shape == (3, spec.crop, spec.crop)
        np.testing.assert_array_equal(got, want)


def test_shorter_side_resize_and_input_kinds():
    assert resized_size(32, 32, 256) == (256, 256)
    assert resized_size(40, 57, 256) == (256, 364)
    assert resized_size(57, 40, 256) == (364, 256)
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    spec = Preprocessing.for_input_size(32)
    from_array = preprocess_image(array, spec)
    np.testing.assert_array_equal(preprocess_image(Image.fromarray(array), spec), from_array)
    np.testing.assert_array_equal(preprocess_image(Image.fromarray(array).convert("RGBA"), spec), from_array)
    assert 0.0 <= from_array.min() and from_array.max() <= 1.0
    batch = preprocess_batch([array, Image.fromarray(array)], spec)
    assert batch.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(batch[0], batch[1])


def test_refuses_impossible_specs():
    with pytest.raises(ValueError, match="interpolation"):
        preprocess_image(np.zeros((8, 8, 3), np.uint8), Preprocessing(resize=8, crop=8, interpolation="magic"))
    with pytest.raises(ValueError, match="crop"):
        preprocess_image(np.zeros((8, 8, 3), np.uint8), Preprocessing(resize=8, crop=9))
