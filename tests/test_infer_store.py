"""The embedding store: sharded sets with digests, refused when corrupt or not comparable, read whole
or streamed, never seen half-replaced by a reader."""
import json
import threading

import numpy as np
import pytest

from dpcompat.common.digest import file_sha256
from dpcompat.common.errors import InputError
from dpcompat.infer.store.manifest import content_digest, shard_files
from dpcompat.infer.runtime.metadata import Preprocessing
from dpcompat.infer.store.shards import write_set
from dpcompat.infer.store.sets import check_comparable, read_set, set_path
from onnx_fixtures import leftovers, write_random_set


def test_round_trip_in_shards(tmp_path):
    written = write_random_set(tmp_path / "task1" / "cifar10-test", "task1")
    stored = read_set(tmp_path / "task1" / "cifar10-test")
    assert [s.rows for s in stored.manifest.shards] == [16, 16, 8]
    np.testing.assert_array_equal(stored.embeddings, written.embeddings)
    np.testing.assert_array_equal(stored.labels, np.arange(40) % 4)
    assert stored.manifest == written.manifest and stored.model_id == "task1" and (stored.count, stored.dim) == (40, 8)
    blocks = list(stored.blocks())
    assert all(isinstance(b.embeddings, np.memmap) for b in blocks)  # streamed, not loaded
    np.testing.assert_array_equal(np.concatenate([b.embeddings for b in blocks]), stored.embeddings)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in blocks]), stored.labels)
    assert not leftovers(tmp_path)


def _edit_manifest(path, change, reseal=False):
    """Edit the manifest; ``reseal``: forge its own digest too (an editor who knows the format)."""
    m = json.loads((path / "manifest.json").read_text())
    change(m)
    if reseal:
        m["manifest_sha256"] = content_digest(m)
    (path / "manifest.json").write_text(json.dumps(m))


def _redigest(path, index=0):
    """Make the manifest agree with shard ``index``'s files again (an edit that also forges the digests)."""
    emb, lab = shard_files(index)

    def change(m):
        m["shards"][index].update(embeddings_sha256=file_sha256(path / emb), labels_sha256=file_sha256(path / lab))
    _edit_manifest(path, change, reseal=True)


def _rewrite(path, name, change, forge=True):
    x = np.load(path / name)
    x = change(x)
    with open(path / name, "wb") as f:
        np.save(f, x, allow_pickle=x.dtype == object)
    if forge:
        _redigest(path, int(name.split("-")[1][:5]))


def corrupt(path, how):
    emb, lab = shard_files(1)
    if how == "truncated embeddings":
        data = (path / emb).read_bytes()
        (path / emb).write_bytes(data[: len(data) // 2])
    elif how == "missing labels":
        (path / lab).unlink()
    elif how == "edited labels":
        _rewrite(path, lab, lambda x: (x + 1) % 4, forge=False)
    elif how == "edited embeddings":
        _rewrite(path, emb, lambda x: x[::-1].copy(), forge=False)
    elif how == "labels count":
        _rewrite(path, lab, lambda x: x[:-1])
    elif how == "labels dtype":
        _rewrite(path, lab, lambda x: x.astype(np.float32))
    elif how == "manifest count":
        _edit_manifest(path, lambda m: m.update(count=41))
    elif how == "manifest json":
        (path / "manifest.json").write_text("{not json")
    elif how == "manifest field":
        _edit_manifest(path, lambda m: m["dataset"].pop("fingerprint"))
    elif how == "not normalised":
        _rewrite(path, emb, lambda x: x * np.where(np.arange(16) == 5, 2, 1)[:, None].astype(np.float32))
    elif how == "nan":
        _rewrite(path, emb, lambda x: np.where(np.arange(16)[:, None] == 7, np.nan, x).astype(np.float32))
    elif how == "pickled object":
        _rewrite(path, lab, lambda x: np.array([{"a": 1}] * 16, dtype=object))
    elif how == "format 1":
        _edit_manifest(path, lambda m: m.update(format_version="1"))


@pytest.mark.parametrize("how, message", [
    ("truncated embeddings", "embeddings-00001.npy: its sha256 differs from the manifest's"),
    ("missing labels", "labels-00001.npy: missing or unreadable"),
    ("edited labels", "labels-00001.npy: its sha256 differs from the manifest's"),
    ("edited embeddings", "embeddings-00001.npy: its sha256 differs"),
    ("labels count", r"labels-00001.npy: int64 \(15,\), manifest says int64 \(16,\)"),
    ("labels dtype", "labels-00001.npy: float32"),
    ("manifest count", "count 41 is not the sum of its shards' rows"),
    ("manifest json", "manifest.json: not readable JSON"),
    ("manifest field", r"malformed manifest \(no 'fingerprint'\)"),
    ("not normalised", "row 21 is not a finite unit vector"),
    ("nan", "row 23 is not a finite unit vector"),
    ("pickled object", "labels-00001.npy: not a readable .npy array"),
    ("format 1", "store format 1, this toolkit reads 2 .*run embed"),
])
def test_corrupt_sets_are_refused_with_the_file_named(tmp_path, how, message):
    path = tmp_path / "task1" / "cifar10-test"
    write_random_set(path, "task1")
    corrupt(path, how)
    with pytest.raises(InputError, match=message) as e:
        read_set(path)
    assert str(path) in str(e.value)


def test_mismatched_sets_are_refused(tmp_path):
    a = write_random_set(tmp_path / "a", "a")
    ok = write_random_set(tmp_path / "b", "b", seed=1)
    check_comparable([a, ok], [a, ok])
    check_comparable([a], [write_random_set(tmp_path / "g", "g", n=30, fingerprint="e" * 64)])  # other gallery data
    cases = {
        "dimension 16": write_random_set(tmp_path / "c", "c", dim=16),
        "preprocessing": write_random_set(tmp_path / "d", "d", preprocessing=Preprocessing(resize=40, crop=32)),
        "other query data": write_random_set(tmp_path / "e", "e", fingerprint="e" * 64),
        "other query data ": write_random_set(tmp_path / "f", "f", labels=np.arange(40)[::-1] % 4),
    }
    for message, other in cases.items():
        with pytest.raises(InputError, match=message.strip()):
            check_comparable([a, other], [a, other])


def test_model_id_must_be_a_folder_name(tmp_path):
    with pytest.raises(InputError, match="model id '../x'"):
        set_path(tmp_path, "../x", "cifar10-test")


def test_a_reader_beside_a_rewriting_writer_sees_whole_sets(tmp_path):
    path = tmp_path / "m" / "set"
    versions = [write_random_set(path, "m", seed=s, n=64, shard_rows=8) for s in (1, 2)]
    versions = [(v.embeddings.copy(), v.manifest) for v in versions]
    stop, errors = threading.Event(), []

    def rewrite():
        try:
            for i in range(16):
                embeddings, manifest = versions[i % 2]
                write_set(path, embeddings, np.arange(64) % 4, manifest, shard_rows=8)
        except Exception as e:  # reported by the main thread
            errors.append(e)
        finally:
            stop.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    reads = 0
    while not stop.is_set() or reads < 5:
        got = read_set(path)
        assert any(np.array_equal(got.embeddings, v[0]) and got.manifest == v[1] for v in versions)
        reads += 1
    writer.join()
    assert not errors and not leftovers(tmp_path)


def test_a_missing_set_is_named(tmp_path):
    for path in (tmp_path / "none" / "x", tmp_path / "x"):
        with pytest.raises(InputError, match=f"{path}: no stored embeddings there"):
            read_set(path)


def unlabelled_set(path, model_id="u", **options):
    """A stored set of unlabelled data: the random set's vectors, written without labels."""
    labelled = write_random_set(path.with_name(path.name + "-labelled"), model_id, **options)
    return write_set(path, np.asarray(labelled.embeddings), None, labelled.manifest, shard_rows=16)


def test_an_unlabelled_set_has_no_labels_files_and_says_so(tmp_path):
    path = tmp_path / "u" / "set"
    stored = unlabelled_set(path)
    assert sorted(p.name for p in path.iterdir()) == ["embeddings-00000.npy", "embeddings-00001.npy",
                                                       "embeddings-00002.npy", "manifest.json"]
    m = json.loads((path / "manifest.json").read_text())
    assert m["labelled"] is False and [s["labels_sha256"] for s in m["shards"]] == [None] * 3
    again = read_set(path)
    assert not again.labelled and again.labels is None and again.count == 40 == stored.count
    assert [len(b.embeddings) for b in again.row_blocks(25)] == [25, 15] and {b.labels for b in again.blocks()} == {None}
    labelled = read_set(path.with_name("set-labelled"))
    assert labelled.labelled and json.loads((labelled.path / "manifest.json").read_text())["labelled"] is True
    assert not labelled.same_items(again) and again.same_items(again)
    with pytest.raises(InputError, match="other query data"):  # same fingerprint, but one has labels
        check_comparable([labelled, again], [labelled, again])


def test_manifests_before_the_labelled_field_read_as_labelled(tmp_path):
    path = tmp_path / "task1" / "cifar10-test"
    write_random_set(path, "task1")
    _edit_manifest(path, lambda m: m.pop("labelled"), reseal=True)
    stored = read_set(path)
    assert stored.labelled and stored.labels.tolist() == (np.arange(40) % 4).tolist()


@pytest.mark.parametrize("how, message", [
    ("claims labels", "shard 0 has no labels digest, but the set is labelled"),
    ("labels digest", "shard 1 has a labels digest, but the set is not labelled"),
    ("labels file", "labels-00000.npy: a labels file in a set of unlabelled data"),
])
def test_labels_can_never_be_read_from_an_unlabelled_set(tmp_path, how, message):
    path = tmp_path / "u" / "set"
    unlabelled_set(path)
    if how == "claims labels":
        _edit_manifest(path, lambda m: m.pop("labelled"))
    elif how == "labels digest":
        _edit_manifest(path, lambda m: m["shards"][1].update(labels_sha256="0" * 64))
    else:
        np.save(path / "labels-00000.npy", np.zeros(16, np.int64))
    with pytest.raises(InputError, match=message):
        read_set(path)
