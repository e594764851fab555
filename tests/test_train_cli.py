"""`python cli.py train` end to end on generated CIFAR-100 files: tiny model, CPU, no network."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dpcompat.common.synthetic import write_synthetic_cifar
from dpcompat.train.checkpoint import list_checkpoints, model_from_checkpoint
from train_fixtures import TINY_CLI

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd, env=None, launcher=(sys.executable,)):
    return subprocess.run([*launcher, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar(root, "cifar100", num_classes=4, train_per_class=16, test_per_class=6)
    return root


TRAIN = [*TINY_CLI, "--num-tasks", "2", "--epochs", "3", "--batch-size", "8", "--lr", "0.3"]


def test_two_task_training_end_to_end_and_resume(tmp_path, data_dir):
    r = run_cli("train", "--data-path", str(data_dir), "--output-dir", "out", *TRAIN, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    ckpts = list_checkpoints(tmp_path / "out" / "checkpoint")
    assert sorted(ckpts) == [1, 2]
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r_["task"] for r_ in rows] == [1, 2] and len(rows[1]["accuracy"]) == 2
    assert rows[0]["epoch_losses"][-1] < rows[0]["epoch_losses"][0]
    assert 0 <= rows[1]["forgetting"] <= 100 and "average accuracy" in r.stdout
    model, ckpt = model_from_checkpoint(ckpts[2])
    assert ckpt["args"].num_tasks == 2 and ckpt["optimizer"]["state"]
    assert ckpt["args"].provenance == {"data": "generated", "backbone": "random"}  # generated data, --no-pretrained
    first = model_from_checkpoint(ckpts[1])[0]
    # frozen backbone, trained prompts
    assert torch.equal(first.state_dict()["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])
    assert not torch.equal(first.state_dict()["e_prompt.prompt"], model.state_dict()["e_prompt.prompt"])

    # resume after losing the last checkpoint: only task 2 is trained again, identically
    task1_mtime = ckpts[1].stat().st_mtime_ns
    before = model.state_dict()["e_prompt.prompt"].clone()
    ckpts[2].unlink()
    r = run_cli("train", "--data-path", str(data_dir), "--output-dir", "out", *TRAIN, "--resume", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming after task 1" in r.stdout and "task 1/2" not in r.stdout and "task 2/2" in r.stdout
    assert ckpts[1].stat().st_mtime_ns == task1_mtime
    again = model_from_checkpoint(ckpts[2])[0].state_dict()["e_prompt.prompt"]
    assert torch.allclose(again, before, atol=1e-6)
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


DDP_SCRIPT = """
import os, runpy, torch
runpy.run_path({checkout!r})["import_checkout"]()
from dpcompat.train.loop import TrainOptions, train
opts = TrainOptions(data_path={data!r}, output_dir="out", num_tasks=2, epochs=2, batch_size=4, lr=0.3,
                    workers=0, quiet=True, pretrained=False, device="cpu")
arch = dict(model="vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=6, num_heads=4)
result = train(opts, arch)
trained = {{n: p.detach() for n, p in result.model.named_parameters() if n.startswith(("g_prompt", "e_prompt", "head"))}}
torch.save(trained, os.path.join({dump!r}, "rank%s.pt" % os.environ["RANK"]))
"""


def test_torchrun_two_cpu_processes(tmp_path, data_dir):
    dump = tmp_path / "dump"
    dump.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(checkout=str(ROOT / "checkout.py"), data=str(data_dir), dump=str(dump)))
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29517", str(script)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "checkpoint", "checkpoint/task1_checkpoint.pth", "checkpoint/task2_checkpoint.pth", "metrics.jsonl"]
    assert r.stdout.count("task 2/2:") == 1  # only rank 0 reports
    a, b = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved = model_from_checkpoint(out / "checkpoint" / "task2_checkpoint.pth")[0].state_dict()
    assert torch.equal(saved["e_prompt.prompt"], a["e_prompt.prompt"])


def test_missing_dataset_is_one_line_exit_2(tmp_path):
    r = run_cli("train", "--data-path", "nowhere", *TRAIN, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "nowhere/cifar-100-python/train" in r.stderr
    assert "--download" in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_offline_pretrained_says_both_ways_out(tmp_path, data_dir):
    args = [a for a in TRAIN if a != "--no-pretrained"]
    r = run_cli("train", "--data-path", str(data_dir), *args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "--pretrained-weights" in r.stderr and "--no-pretrained" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "output").exists()


def test_num_tasks_must_divide_classes(tmp_path, data_dir):
    r = run_cli("train", "--data-path", str(data_dir), *TRAIN[:-6], "--num-tasks", "3", cwd=tmp_path)
    assert r.returncode == 2 and "--num-tasks 3 must divide the 4 classes" in r.stderr


def test_debug_shows_traceback(tmp_path):
    r = run_cli("--debug", "train", "--data-path", "nowhere", *TRAIN, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr
