"""Untrusted inputs -- ONNX metadata, checkpoint ``args``, CIFAR batches, images, downloads -- are bounded
and refused with an InputError naming the file, never a traceback or a silently wrong value.
Property-based tests (hypothesis) cover the parsers beyond the listed cases."""
import argparse
import hashlib
import io
import json
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from dpcompat.common.cifar import fetch_tarball, load_cifar
from dpcompat.common.contract import MAX_EMBEDDING_DIM, MAX_IMAGE_PIXELS, MAX_INPUT_SIZE, MAX_RESIZE
from dpcompat.common.errors import InputError
from dpcompat.common.provenance import GENERATED_NOTE, MARKER, RANDOM_BACKBONE_NOTE, notes
from dpcompat.common.synthetic import write_synthetic_cifar
from dpcompat.export.verify import Inputs, source_checkpoint
from dpcompat.infer.data.files import open_image
from dpcompat.infer.runtime.metadata import ModelInfo, Preprocessing
from dpcompat.infer.data.preprocess import preprocess_image
from dpcompat.infer.runtime.session import create_session, model_info as session_model_info
from dpcompat.train.checkpoint import config_from_args, config_to_args, model_from_checkpoint
from dpcompat.train.model import DualPromptConfig
from onnx_fixtures import model_info, run_cli, write_data, write_model
from train_fixtures import tiny_config, tiny_model

PROPS = model_info().to_props()
ARCH = json.loads(json.dumps({**tiny_config().asdict(), "img_size": 32, "embed_dim": 16, "top_k": 1}))
PRE = json.loads(PROPS["preprocessing"])

METADATA = [
    ("format_version", "2", "export format '2'"),
    ("task", "0", "task '0'"), ("task", "-1", "task"), ("task", "abc", "task"), ("task", "1e3", "task"),
    ("task", " 1", "task"), ("task", "99999999999", "task"),
    ("embedding_dim", "0", "embedding_dim"), ("embedding_dim", str(MAX_EMBEDDING_DIM + 1), "embedding_dim"),
    ("input_size", "0", "input_size"), ("input_size", str(MAX_INPUT_SIZE + 1), "input_size"),
    ("input_size", "64", "crop 32 differs from input_size 64"),
    ("top_k", "0", "top_k"), ("top_k", "5000", "top_k"),
    ("pool", "max", "unknown pool"), ("selection", "random", "unknown selection"),
    ("precision", "int4", "unknown precision"),
    ("checkpoint", "../../etc/passwd", "not a plain file name"), ("checkpoint", "a/b.pth", "plain file name"),
    ("checkpoint", "..", "plain file name"), ("checkpoint", "", "plain file name"),
    ("checkpoint_sha256", "xyz", "checkpoint_sha256"), ("model", "", "model is not"), ("model", "m" * 300, "model"),
    ("versions", "[]", "versions is a JSON list"), ("architecture", "5", "architecture is a JSON int"),
    ("provenance", '"x"', "provenance is a JSON str"), ("provenance", '{"data": 5}', "provenance is not"),
    ("provenance", "[" * 100_000, "malformed"), ("versions", "{", "malformed"),
    ("preprocessing", "[]", "preprocessing must be an object"), ("preprocessing", "{", "malformed"),
]
PREPROCESSING = [
    ({"resize": 10 ** 6}, "resize"), ({"resize": 31}, "resize"), ({"resize": True}, "resize"),
    ({"resize": 36.5}, "resize"), ({"crop": 0, "resize": 36}, "crop"), ({"crop": "32"}, "crop"),
    ({"interpolation": "magic"}, "interpolation"), ({"interpolation": ["bicubic"]}, "interpolation"),
    ({"scale": float("nan")}, "scale"), ({"scale": 0}, "scale"), ({"scale": -1}, "scale"),
    ({"scale": float("inf")}, "scale"), ({"scale": 10 ** 400}, "scale"),
    ({"mean": [0, 0]}, "mean"), ({"mean": "abc"}, "mean"), ({"mean": [0, 0, float("nan")]}, "mean"),
    ({"std": [1, 1, 0]}, "std"), ({"std": [1, 1, "x"]}, "std"), ({"std": [1, 1, -1]}, "std"),
    ({"std": [1, 1, 1e-30]}, "std"), ({"extra": 1}, "exactly"),
]
ARCHITECTURE = [
    ({"depth": 10 ** 12}, "architecture depth"), ({"depth": 0}, "architecture depth"),
    ({"img_size": 64}, "img_size 64 differs"), ({"embed_dim": 8}, "embed_dim 8 differs"),
    ({"e_prompt_layers": [99]}, "e_prompt_layers"), ({"mlp_ratio": float("nan")}, "mlp_ratio"),
    ({"patch_size": "8"}, "patch_size"),
]


def _props(**changes) -> dict:
    return {**PROPS, **changes}


@pytest.mark.parametrize("key, value, expected", METADATA, ids=[f"{k}={v[:12]}" for k, v, _ in METADATA])
def test_hostile_metadata_is_refused(key, value, expected):
    with pytest.raises(InputError, match="^f.onnx: ") as e:
        ModelInfo.from_props(_props(**{key: value}), "f.onnx")
    assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("change, expected", PREPROCESSING, ids=[str(c) for c, _ in PREPROCESSING])
def test_hostile_preprocessing_is_refused(change, expected):
    with pytest.raises(InputError, match=expected):
        ModelInfo.from_props(_props(preprocessing=json.dumps({**PRE, **change})), "f.onnx")


@pytest.mark.parametrize("change, expected", ARCHITECTURE, ids=[str(c) for c, _ in ARCHITECTURE])
def test_hostile_architecture_is_refused(change, expected):
    with pytest.raises(InputError, match=expected):
        ModelInfo.from_props(_props(architecture=json.dumps({**ARCH, **change})), "f.onnx")


def test_valid_metadata_and_architecture_pass():
    info = ModelInfo.from_props(_props(architecture=json.dumps(ARCH), provenance='{"data": "generated"}'), "f.onnx")
    assert info.architecture == ARCH and info.provenance == {"data": "generated"} and info.input_size == 32


@pytest.mark.parametrize("props, expected", [
    ({"embedding_dim": "8"}, "output 'embedding' is declared ['N', 16], the metadata says [batch, 8]"),
    ({"input_size": "40", "preprocessing": Preprocessing(resize=44, crop=40).to_json()},
     "input 'image' is declared ['N', 3, 32, 32], the metadata says"),
])
def test_metadata_must_match_the_graphs_shapes(tmp_path, props, expected):
    path = write_model(tmp_path / "m.onnx", dim=16)
    proto = onnx.load(path)  # the metadata edited after the fact, as a hostile file would be
    for prop in proto.metadata_props:
        prop.value = props.get(prop.key, prop.value)
    onnx.save(proto, path)
    with pytest.raises(InputError, match=expected.replace("[", r"\[")):
        session_model_info(create_session(path, "cpu")[0], path)
    r = run_cli("embed", "--model", str(path), "--dataset", "cifar10:test", "--store", "s", cwd=write_data(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr


# ---- checkpoint args ----

CHECKPOINT_ARGS = [
    ({"num_heads": 0}, "num_heads 0"), ({"num_heads": -4}, "num_heads -4"), ({"num_heads": 5}, "num_heads 5"),
    ({"patch_size": 5}, "patch_size 5 does not divide"), ({"patch_size": 0}, "patch_size 0"),
    ({"embed_dim": 0}, "embed_dim 0"), ({"embed_dim": -64}, "embed_dim -64"),
    ({"embed_dim": 10 ** 9}, "embed_dim 1000000000"), ({"depth": 0}, "depth 0"), ({"depth": 10 ** 9}, "depth"),
    ({"mlp_ratio": float("nan")}, "mlp_ratio nan"), ({"mlp_ratio": 0.0}, "mlp_ratio"),
    ({"mlp_ratio": -1.0}, "mlp_ratio"), ({"mlp_ratio": "4"}, "mlp_ratio"), ({"length": 0}, "prompt_length 0"),
    ({"size": 0}, "pool_size 0"), ({"top_k": 0}, "top_k 0"), ({"top_k": 99}, "top_k 99"),
    ({"input_size": 0}, "img_size 0"), ({"input_size": 33}, "does not divide input size 33"),
    ({"g_prompt_length": -1}, "g_prompt_length -1"), ({"nb_classes": 0}, "num_classes 0"),
    ({"e_prompt_layer_idx": []}, "e_prompt_layers is empty"), ({"e_prompt_layer_idx": [99]}, "distinct layers"),
    ({"e_prompt_layer_idx": "abc"}, "e_prompt_layers"), ({"e_prompt_layer_idx": 3}, "not iterable"),
    ({"g_prompt_layer_idx": [2]}, "distinct layers"), ({"embedding_key": "mean"}, "embedding_key='mean'"),
    ({"head_type": "gap"}, "head_type='gap'"), ({"use_prefix_tune_for_e_prompt": False}, "prefix_tune"),
    ({"same_key_value": True}, "same_key_value"), ({"use_g_prompt": False}, "use_g_prompt"),
    ({"prompt_pool": False}, "prompt_pool"), ({"provenance": "x"}, "provenance"),
    ({"provenance": {"data": 5}}, "provenance"), ({"model": "resnet50"}, "unsupported model name"),
    ({"model": 7}, "not a model name"), ({"depth": 5}, "weights do not fit"),
]


@pytest.fixture(scope="module")
def tiny_state():
    return tiny_model().state_dict()


@pytest.mark.parametrize("change, expected", CHECKPOINT_ARGS, ids=[str(c)[:40] for c, _ in CHECKPOINT_ARGS])
def test_hostile_checkpoint_args_are_refused(change, expected, tiny_state, tmp_path):
    args = argparse.Namespace(**{**vars(config_to_args(tiny_config())), **change})
    path = tmp_path / "task1_checkpoint.pth"
    torch.save({"model": tiny_state, "optimizer": {}, "epoch": 0, "args": args}, path)
    with pytest.raises(InputError, match=f"^{path}: ") as e:
        model_from_checkpoint(path)
    assert expected in str(e.value), str(e.value)


_ANY = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 12, 10 ** 12), st.floats(allow_nan=True),
                 st.text(max_size=12), st.lists(st.integers(-3, 20), max_size=5))
_FIELDS = ["model", "input_size", "nb_classes", "size", "length", "top_k", "g_prompt_length", "g_prompt_layer_idx",
           "e_prompt_layer_idx", "embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "embedding_key"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_FIELDS), _ANY, max_size=5))
def test_property_checkpoint_args_parse_or_refuse(change):
    """Any args give a bounded, consistent config or a ValueError/TypeError (an InputError for the user)."""
    args = argparse.Namespace(**{**vars(config_to_args(tiny_config())), **change})
    try:
        cfg = config_from_args(args)
    except (ValueError, TypeError):
        return
    assert isinstance(cfg, DualPromptConfig)
    assert 1 <= cfg.patch_size <= cfg.img_size <= 4096 and cfg.img_size % cfg.patch_size == 0
    assert cfg.embed_dim % cfg.num_heads == 0 and 1 <= cfg.top_k <= cfg.pool_size and 0 < cfg.mlp_ratio <= 64
    assert cfg.e_prompt_layers and all(0 <= i < cfg.depth for i in cfg.e_prompt_layers + cfg.g_prompt_layers)


_JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=4)), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(PROPS)), st.one_of(st.text(max_size=20), _JSON.map(json.dumps)),
                       max_size=4),
       st.dictionaries(st.sampled_from(sorted(PRE)), _JSON, max_size=3))
def test_property_metadata_parses_or_refuses(change, pre_change):
    """Any metadata gives a ModelInfo within the documented bounds or one InputError, nothing else."""
    props = {**PROPS, "preprocessing": json.dumps({**PRE, **pre_change}), **change}
    try:
        info = ModelInfo.from_props(props, "f.onnx")
    except InputError as e:
        assert str(e).startswith("f.onnx: ") and "\n" not in str(e)
        return
    p = info.preprocessing
    assert 1 <= info.input_size == p.crop <= p.resize <= MAX_RESIZE and info.input_size <= MAX_INPUT_SIZE
    assert 1 <= info.embedding_dim <= MAX_EMBEDDING_DIM and 1 <= info.top_k
    assert all(np.isfinite(v) for v in (p.scale, *p.mean, *p.std)) and min(p.std) > 0 and p.scale > 0
    assert "/" not in info.checkpoint and info.checkpoint not in ("", ".", "..")


# ---- CIFAR batches ----

def _batch(data, labels, key=b"labels") -> dict:
    return {b"data": data, key: labels, b"batch_label": b"test"}


GOOD = np.zeros((4, 3072), np.uint8)
CIFAR_BATCHES = [
    (_batch(GOOD, [1.5, 0, 0, 0]), "label '1.5'"), (_batch(GOOD, ["1", 0, 0, 0]), "label '1'"),
    (_batch(GOOD, [-1, 0, 0, 0]), "label '-1'"), (_batch(GOOD, [2 ** 70, 0, 0, 0]), "is not an integer from 0"),
    (_batch(GOOD, [True, 0, 0, 0]), "label 'True'"), (_batch(GOOD, [None, 0, 0, 0]), "label 'None'"),
    (_batch(GOOD, [[1], 0, 0, 0]), "label '[1]'"), (_batch(GOOD, {0: 1}), "labels are a dict"),
    (_batch(GOOD, [0, 0, 0]), "3 labels for 4 images"), (_batch(GOOD, [0] * 5), "5 labels for 4 images"),
    (_batch(GOOD, np.zeros(4, np.float32)), "labels are a ndarray"),
    (_batch(GOOD, np.zeros((2, 2), np.int64)), "labels are a ndarray"),
    (_batch(GOOD.astype(np.float32), [0] * 4), "'data' is float32"), (_batch(GOOD[:, :100], [0] * 4), "(4, 100)"),
    (_batch(GOOD, [0] * 4, key=b"fine_labels"), "missing 'data' or 'labels'"), (["not", "a", "dict"], "a pickled list"),
    (_batch(GOOD, [10, 0, 0, 0]), "labels outside 0..9"),
]


@pytest.fixture()
def cifar_root(tmp_path):
    return write_data(tmp_path, test_per_class=1)


@pytest.mark.parametrize("batch, expected", CIFAR_BATCHES, ids=[e for _, e in CIFAR_BATCHES])
def test_hostile_cifar_batches_are_refused(batch, expected, cifar_root):
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(InputError, match="cifar-10-batches-py") as e:
        load_cifar(cifar_root, "cifar10", "test")
    assert expected in str(e.value), str(e.value)


def test_integer_array_labels_are_read(cifar_root):
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump(_batch(GOOD, np.array([3, 1, 0, 9], np.uint8)), f)
    assert load_cifar(cifar_root, "cifar10", "test").labels.tolist() == [3, 1, 0, 9]


_LABEL = st.one_of(st.integers(-5, 2 ** 70), st.floats(), st.text(max_size=3), st.booleans(), st.none())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 6), st.lists(_LABEL, max_size=8))
def test_property_cifar_batches_parse_or_refuse(cifar_root, n, labels):
    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump(_batch(np.full((n, 3072), 7, np.uint8), labels), f, protocol=4)
    try:
        split = load_cifar(cifar_root, "cifar10", "test")
    except InputError as e:
        assert "\n" not in str(e)
        return
    assert split.labels.tolist() == labels and len(labels) == n and all(type(x) is int for x in labels)
    assert split.images.shape == (n, 32, 32, 3) and all(0 <= x < 10 for x in labels)


def test_pickled_code_is_refused(cifar_root):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    with open(cifar_root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump(_batch(GOOD, [Evil()] + [0] * 3), f)
    with pytest.raises(InputError, match="refusing to load builtins.print"):
        load_cifar(cifar_root, "cifar10", "test")


# ---- images, counts, downloads ----

def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: enough for Pillow to report its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(8000, 8000), (100_000, 600), (600, 100_000), (50_000, 50_000)])
def test_images_above_the_pixel_limit_are_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(width, height))
    with pytest.raises(InputError, match="bomb.png: ") as e:
        open_image(path)
    assert width * height > MAX_IMAGE_PIXELS and ("above the limit" in str(e.value) or "Bomb" in str(e.value))


def test_extreme_aspect_ratio_cannot_blow_up_the_resize():
    with pytest.raises(InputError, match="would be resized to 256 x 25600000"):
        preprocess_image(np.zeros((100_000, 1, 3), np.uint8), Preprocessing())


@pytest.mark.parametrize("count", [10 ** 6, 2 ** 40])
def test_verify_counts_are_bounded_by_memory(count):
    info = model_info()
    with pytest.raises(InputError, match=f"--limit/--random {count}: .* use at most 174762"):
        Inputs(count=count).load(info)
    assert Inputs(count=3).load(info).shape == (3, 3, 32, 32)


def test_verify_finds_the_checkpoint_beside_the_export(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    info = model_info()
    (tmp_path / "run" / "exports").mkdir(parents=True)
    onnx_path = tmp_path / "run" / "exports" / "task1.onnx"
    with pytest.raises(InputError, match="in none of output/checkpoint, .*; name its folder with --checkpoint-dir"):
        source_checkpoint(onnx_path, info, None)
    (tmp_path / "run" / "output" / "checkpoint").mkdir(parents=True)
    (tmp_path / "run" / "output" / "checkpoint" / info.checkpoint).write_bytes(b"")
    assert source_checkpoint(onnx_path, info, None) == tmp_path / "run" / "output" / "checkpoint" / info.checkpoint
    with pytest.raises(InputError, match="--checkpoint-dir elsewhere: no such folder"):
        source_checkpoint(onnx_path, info, "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    assert source_checkpoint(onnx_path, info, "elsewhere") == Path("elsewhere") / info.checkpoint


def _tarball(tmp_path, members: dict[str, bytes]):
    path = tmp_path / "c.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            item = tarfile.TarInfo(name)
            item.size = len(data)
            tar.addfile(item, io.BytesIO(data))
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def test_tarball_download_is_checked_and_confined(tmp_path, cifar_root):
    files = {f"cifar-10-batches-py/{p.name}": p.read_bytes() for p in (cifar_root / "cifar-10-batches-py").iterdir()}
    path, md5 = _tarball(tmp_path, files)
    dest = tmp_path / "dest"
    with pytest.raises(InputError, match="the download is corrupt"):
        fetch_tarball(path.as_uri(), "0" * 32, dest, "cifar-10-batches-py")
    assert not (dest / "cifar-10-batches-py").exists()
    fetch_tarball(path.as_uri(), md5, dest, "cifar-10-batches-py")
    assert load_cifar(dest, "cifar10", "test").labels.tolist() == load_cifar(cifar_root, "cifar10", "test").labels.tolist()
    evil, md5 = _tarball(tmp_path, {"../evil.txt": b"x"})
    with pytest.raises(InputError, match="not a usable archive"):
        fetch_tarball(evil.as_uri(), md5, tmp_path / "d2", "cifar-10-batches-py")
    assert not (tmp_path / "evil.txt").exists()
    empty, md5 = _tarball(tmp_path, {"other/x": b"x"})
    with pytest.raises(InputError, match="no cifar-10-batches-py/ folder"):
        fetch_tarball(empty.as_uri(), md5, tmp_path / "d3", "cifar-10-batches-py")
    with pytest.raises(InputError, match="downloading file:"):
        fetch_tarball((tmp_path / "absent.tar.gz").as_uri(), md5, tmp_path / "d4", "cifar-10-batches-py")


# ---- provenance ----

def test_generated_data_is_marked_and_the_mark_goes_with_real_data(tmp_path):
    folder = write_synthetic_cifar(tmp_path, "cifar10", num_classes=10, train_per_class=1, test_per_class=1, seed=3)
    assert (folder / MARKER).is_file()
    split = load_cifar(tmp_path, "cifar10", "test")
    assert split.generated["generator"] == "dpcompat.common.synthetic" and split.generated["seed"] == 3
    write_data(tmp_path)  # real-format data written over it: no longer generated
    assert not (folder / MARKER).exists() and load_cifar(tmp_path, "cifar10", "test").generated is None


def test_notes_follow_from_provenance():
    assert notes({"data": "generated", "backbone": "random"}) == [GENERATED_NOTE, RANDOM_BACKBONE_NOTE]
    assert notes({"data": "cifar100", "backbone": "pretrained vit_tiny_patch16_224.augreg_in21k"}) == []
    assert notes({}) == []


def test_export_carries_the_checkpoints_provenance(tmp_path):
    from dpcompat.export.onnx_export import export_task
    from dpcompat.train.checkpoint import save_checkpoint

    model = tiny_model()
    provenance = {"data": "generated", "backbone": "random"}
    ckpt = save_checkpoint(tmp_path / "task1_checkpoint.pth", model, None, 0,
                           config_to_args(model.cfg, provenance=provenance))
    path = export_task(ckpt, tmp_path / "task1.onnx").path
    info = session_model_info(create_session(path, "cpu")[0], path)
    assert info.provenance == provenance and info.architecture["depth"] == model.cfg.depth
