"""Production galleries as they are (issue 24, phase 1): flat folders and sharded folders without labels,
file lists with and without labels, their fingerprints, the unlabelled store, and evaluate on them
(label-free metrics only; a label metric refused with the reason)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from dpcompat.common.errors import InputError
from dpcompat.evaluate.pipeline import evaluate_sets
from dpcompat.infer.data import files
from dpcompat.infer.data.datasets import dataset_key, dataset_location, open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import leftovers, run_cli, write_model


def CPU(**options):
    return RuntimeOptions(provider="cpu", **options)


def image(path, seed, size=(20, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def flat_gallery(root):
    """Five images directly in ``root`` (out of order on disk), a hidden one, a text file, an empty sub-folder."""
    for seed, name in enumerate(["b.png", "a-b.jpg", "A.webp", "a.png", "c.JPEG"]):
        image(root / name, seed)
    image(root / ".hidden.png", 9)
    (root / "notes.txt").write_text("not an image")
    (root / "thumbs").mkdir()
    return root


def test_flat_folder_is_unlabelled_in_a_stable_order(tmp_path):
    ds = open_dataset(f"folder:{flat_gallery(tmp_path / 'gallery')}")
    assert not ds.labelled and ds.labels is None and ds.labels_without(()) is None and ds.classes == []
    assert [ds.item_name(i) for i in range(len(ds))] == ["A.webp", "a-b.jpg", "a.png", "b.png", "c.JPEG"]
    assert ds.key.startswith("folder-gallery-") and all(ds.image(i).mode == "RGB" for i in range(len(ds)))
    again = open_dataset(f"folder:{tmp_path / 'gallery'}")
    assert again.fingerprint == ds.fingerprint and again.unreadable_items() == ()


def test_images_spec_takes_every_image_below_without_labels(tmp_path):
    root = tmp_path / "shards"
    for seed, rel in enumerate(["ab/x.jpg", "a/b.jpg", "a-b/c.jpg", "top.png", "a/deeper/z.png", ".cache/h.png"]):
        image(root / rel, seed)
    ds = open_dataset(f"images:{root}")
    # component by component: a/... before a-b/... (a string sort would put a-b first)
    assert [ds.item_name(i) for i in range(len(ds))] == ["a/b.jpg", "a/deeper/z.png", "a-b/c.jpg", "ab/x.jpg", "top.png"]
    assert not ds.labelled and ds.location == f"images:{root.resolve()}" and ds.key.startswith("images-shards-")
    assert dataset_key(f"images:{root}") != dataset_key(f"folder:{root}")
    with pytest.raises(InputError, match="a labelled folder has images only in its class sub-folders.*images:"):
        open_dataset(f"folder:{root}")  # images both directly in it and in sub-folders: ambiguous


def test_class_folders_stay_labelled(tmp_path):
    for seed, rel in enumerate(["dog/1.png", "cat/2.png", "cat/sub/3.png"]):
        image(tmp_path / "pets" / rel, seed)
    ds = open_dataset(f"folder:{tmp_path / 'pets'}")
    assert ds.labelled and ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1]
    assert [ds.item_name(i) for i in range(3)] == ["cat/2.png", "cat/sub/3.png", "dog/1.png"]


def write_list(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_list_without_labels_relative_and_absolute(tmp_path):
    a, b = image(tmp_path / "lists" / "img" / "a.png", 1), image(tmp_path / "elsewhere" / "b.jpg", 2)
    listed = write_list(tmp_path / "lists", "gallery.txt", ["img/a.png", "", f"  {b}  "])
    ds = open_dataset(f"list:{listed}")
    assert not ds.labelled and len(ds) == 2 and ds.files == [a, b]
    assert [ds.item_name(i) for i in range(2)] == ["img/a.png", str(b)]
    assert ds.location == f"list:{listed.resolve()}" and ds.key.startswith("list-gallery.txt-")
    np.testing.assert_array_equal(np.asarray(ds.image(1)), np.asarray(Image.open(b).convert("RGB")))


def test_csv_list_with_labels(tmp_path):
    for i in range(3):
        image(tmp_path / f"{i}.png", i)
    listed = write_list(tmp_path, "q.csv", ["label,path", "7, 2.png", "0,0.png", "9223372036854775807,1.png"])
    ds = open_dataset(f"list:{listed}")
    assert ds.labelled and ds.labels.dtype == np.int64 and ds.labels.tolist() == [7, 0, 2**63 - 1]
    assert [ds.item_name(i) for i in range(3)] == ["2.png", "0.png", "1.png"]
    unlabelled = open_dataset(f"list:{write_list(tmp_path, 'g.csv', ['path', '0.png', '1.png'])}")
    assert not unlabelled.labelled and len(unlabelled) == 2


@pytest.mark.parametrize("name, lines, message", [
    ("a.csv", ["path,label", "0.png,cat"], r"line 2: label 'cat' is not a whole number .* number the classes"),
    ("a.csv", ["path,label", "0.png,-1"], r"label '-1' is not a whole number"),
    ("a.csv", ["path,label", "0.png,9223372036854775808"], "not a whole number from 0 to 9223372036854775807"),
    ("a.csv", ["path,label", "0.png,"], r"line 2: label '' is not"),
    ("a.csv", ["file,label", "0.png,1"], r"header 'file,label', expected the columns path and optionally label"),
    ("a.csv", ["path,path", "0.png,0.png"], "each once"),
    ("a.csv", ["path,label", "0.png"], r"line 2: 1 field\(s\), the header has 2"),
    ("a.csv", ["path"], "lists no image"),
    ("a.txt", ["", "  "], "lists no image"),
    ("a.txt", ["0.png", "./0.png"], r"line 2: ./0.png is listed twice \(first on line 1\)"),
])
def test_bad_lists_are_refused_with_the_line(tmp_path, name, lines, message):
    image(tmp_path / "0.png", 0)
    with pytest.raises(InputError, match=message):
        open_dataset(f"list:{write_list(tmp_path, name, lines)}")


def test_missing_list_and_non_utf8(tmp_path):
    with pytest.raises(InputError, match="nope.txt does not exist"):
        open_dataset(f"list:{tmp_path / 'nope.txt'}")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(InputError, match="is not UTF-8 text"):
        open_dataset(f"list:{tmp_path / 'bin.txt'}")


def test_list_fingerprint_covers_files_order_and_labels(tmp_path):
    for i in range(3):
        image(tmp_path / f"{i}.png", i)
    spec = f"list:{write_list(tmp_path, 'l.csv', ['path,label', '0.png,0', '1.png,1', '2.png,1'])}"
    before = open_dataset(spec).fingerprint
    assert open_dataset(spec).fingerprint == before
    image(tmp_path / "1.png", 99)  # the listed file's bytes change, the list does not
    changed_bytes = open_dataset(spec).fingerprint
    write_list(tmp_path, "l.csv", ["path,label", "1.png,1", "0.png,0", "2.png,1"])
    reordered = open_dataset(spec).fingerprint
    write_list(tmp_path, "l.csv", ["path,label", "1.png,1", "0.png,0", "2.png,0"])
    relabelled = open_dataset(spec).fingerprint
    write_list(tmp_path, "l.csv", ["path", "1.png", "0.png", "2.png"])
    unlabelled = open_dataset(spec).fingerprint
    assert len({before, changed_bytes, reordered, relabelled, unlabelled}) == 5


def test_fingerprint_reads_no_more_than_a_header_of_a_non_image(tmp_path, monkeypatch):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as f:  # sparse: 3 GB on paper, nothing on disk
        f.truncate(3 * 2**30)
    (tmp_path / "text.png").write_bytes(b"just some text, " * 65_536)
    image(tmp_path / "ok.png", 0)
    hashed = []
    real = files.file_sha256
    monkeypatch.setattr(files, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    assert files.file_digest(huge) == ("too large", False)
    assert files.file_digest(tmp_path / "text.png") == ("not an image", False)
    assert files.file_digest(tmp_path / "missing.png") == ("missing", False)
    assert files.file_digest(tmp_path / "ok.png")[1] and hashed == ["ok.png"]
    with pytest.raises(InputError, match="above the limit of 400,000,000 for an image file"):
        files.open_image(huge)


def unlabelled_sets(tmp_path, model):
    ds = open_dataset(f"folder:{flat_gallery(tmp_path / 'gallery')}")
    return ds, embed_dataset(model, ds, tmp_path / "store", runtime=CPU(batch_size=2), shard_rows=3)


def test_embed_a_flat_folder_stores_no_labels(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    ds, r = unlabelled_sets(tmp_path, model)
    path = tmp_path / "store" / "task1" / ds.key
    assert not r.reused and sorted(p.name for p in path.iterdir()) == [
        "embeddings-00000.npy", "embeddings-00001.npy", "manifest.json"]
    m = json.loads((path / "manifest.json").read_text())
    assert m["labelled"] is False and all(s["labels_sha256"] is None for s in m["shards"])
    stored = read_set(path)
    assert not stored.labelled and stored.labels is None and stored.count == 5
    assert all(b.labels is None for b in stored.blocks()) and all(b.labels is None for b in stored.row_blocks(2))
    # the rows are the items in the folder's order: the same as a list naming them in that order
    listed = write_list(tmp_path, "same.txt", [str(f) for f in ds.files])
    by_list = embed_dataset(model, open_dataset(f"list:{listed}"), tmp_path / "store", runtime=CPU())
    np.testing.assert_array_equal(by_list.set.embeddings, stored.embeddings)
    assert embed_dataset(model, ds, tmp_path / "store", runtime=CPU()).reused
    assert not leftovers(tmp_path / "store")


def test_unreadable_listed_files_stop_before_work_or_are_skipped(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    image(tmp_path / "0.png", 0)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    listed = write_list(tmp_path, "l.csv", ["path,label", "0.png,3", "gone.png,1", "bad.png,2"])
    ds = open_dataset(f"list:{listed}")
    assert ds.unreadable_items() == (("gone.png", "missing"), ("bad.png", "cannot be read"))
    with pytest.raises(InputError, match=r"gone.png: unreadable image \(missing; 2 such item\(s\) in all\).*--skip-bad"):
        embed_dataset(model, ds, tmp_path / "store", runtime=CPU())
    assert not (tmp_path / "store").exists()  # refused before anything was written
    r = embed_dataset(model, ds, tmp_path / "store", runtime=CPU(skip_bad=True))
    assert r.set.manifest.skipped == ("gone.png", "bad.png") and r.set.labels.tolist() == [3]


def test_unlabelled_folder_cli_embeds_and_evaluates_label_free(tmp_path):
    write_model(tmp_path / "task1.onnx")
    write_model(tmp_path / "task2.onnx", task=2)
    flat_gallery(tmp_path / "gallery")
    r = run_cli("embed", "--model", "task1.onnx", "--dataset", "folder:gallery", "--store", "emb", "--provider", "cpu",
                "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"wrote emb/task1/{dataset_key(f'folder:{tmp_path}/gallery')}: 5 x 16" in r.stdout
    common = ("--query", "folder:gallery", "--store", "emb", "--out", "rep", "--provider", "cpu", "--quiet", "--k", "2")
    e = run_cli("evaluate", "task1.onnx", "task2.onnx", *common, "--primary-metric", "top1", cwd=tmp_path)
    assert e.returncode == 2 and e.stderr.count("\n") == 1 and not e.stdout
    assert e.stderr.startswith("error: --primary-metric top1: folder:gallery is unlabelled, and top-1 compares the "
                               "labels of retrieved items; on unlabelled data evaluate offers the label-free metrics")
    assert not (tmp_path / "emb" / "task2").exists()  # refused before embedding
    e = run_cli("evaluate", "task1.onnx", "task2.onnx", *common, "--index", "flat", cwd=tmp_path)
    assert e.returncode == 2 and e.stderr.startswith("error: folder:gallery: unlabelled data; --index measure")
    ok = run_cli("evaluate", "task1.onnx", "task2.onnx", *common, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "rep" / "compatibility.json").read_text())
    assert list(report["metrics"]) == ["self-top1", "self-top5", "overlap@k"] and report["protocol"]["labelled"] is False
    assert report["decision"]["rule"]["metric"] == "self-top1" and "label-free" in report["decision"]["rule"]["text"]
    assert [p["reference"] for p in report["decision"]["pairs"]] == [1.0]  # the deployed model retrieves itself
    assert report["self_rank"]["median"][0][0] == 1 and "negative_flips.png" not in report["figures"]
    s = run_cli("evaluate", "--from-store", "task1,task2", "--query", "folder:gallery", "--store", "emb", "--out",
                "rep2", "--k", "2", cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert json.loads((tmp_path / "rep2" / "compatibility.json").read_text())["metrics"] == report["metrics"]


def test_evaluate_sets_on_unlabelled_sets_needs_the_same_items(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    _, r = unlabelled_sets(tmp_path, model)
    ev = evaluate_sets([r.set], [r.set], k=2)
    assert list(ev.result.metrics) == ["self-top1", "self-top5", "overlap@k"] and ev.result.metrics["self-top1"][0, 0] == 1
    listed = write_list(tmp_path, "two.txt", [str(f) for f in open_dataset(f"folder:{tmp_path / 'gallery'}").files[:4]])
    other = embed_dataset(model, open_dataset(f"list:{listed}"), tmp_path / "store", runtime=CPU()).set
    with pytest.raises(InputError, match=r"list:.*two.txt \(.*\): the label-free metrics .* must be the gallery's items"):
        evaluate_sets([other], [r.set], k=2)


def test_location_of_file_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert dataset_location("list:l/g.csv") == f"list:{tmp_path.resolve() / 'l' / 'g.csv'}"
    assert dataset_location("images:x") == f"images:{tmp_path.resolve() / 'x'}"
    with pytest.raises(InputError, match="images:PATH, list:FILE"):
        dataset_location("nope")
    os.symlink(tmp_path, tmp_path / "link")
    assert dataset_key("list:link/g.csv") == dataset_key("list:g.csv")
