"""Decoding in worker processes: the same batches as in-process (bit for bit, bad images included),
in order, a bounded number ahead, every start method, clean shutdown, options checked first."""
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.infer.data import workers as w
from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.runtime.options import RuntimeOptions
from dpcompat.infer.data.preprocess import preprocess_image
from dpcompat.infer.data.workers import batch_source
from onnx_fixtures import PREPROCESSING, write_data, write_model
from test_infer_datasets import write_folder


def collect(dataset, **kw):
    return list(batch_source(dataset, PREPROCESSING, **kw))


def assert_same_batches(a, b):
    assert [x.start for x in a] == [y.start for y in b]
    for x, y in zip(a, b):
        assert x.rows.tolist() == y.rows.tolist() and x.skipped == y.skipped
        assert x.images.dtype == y.images.dtype == np.float32 and x.images.tobytes() == y.images.tobytes()


@pytest.fixture
def pets(tmp_path):
    return open_dataset(f"folder:{write_folder(tmp_path / 'pets', bad=True)}")


@pytest.mark.parametrize("method", w.START_METHODS)
def test_worker_processes_give_the_in_process_batches_bit_for_bit(pets, method):
    local = collect(pets, batch_size=3, workers=0, skip_bad=True)
    pooled = collect(pets, batch_size=3, workers=2, skip_bad=True, start_method=method)
    assert_same_batches(local, pooled)
    # independent reference: each image on its own through the transform, the broken one left out
    rows = np.concatenate([b.rows for b in pooled])
    assert rows.tolist() == [0, 1, 2, 4, 5, 6] and sum((b.skipped for b in pooled), []) == ["cat/broken.png"]
    expected = np.stack([preprocess_image(pets.image(int(i)), PREPROCESSING) for i in rows])
    assert np.concatenate([b.images for b in pooled]).tobytes() == expected.tobytes()
    assert [b.size for b in pooled] == [3, 3, 1]


def test_bad_image_without_skip_bad_is_the_same_error_in_a_worker(pets):
    for workers in (0, 2):
        with pytest.raises(InputError, match=r"cat/broken.png: unreadable image"):
            collect(pets, batch_size=2, workers=workers)


def test_cifar_batches_from_a_start_row(tmp_path):
    ds = open_dataset("cifar10:test", write_data(tmp_path, test_per_class=3))
    local = collect(ds, batch_size=7, workers=1, start=10)
    assert [b.start for b in local] == [10, 17, 24] and local[-1].rows.tolist() == list(range(24, 30))
    assert_same_batches(local, collect(ds, batch_size=7, workers=3, start=10, prefetch=1))
    assert collect(ds, workers=2, start=30) == []


def test_results_come_in_order_with_a_bounded_number_pending():
    pending, most, lock = [0], [0], threading.Lock()

    def task(i):
        with lock:
            most[0] = max(most[0], pending[0])
        return i

    def submit(pool, bounds):
        with lock:
            pending[0] += 1
        return pool.submit(task, bounds[0])

    bounds = [(i, i + 1) for i in range(50)]
    seen = []
    for value in w._ordered(lambda: ThreadPoolExecutor(4), submit, bounds, ahead=3):
        with lock:
            pending[0] -= 1
        seen.append(value)
    assert seen == list(range(50)) and 1 <= most[0] <= 3


@pytest.mark.parametrize("how", ["close", "error"])
def test_workers_stop_when_the_consumer_stops(tmp_path, how):
    ds = open_dataset("cifar10:test", write_data(tmp_path, test_per_class=20))
    source = batch_source(ds, PREPROCESSING, batch_size=4, workers=2)
    next(source)
    assert len(multiprocessing.active_children()) == 2
    if how == "close":
        source.close()
    else:
        with pytest.raises(KeyboardInterrupt):
            source.throw(KeyboardInterrupt)
    assert multiprocessing.active_children() == []


def test_a_pool_starts_only_the_processes_its_batches_need(tmp_path):
    ds = open_dataset("cifar10:test", write_data(tmp_path, test_per_class=1))  # 10 rows: 3 batches of 4
    source = batch_source(ds, PREPROCESSING, batch_size=4, workers=8)
    next(source)
    assert len(multiprocessing.active_children()) == 3
    source.close()
    assert multiprocessing.active_children() == []
    one = batch_source(ds, PREPROCESSING, batch_size=10, workers=8)  # one batch: decoded in this process
    next(one)
    assert multiprocessing.active_children() == []
    one.close()


def test_options_are_checked_before_any_work(pets):
    for kw, message in [({"workers": -1}, "--workers -1"), ({"workers": 257}, "--workers 257: must be from 0 to 256"),
                        ({"batch_size": 0}, "--batch-size 0"),
                        ({"prefetch": 0}, "prefetch 0"), ({"start_method": "thread"}, "start method 'thread'"),
                        ({"start": 8}, "start row 8")]:
        with pytest.raises(InputError, match=message):
            batch_source(pets, PREPROCESSING, **kw)


def test_embed_with_workers_stores_the_same_set(tmp_path):
    ds = open_dataset("cifar10:test", write_data(tmp_path / "data", test_per_class=3))
    model = write_model(tmp_path / "task1.onnx")
    one = embed_dataset(model, ds, tmp_path / "a",
                        runtime=RuntimeOptions(provider="cpu", batch_size=8, workers=0, threads=1))
    # 12-row shards: batches of 8 are cut at each shard's end (8 + 4), as the store needs
    two = embed_dataset(model, ds, tmp_path / "b", shard_rows=12,
                        runtime=RuntimeOptions(provider="cpu", batch_size=8, workers=2, threads=2))
    assert one.set.embeddings.tobytes() == two.set.embeddings.tobytes()
    assert one.set.labels.tolist() == two.set.labels.tolist() == ds.labels.tolist()
