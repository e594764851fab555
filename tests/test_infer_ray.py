"""embed --engine ray on a local 2-CPU Ray: the local engine's stored set, bit for bit."""
import numpy as np
import pytest

from dpcompat.common.errors import InputError
from dpcompat.infer.data.datasets import open_dataset
from dpcompat.infer.embed import embed_dataset
from dpcompat.infer.engines.ray import embed_with_ray, runtime_env
from dpcompat.infer.runtime.options import RayOptions, RuntimeOptions
from onnx_fixtures import run_cli, write_data, write_model
from test_infer_datasets import write_folder

ray = pytest.importorskip("ray", reason="Ray is not installed (extra [ray])")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env=runtime_env(tmp_path_factory.mktemp("code")))
    except Exception as e:  # noqa: BLE001 - whatever stops Ray from starting here is the skip reason
        pytest.skip(f"a local Ray cannot start here: {type(e).__name__}: {e}")
    yield
    ray.shutdown()


def test_ray_engine_stores_the_local_set_bit_for_bit(tmp_path, local_ray):
    ds = open_dataset("cifar10:test", write_data(tmp_path / "data", test_per_class=10))
    model = write_model(tmp_path / "task2.onnx", task=2)
    local = embed_dataset(model, ds, tmp_path / "a", shard_rows=40,
                          runtime=RuntimeOptions(provider="cpu", batch_size=16, workers=0, threads=1)).set
    remote = embed_dataset(model, ds, tmp_path / "b", shard_rows=40,
                           runtime=RuntimeOptions(provider="cpu", batch_size=16, threads=1, ray=RayOptions(actors=2))).set
    assert remote.count == len(ds) == 100
    assert remote.embeddings.tobytes() == local.embeddings.tobytes()
    assert remote.labels.tolist() == local.labels.tolist() and remote.manifest.provider == "cpu"
    batches = list(embed_with_ray(model, ds, runtime=RuntimeOptions(provider="cpu", batch_size=16, threads=1)))
    assert [b.start for b in batches] == list(range(0, 100, 16))
    assert np.concatenate([b.rows for b in batches]).tolist() == list(range(100))


def test_ray_engine_skips_bad_images_like_the_local_engine(tmp_path, local_ray, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative folder spec: the actors get absolute paths
    ds = open_dataset(f"folder:{write_folder(tmp_path / 'pets', bad=True).relative_to(tmp_path)}")
    model = write_model(tmp_path / "task1.onnx")
    local = embed_dataset(model, ds, tmp_path / "a",
                          runtime=RuntimeOptions(provider="cpu", batch_size=3, skip_bad=True, workers=0)).set
    remote = embed_dataset(model, ds, tmp_path / "b",
                           runtime=RuntimeOptions(provider="cpu", batch_size=3, skip_bad=True, ray=RayOptions(actors=1))).set
    assert remote.manifest.skipped == local.manifest.skipped == ("cat/broken.png",)
    assert remote.embeddings.tobytes() == local.embeddings.tobytes()


def test_ray_options_are_checked_before_ray_starts(tmp_path):
    model = write_model(tmp_path / "task1.onnx")
    ds = open_dataset("cifar10:test", write_data(tmp_path / "data", test_per_class=1))
    with pytest.raises(InputError, match="--actors 0"):
        embed_with_ray(model, ds, runtime=RuntimeOptions(ray=RayOptions(actors=0)))
    bad = run_cli("embed", "--model", str(model), "--dataset", "cifar10:test", "--data-path", "data",
                  "--gpus-per-actor", "1", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr == "error: --ray-address and --gpus-per-actor need --engine ray\n"
