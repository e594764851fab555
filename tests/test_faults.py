"""SIGKILL at chosen points (``DPCOMPAT_KILL_AT``) of ``embed`` and ``export``: nothing partial under a
result's name, the rerun of the same command gives byte-identical results, and no leftovers."""
import json
import subprocess
import sys

import pytest

from dpcompat.common.digest import file_sha256
from dpcompat.common.faults import ENV
from dpcompat.infer.data.datasets import dataset_key
from dpcompat.infer.store.sets import read_set
from onnx_fixtures import ROOT, leftovers, run_cli, write_data, write_model

EMBED = ["embed", "--model", "m.onnx", "--dataset", "cifar10:test", "--store", "emb", "--shard-rows", "8",
         "--batch-size", "4", "--provider", "cpu", "--quiet", "--workers", "0"]
RUN_FACTS = ("created", "seconds", "manifest_sha256")  # when, how long, and the digest over them: all two runs differ in


def contents(folder):
    """Every file of a set folder: bytes, the manifest without its run facts."""
    out = {}
    for f in sorted(folder.iterdir()):
        if f.name == "manifest.json":
            m = json.loads(f.read_text())
            out[f.name] = {k: v for k, v in m.items() if k not in RUN_FACTS}
        else:
            out[f.name] = f.read_bytes()
    return out


@pytest.fixture
def reference(tmp_path):
    """Data and the model in ``tmp_path``, and the contents of an uninterrupted run into store ``ref``."""
    write_data(tmp_path / "data", test_per_class=3)
    write_model(tmp_path / "m.onnx", dim=8)
    assert run_cli(*EMBED, "--store", "ref", cwd=tmp_path).returncode == 0  # the last --store counts
    return contents(tmp_path / "ref" / "m" / dataset_key("cifar10:test", tmp_path / "data"))


# (point, hit): every write of a shard file, of progress.json and of the manifest, and the swap.
POINTS = [("embed.batch", 3), ("atomic_file.before_rename", 1), ("atomic_file.before_rename", 3),
          ("shards.before_progress", 2), ("shards.after_progress", 3), ("atomic_file.before_rename", 13),
          ("shards.before_swap", 1), ("swap.between_renames", 1), ("swap.before_cleanup", 1)]


@pytest.mark.parametrize("point, hit", POINTS)
def test_embed_killed_anywhere_resumes_to_the_same_bytes(tmp_path, reference, point, hit):
    new = file_sha256(tmp_path / "m.onnx")
    write_model(tmp_path / "m.onnx", dim=8, seed=99)
    assert run_cli(*EMBED, cwd=tmp_path).returncode == 0  # an older set, of another model file
    old = file_sha256(tmp_path / "m.onnx")
    write_model(tmp_path / "m.onnx", dim=8)  # re-exported: the set must be recomputed
    path = tmp_path / "emb" / "m" / dataset_key("cifar10:test", tmp_path / "data")
    # Killed mid-loop with two decoding processes: they must die with it (else they hold its pipes open).
    workers = ["--workers", "2"] if point == "embed.batch" else []
    killed = run_cli(*EMBED, *workers, cwd=tmp_path, env={ENV: f"{point}:{hit}"}, timeout=120)
    assert killed.returncode == -9, killed.stderr
    survivor = read_set(path)  # a whole set, the old or the new one, never a part (the reader recovers a cut swap)
    assert survivor.count == 30 and survivor.manifest.model.sha256 in (old, new)
    again = run_cli(*EMBED, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert contents(path) == reference
    assert not leftovers(tmp_path / "emb")


def test_resume_says_what_it_kept(tmp_path, reference):
    assert run_cli(*EMBED, cwd=tmp_path, env={ENV: "embed.batch:6"}).returncode == -9  # in the 3rd shard
    again = run_cli(*EMBED, cwd=tmp_path)
    assert again.returncode == 0 and "resuming after 2 complete shard(s), 16 rows" in again.stderr
    assert "(16 rows resumed from an interrupted run)" in again.stdout
    assert contents(tmp_path / "emb" / "m" / dataset_key("cifar10:test", tmp_path / "data")) == reference


def test_two_writers_of_one_set_take_turns(tmp_path, reference):
    runs = [subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *EMBED], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [r.communicate(timeout=300) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    said = sorted(out.split()[0] for out, _ in outs)
    assert said in (["reused", "wrote"], ["wrote", "wrote"])  # the second waited, then found the set (or raced ahead)
    assert contents(tmp_path / "emb" / "m" / dataset_key("cifar10:test", tmp_path / "data")) == reference
    assert not leftovers(tmp_path / "emb")


@pytest.mark.parametrize("point", ["atomic_file.before_rename"])
def test_export_killed_leaves_nothing_and_reruns_identically(tmp_path, point):
    from dpcompat.train.checkpoint import checkpoint_path, config_to_args, save_checkpoint
    from train_fixtures import tiny_model

    model = tiny_model(1)
    save_checkpoint(checkpoint_path(tmp_path / "ckpt", 1), model, None, 0, config_to_args(model.cfg))
    args = ["export", "--task", "1", "--checkpoint-dir", "ckpt", "--output-dir", "out"]
    assert run_cli(*args, "--output-dir", "ref", cwd=tmp_path).returncode == 0
    killed = run_cli(*args, cwd=tmp_path, env={ENV: point})
    assert killed.returncode == -9 and not (tmp_path / "out" / "task1.onnx").exists()
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "out" / "task1.onnx").read_bytes() == (tmp_path / "ref" / "task1.onnx").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["task1.onnx"]


def test_bench_store_accounts_for_the_work_of_a_resume(tmp_path):
    r = run_cli("bench", "store", "--small", "100", "--large", "200", "--resume-rows", "512", "--shard-rows", "64",
                "--batch-size", "32", "--workdir", "w", "--json", "s.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    # Killed after 8 batches (256 rows, 4 shards' worth) before the 4th shard was written: 3 kept, 320 redone.
    assert result["resume"]["identical"] and result["resume"]["rows_computed"] == 256 + 512 - 192
    assert [m["rows"] for m in result["memory"]] == [100, 200] and result["memory"][0]["max_rss_mib"] > 10
