"""Hostile and careless command lines: every one must end in one line ``error: ...`` on stderr and exit
code 2, before any long work, leaving nothing behind (issue 10, "One clear error, never a traceback")."""
import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from dpcompat.cli import cli
from dpcompat.common.synthetic import write_synthetic_cifar
from dpcompat.train.checkpoint import checkpoint_path, config_to_args, save_checkpoint
from onnx_fixtures import run_cli, write_model
from train_fixtures import TINY_CLI, tiny_model

LONG = "n" * 300  # longer than any file system's name limit (255 bytes)
UNWRITABLE = "/sys/dpcompat-out"  # sysfs refuses new entries even to root


def run(*args, **env) -> "click.testing.Result":
    return CliRunner(env=env or None).invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_one_line(r, *expected: str, progress: bool = False) -> None:
    """Exit 2, one ``error:`` line on stderr naming ``expected``; nothing on stdout unless ``progress``."""
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.output and (progress or r.stdout == ""), r.output
    for text in expected:
        assert text in r.stderr, (text, r.stderr)


IMPOSSIBLE = [
    (["export", "--tasks", ","], "--tasks ,: expected one or more"),
    (["export", "--tasks", "1,,3"], "--tasks 1,,3"),
    (["export", "--tasks", "2,2"], "names a value more than once"),
    (["export", "--tasks", "0"], "--tasks 0"),
    (["export", "--tasks", "a"], "not an integer"),
    (["export", "--task", "0"], "--task 0: expected an integer >= 1"),
    (["export", "--task", "-3"], "--task -3"),
    (["bench", "evaluate", "--classes", "0"], "--classes 0"),
    (["bench", "evaluate", "--models", "0"], "--models 0"),
    (["bench", "evaluate", "--queries", "1"], "--queries 1"),
    (["bench", "evaluate", "--dim", "-1"], "--dim -1"),
    (["bench", "evaluate", "--separation", "nan"], "--separation nan: expected a finite number from 0 to 100"),
    (["bench", "embed", "--model", "m.onnx", "--batch-sizes", "0"], "--batch-sizes 0"),
    (["bench", "embed", "--model", "m.onnx", "--batch-sizes", ""], "--batch-sizes"),
    (["bench", "embed", "--model", "m.onnx", "--batch-sizes", "8,8"], "more than once"),
    (["bench", "embed", "--model", "m.onnx", "--batch-sizes", "1,100000"], "1 to 4096"),
    (["bench", "embed", "--model", "m.onnx", "--repeats", "0"], "--repeats 0"),
    (["embed", "--model", "m.onnx", "--dataset", "cifar10:test", "--batch-size", "0"], "--batch-size 0"),
    (["embed", "--model", "m.onnx", "--dataset", "cifar10:test", "--batch-size", "10000000"], "1 to 4096"),
    (["embed", "--dataset", "cifar10:test"], "--model: required"),
    (["evaluate", "--from-store", "a", "--k", "0"], "--k 0"),
    (["evaluate", "--from-store", "a", "--batch-size", "-5"], "--batch-size -5"),
    (["verify", "--task", "1", "--random", "1"], "--random 1: expected an integer >= 2"),
    (["verify", "--task", "1", "--limit", "0"], "--limit 0"),
    (["verify", "--task", "1", "--seed", "-1"], "--seed -1"),
    (["verify", "--task", "1", "--provider", "gpu"], "--provider"),
    (["train", "--limit-per-class", "0"], "--limit-per-class 0"),
    (["train", "--limit-per-class", "-1"], "--limit-per-class -1"),
    (["train", "--lr", "nan"], "--lr nan: expected a finite number above 0"),
    (["train", "--lr", "inf"], "--lr inf"),
    (["train", "--lr", "0"], "--lr 0"),
    (["train", "--lr", "-0.1"], "--lr -0.1"),
    (["train", "--epochs", "0"], "--epochs 0"),
    (["train", "--batch-size", "0"], "--batch-size 0"),
    (["train", "--workers", "-1"], "--workers -1"),
    (["train", "--num-tasks", "0"], "--num-tasks 0"),
    (["train", "--num-heads", "0"], "--num-heads 0"),
    (["train", "--num-heads", "-4"], "--num-heads -4"),
    (["train", "--patch-size", "0"], "--patch-size 0"),
    (["train", "--embed-dim", "0"], "--embed-dim 0"),
    (["train", "--depth", "0"], "--depth 0"),
    (["train", "--input-size", "-32"], "--input-size -32"),
    (["train", "--prompt-length", "0"], "--prompt-length 0"),
    (["train", "--g-prompt-length", "0"], "--g-prompt-length 0"),
    (["train", "--pool-size", "0"], "--pool-size 0"),
    (["train", "--top-k", "0"], "--top-k 0"),
    (["train", "--e-prompt-layers", ""], "--e-prompt-layers"),
    (["train", "--e-prompt-layers", "2,2"], "more than once"),
    (["train", "--g-prompt-layers", "-1"], "--g-prompt-layers -1"),
    (["train", "--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
    (["train", "--device", "cuda:x"], "--device cuda:x"),
    (["train", "--seed", "-1"], "--seed -1"),
    (["train", "--bogus"], "--bogus: no such option"),
    (["--bogus"], "--bogus: no such option"),
    (["nonsense"], "No such command"),
    (["export", "--precision", "fp8", "--all"], "--precision"),
]


@pytest.mark.parametrize("args, expected", IMPOSSIBLE, ids=[" ".join(a) for a, _ in IMPOSSIBLE])
def test_impossible_options_are_one_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line(run(*args), expected)
    assert list(tmp_path.iterdir()) == []


def _blocked_places(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """A path for each way an output place can be impossible, with the reason the error must give."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    return {"existing file": (str(blocker), "a-file is a file"),
            "file above": (str(blocker / "sub"), "a-file is a file"),
            "unwritable": (UNWRITABLE, "cannot write there"),
            "name too long": (str(tmp_path / LONG), "too long")}


OUTPUT_DIR_COMMANDS = {
    "train": (["train", "--data-path", "nowhere", "--output-dir"], "--output-dir"),
    "export": (["export", "--all", "--checkpoint-dir", "{ckpt}", "--output-dir"], "--output-dir"),
    "embed": (["embed", "--model", "m.onnx", "--dataset", "cifar10:test", "--store"], "--store"),
    "evaluate": (["evaluate", "--from-store", "a,b", "--out"], "--out"),
    "evaluate store": (["evaluate", "--models", "m.onnx", "--store"], "--store"),
    "bench evaluate": (["bench", "evaluate", "--workdir"], "--workdir"),
    "bench export": (["bench", "export", "--workdir"], "--workdir"),
    "demo": (["demo", "--workdir"], "--workdir"),
    "verify --report": (["verify", "--task", "1", "--report"], "--report"),
    "bench embed --json": (["bench", "embed", "--model", "m.onnx", "--json"], "--json"),
    "bench evaluate --json": (["bench", "evaluate", "--json"], "--json"),
}
PLACES = ["existing file", "file above", "unwritable", "name too long"]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("command", list(OUTPUT_DIR_COMMANDS))
def test_output_places_are_checked_first(command, place, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "task1_checkpoint.pth").write_bytes(b"not read before the output check")
    (tmp_path / "m.onnx").write_bytes(b"not read before the output check")
    args, option = OUTPUT_DIR_COMMANDS[command]
    path, reason = _blocked_places(tmp_path)[place]
    if option in ("--report", "--json") and place == "existing file":
        path, reason = str(tmp_path), "is a directory"
    before = sorted(tmp_path.rglob("*"))
    r = run(*[a.format(ckpt=ckpt) for a in args], path)
    assert_one_line(r, option, reason)
    assert sorted(tmp_path.rglob("*")) == before  # the probe leaves nothing behind


def test_full_disk_is_one_line_before_training(tmp_path, monkeypatch):
    import dpcompat.common.outputs as outputs

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "write", full)
    r = run("train", "--data-path", "nowhere", "--output-dir", tmp_path / "out")
    assert_one_line(r, f"--output-dir {tmp_path / 'out'}: cannot write there (no space left on the device)")
    assert not (tmp_path / "out").exists()


def test_os_error_during_the_work_names_the_file(tmp_path, monkeypatch):
    import dpcompat.bench.evaluate as bench

    def fails(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "w" / "store" / "embeddings.npy"))

    monkeypatch.setattr(bench, "bench_evaluate", fails)
    r = run("bench", "evaluate", "--workdir", tmp_path / "w", "--models", "2", "--queries", "10", "--dim", "4")
    assert_one_line(r, f"{tmp_path / 'w' / 'store' / 'embeddings.npy'}: no space left on the device")


def test_bench_evaluate_refuses_a_store_larger_than_the_disk(tmp_path):
    r = run("bench", "evaluate", "--workdir", tmp_path / "w", "--queries", 10 ** 9, "--dim", 4096)
    assert_one_line(r, "GiB free")
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_cifar(root, "cifar100", num_classes=4, train_per_class=2, test_per_class=1)
    return root


TRAIN = [*TINY_CLI, "--num-tasks", "2", "--epochs", "1", "--batch-size", "4"]


@pytest.mark.parametrize("override, expected", [
    (["--patch-size", "5"], "patch_size 5 does not divide input size 32"),
    (["--num-heads", "5"], "not divisible by num_heads 5"),
    (["--e-prompt-layers", "7"], "must be distinct layers of a 6-block model"),
    (["--e-prompt-layers", "0,2"], "must be distinct layers"),
    (["--top-k", "11"], "top_k 11 must be between 1 and the pool size 10"),
    (["--num-tasks", "3"], "--num-tasks 3 must divide the 4 classes"),
    (["--device", "cuda:99"], "--device cuda:99"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_impossible_architectures_before_training(override, expected, tiny_data, tmp_path):
    r = run("train", "--data-path", tiny_data, "--output-dir", tmp_path / "out", *TRAIN, *override)
    assert_one_line(r, expected)
    assert not (tmp_path / "out").exists()


def test_corrupt_metrics_under_resume(tiny_data, tmp_path):
    out = tmp_path / "out"
    model = tiny_model(num_classes=4)
    save_checkpoint(checkpoint_path(out / "checkpoint", 1), model, None, 0, config_to_args(model.cfg))
    for bad in ("{not json\n", '{"task": "1", "accuracy": [1]}\n', '{"task": 1, "accuracy": [NaN]}\n', "[]\n"):
        (out / "metrics.jsonl").write_text(bad)
        r = run("train", "--data-path", tiny_data, "--output-dir", out, *TRAIN, "--resume")
        assert_one_line(r, f"{out / 'metrics.jsonl'}: line 1 is not a metrics row", progress=True)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["task1_checkpoint.pth"]


def test_offline_train_fails_at_once_naming_both_ways_out(tiny_data, tmp_path, monkeypatch):
    import dpcompat.train.weights as weights

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(weights.socket, "create_connection", unreachable)
    args = [a for a in TRAIN if a != "--no-pretrained"]
    r = run("train", "--data-path", tiny_data, "--output-dir", tmp_path / "out", *args)
    assert_one_line(r, "huggingface.co is unreachable", "--pretrained-weights", "--no-pretrained")


def test_unusual_pickle_protocol_is_one_line_without_torch_warnings(tmp_path):
    import pickle

    folder = tmp_path / "ckpt"
    folder.mkdir()
    with open(folder / "task1_checkpoint.pth", "wb") as f:
        pickle.dump({"model": {"w": [1.0]}}, f, protocol=5)  # torch warns about protocol 5 before refusing
    r = run_cli("export", "--task", "1", "--checkpoint-dir", str(folder), "--output-dir", "out", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "task1_checkpoint.pth: refused" in r.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [
    ["export", "--all", "--output-dir", "out"],
    ["accuracy", "--out", "out"],
    ["verify", "--onnx", "m.onnx"],
    ["bench", "embed", "--model", "m.onnx", "--compare-torch", "--photos", "0"],
], ids=lambda c: " ".join(c[:2]))
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_checkpoint_folder_that_is_not_one_says_so(tmp_path, monkeypatch, command, kind):
    monkeypatch.chdir(tmp_path)
    write_model(tmp_path / "m.onnx")
    if kind == "file":
        (tmp_path / "nope").write_text("")
    r = run(*command, "--checkpoint-dir", tmp_path / "nope")
    reason = "no such folder" if kind == "missing" else "not a folder"
    assert_one_line(r, f"--checkpoint-dir {tmp_path / 'nope'}: {reason}")
    assert not (tmp_path / "out").exists()


def test_missing_cifar_says_how_to_fetch_it(tmp_path):
    write_model(tmp_path / "m.onnx")
    r = run("embed", "--model", tmp_path / "m.onnx", "--dataset", "cifar10:test", "--data-path", tmp_path / "d",
            "--store", tmp_path / "s")
    assert_one_line(r, "cifar10 test split not found", "pass --download")
