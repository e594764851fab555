"""Hostile data files (issue 21): npz labels that wrap around, sizes declared far beyond what a file holds,
a class table as large as a label, generated data sets too large to describe, a folder fingerprint that
would read a 3 GB file, file names that carry an error line of their own. Every size a file declares is
checked against a stated limit before anything is allocated: each case ends in one ``error:`` line (exit
code 2) or one InputError, or in a correct result, in a child process with bounded memory and time."""
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from dpcompat.common.contract import MAX_IMAGE_FILE_BYTES
from dpcompat.common.digest import file_sha256
from dpcompat.common.errors import InputError
from dpcompat.infer.data.datasets import MAX_GENERATED, open_dataset
from dpcompat.infer.store.manifest import content_digest, shard_files
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import write_model, write_random_set
from test_hostile_models import assert_one_line, cli


def npy(shape, dtype, data: bytes) -> bytes:
    """A .npy file whose header declares ``shape`` ``dtype`` and whose data is ``data`` (any length)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": shape})
    return out.getvalue() + data


def test_npz_labels_are_checked_as_stored_before_the_cast(tmp_path):
    path = tmp_path / "wrap.npz"
    np.savez(path, test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.array([0, 2**64 - 1], np.uint64))
    with pytest.raises(InputError, match=r"test_labels holds 18446744073709551615 \(uint64\), above the largest"):
        open_dataset(f"npz:{path}")
    np.savez(path, test_images=np.zeros((2, 4, 4), np.uint8), test_labels=np.array([1, 2**63 - 1], np.uint64))
    assert open_dataset(f"npz:{path}").labels.tolist() == [1, 2**63 - 1]  # the largest int64 is a label


def test_a_label_of_10_12_makes_no_class_table_that_size(tmp_path):
    path = tmp_path / "big_label.npz"
    images = np.random.default_rng(0).integers(0, 256, (2, 8, 8), dtype=np.uint8)
    np.savez(path, test_images=images, test_labels=np.array([3, 10**12]))
    ds = open_dataset(f"npz:{path}")
    assert ds.classes == ["3", "1000000000000"] and ds.labels.tolist() == [3, 10**12]
    model = write_model(tmp_path / "task1.onnx")
    r = cli("embed", "--model", model, "--dataset", f"npz:{path}", "--store", "s", "--provider", "cpu", "--quiet",
            cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    (stored,) = (p for p in (tmp_path / "s" / "task1").iterdir() if not p.name.startswith("."))
    assert read_set(stored).labels.tolist() == [3, 10**12]


def _zip(path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_an_npz_array_declaring_100_gb_over_1_kb_is_refused_unread(tmp_path):
    path = tmp_path / "liar.npz"
    _zip(path, {"test_images.npy": npy((100_000, 1000, 1000), np.uint8, b"\0" * 1000),
                "test_labels.npy": npy((100_000,), np.int64, b"\0" * 1000)})
    with pytest.raises(InputError, match=r"test_images.npy declares \[100000, 1000, 1000\] uint8 \(100,000,000,000 "
                                         r"bytes\) but holds 1,000 bytes; refused unread"):
        open_dataset(f"npz:{path}")


def test_an_npz_image_of_30000_x_30000_is_refused_before_it_is_inflated(tmp_path):
    """1 MB on disk, 900 MB inflated: the declared size is checked against MAX_IMAGE_PIXELS first."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("test_images.npy", "w", force_zip64=True) as f:
            f.write(npy((1, 30_000, 30_000), np.uint8, b""))
            chunk = b"\0" * 2**22
            for _ in range(30_000 * 30_000 // len(chunk)):
                f.write(chunk)
            f.write(b"\0" * (30_000 * 30_000 % len(chunk)))
        zf.writestr("test_labels.npy", npy((1,), np.int64, b"\0" * 8))
    assert path.stat().st_size < 2 * 2**20
    with pytest.raises(InputError, match="declares images of 30000 x 30000 pixels, above the limit of 50,000,000"):
        open_dataset(f"npz:{path}")
    model = write_model(tmp_path / "task1.onnx")
    for args in (["embed", "--model", model, "--dataset", f"npz:{path}", "--store", "s", "--provider", "cpu"],
                 ["audit", f"npz:{path}", "--within", "--store", "s", "--out", "a"]):
        assert_one_line(cli(*args, cwd=tmp_path, timeout=120), "30000 x 30000 pixels")


def test_a_stored_shard_declaring_100_gb_over_1_kb_is_refused_unread(tmp_path):
    """Even with every digest forged (the manifest resealed too), the header is checked against the
    file's size before the array is read."""
    path = tmp_path / "store" / "task1" / "cifar10-test"
    write_random_set(path, "task1", n=16, dim=64, shard_rows=16)
    rows = 100 * 10**9 // (64 * 4)
    emb, lab = shard_files(0)
    (path / emb).write_bytes(npy((rows, 64), np.float32, b"\0" * 1024))
    (path / lab).write_bytes(npy((rows,), np.int64, b"\0" * 1024))
    m = json.loads((path / "manifest.json").read_text())
    m["shards"] = [{"rows": rows, "embeddings_sha256": file_sha256(path / emb),
                    "labels_sha256": file_sha256(path / lab)}]
    m.update(count=rows, shard_rows=rows)
    m["dataset"]["size"] = rows
    m["manifest_sha256"] = content_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="embeddings-00000.npy: holds 1,024 bytes of data, its header declares "
                                         "100,000,000,000"):
        read_set(path)


def test_generated_data_sets_are_bounded():
    with pytest.raises(InputError, match=f"expected generated:N with N from 1 to {MAX_GENERATED}"):
        open_dataset(f"generated:{10**9}")
    assert MAX_GENERATED * 8 <= 100 * 2**20  # the labels of the largest: at most 100 MiB
    assert len(open_dataset(f"generated:{MAX_GENERATED}")) == MAX_GENERATED


def _pets(root):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_a_3_gb_file_in_a_folder_is_never_read_whole(tmp_path):
    """A sparse 3 GB 'image': the fingerprint records it unread and embed refuses (or, with --skip-bad,
    skips) it, in a process whose address space (2 GiB) could not hold it."""
    root = _pets(tmp_path / "pets")
    with open(root / "cat" / "huge.png", "wb") as f:
        f.truncate(3 * 2**30)
    assert (root / "cat" / "huge.png").stat().st_size > MAX_IMAGE_FILE_BYTES
    model = write_model(tmp_path / "task1.onnx")
    args = ("embed", "--model", model, "--dataset", "folder:pets", "--store", "s", "--provider", "cpu", "--quiet",
            "--workers", "0")
    assert_one_line(cli(*args, cwd=tmp_path, timeout=120, memory=2 * 2**30),
                    "cat/huge.png: unreadable image (too large")
    r = cli(*args, "--skip-bad", cwd=tmp_path, timeout=120, memory=2 * 2**30)
    assert r.returncode == 0 and "1 unreadable image(s) skipped" in r.stdout, r.stderr[-2000:]


def test_a_file_name_cannot_add_an_error_line(tmp_path):
    root = _pets(tmp_path / "pets")
    (root / "cat" / "bad\nerror: injected.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    model = write_model(tmp_path / "task1.onnx")
    r = cli("embed", "--model", model, "--dataset", "folder:pets", "--store", "s", "--provider", "cpu", "--quiet",
            "--workers", "0", cwd=tmp_path, timeout=120)
    assert_one_line(r, "'", r"bad\nerror: injected.png'", "unreadable image")
    assert not list((tmp_path / "s").rglob("*.partial"))  # nothing was written: no folder to resume left
