"""Every example command in README.md and in every page of docs/ works as written (issue 10: "Every
README example runs as written"; issue 20: the docs' examples too).

Test A parses every example with click against cli.py's commands, without running it: the command
exists, every option exists, choices are valid, required options are given. Test B runs every example
that can run here on the outputs of the demo's smoke setting (the session's ``demo_run``), with the
pages' placeholder paths mapped onto the demo's folders. An example that cannot run on a test machine
says why on its page, with a trailing ``# needs: ...`` comment; exactly those are skipped.
"""
from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image

from dpcompat.cli import cli
from dpcompat.common.cifar import load_cifar
from dpcompat.demo import DEMO, next_commands
from readme_commands import Example, doc_examples, pages

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = doc_examples()
DEMO_TASKS = 2  # the smoke demo trains tasks 1 and 2; the pages' examples name tasks of a 10-task run

# The pages' placeholder folders (relative to where the commands run: the folder the demo ran in) -> the
# demo's. ref, study, output-5x20 and runs/a are outputs of documented `train` runs that take hours.
LINKS = {"data": "demo-run/data", "output": "demo-run/output", "exports": "demo-run/exports",
         "embeddings": "demo-run/embeddings", "ref": "demo-run/output", "study": "demo-run/output",
         "output-5x20": "demo-run/output", "runs/a": "demo-run/output"}
# Absolute placeholder paths -> folders beside the demo's.
ABSOLUTE = {"/srv/gallery": "gallery", "/shared/gallery": "gallery", "/srv/photos": "photos",
            "/tmp/bench-index": "bench-index"}
# Smaller values for knobs the pages show, where their values take minutes on 2 cores (`demo`:
# its `demo --smoke`; `train`: the width overrides of its options table).
REDUCED = {("demo",): {"--smoke": None},
           ("train",): {"--input-size": "32", "--patch-size": "8", "--embed-dim": "64", "--depth": "5",
                        "--num-heads": "4"},
           ("bench", "evaluate"): {"--models": "3", "--queries": "500", "--dim": "64"},
           ("bench", "export"): {"--model": "vit_tiny_patch16_224"},
           ("bench", "index"): {"--gallery": "4000", "--queries": "200"},
           ("bench", "store"): {"--small": "200", "--large": "2000", "--resume-rows": "1000"}}
_TASK = re.compile(r"(?<![A-Za-z])task(\d+)")


def _fewer(match: re.Match) -> str:
    return f"task{min(int(match[1]), DEMO_TASKS)}"


def demo_args(example: Example, where: Path) -> list[str]:
    """The example's arguments on the demo's outputs in ``where``: absolute placeholders mapped, task N
    read as task min(N, 2) (a list naming a task twice keeps it once), REDUCED knobs applied."""
    out, previous = [], None
    for word in example.args:
        for placeholder, folder in ABSOLUTE.items():
            word = word.replace(placeholder, str(where / folder))
        items = word.split(",")
        if previous in ("--task", "--tasks"):
            items = [str(min(int(n), DEMO_TASKS)) for n in items]
        new = ",".join(dict.fromkeys(_TASK.sub(_fewer, item) for item in items))
        previous = word
        if new != word and new in out:
            continue
        out.append(new)
    return _reduced(out)


def _reduced(args: list[str]) -> list[str]:
    path = tuple(a for a in args if not a.startswith("-"))[:2]
    knobs = next((k for p, k in REDUCED.items() if path[:len(p)] == p), {})
    for option, value in knobs.items():
        if option not in args:
            args = args + [option] + ([value] if value is not None else [])
        elif value is not None:
            args[args.index(option) + 1] = value
    return args


def parse(args: list[str], monkeypatch, capsys) -> click.Context:
    """The context click builds for ``args`` (the command's, not the group's), nothing run; a usage
    error fails the test with cli.py's one-line message."""
    seen = []
    with monkeypatch.context() as m:
        m.setattr(click.Command, "invoke", lambda self, ctx: seen.append(ctx))
        code = cli.main(list(args), prog_name="cli.py", standalone_mode=False)
    if code not in (None, 0) or not seen or isinstance(seen[-1].command, click.Group):
        pytest.fail(f"{' '.join(args)}: exit {code}, {capsys.readouterr().err.strip()}")
    return seen[-1]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.where)
def test_example_parses(example, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # --json options probe their folder
    parse(list(example.args), monkeypatch, capsys)


def test_examples_are_found_and_every_launcher_is_marked():
    assert len(EXAMPLES) >= 50 and {e.args[0] for e in EXAMPLES} >= {
        "train", "accuracy", "export", "verify", "embed", "evaluate", "audit", "inspect", "doctor", "demo", "bench"}
    assert all(e.needs for e in EXAMPLES if e.launcher == "torchrun")
    assert {p.relative_to(ROOT).as_posix() for p in pages()} >= {"README.md", "docs/commands.md", "docs/study.md"}
    assert {e.page for e in EXAMPLES} >= {"README.md", "docs/commands.md", "docs/production.md", "docs/reference.md",
                                          "docs/study.md"}
    assert len({e.block for e in EXAMPLES}) == len({(e.page, e.block) for e in EXAMPLES})  # no block number shared


def test_verify_finds_the_checkpoint_beside_the_export(demo_run, tmp_path, monkeypatch, capfd):
    """From a folder with no output/checkpoint, neither --onnx nor --task needs --checkpoint-dir."""
    demo, _ = demo_run
    monkeypatch.chdir(tmp_path)
    for args in (["--onnx", demo / "exports" / "task2.onnx", "--dataset", "cifar10:test", "--data-path", demo / "data",
                  "--limit", "8"], ["--task", "2", "--export-dir", demo / "exports", "--random", "8"]):
        assert cli.main(["verify", *map(str, args)], standalone_mode=False) in (None, 0)
        assert f"vs {demo / 'output' / 'checkpoint' / 'task2_checkpoint.pth'} on cpu" in capfd.readouterr().out


def test_the_demo_prints_the_readmes_next_commands(demo_run):
    """Issue 21: the demo ends with the next commands on its own outputs; they are README's block after
    the demo (the smoke run's task 2 where README says task 3), which test B runs as printed."""
    _, r = demo_run
    (first,) = [e for e in EXAMPLES if e.page == "README.md" and e.args[0] == "export"
                and "demo-run/output/checkpoint" in e.args]
    block = [e for e in EXAMPLES if e.block == first.block]
    readme = next_commands(Path("demo-run"), DEMO, launcher="python cli.py")
    assert [list(e.args) for e in block] == [shlex.split(c)[2:] for c in readme]
    printed = [shlex.split(line)[2:] for line in r.stdout.split("next, each stage on its own")[1].splitlines()[1:]
               if line.startswith("  ")]
    limit = printed[1].index("--limit") + 1  # the smoke run verifies SMOKE.verify_count images, README DEMO's
    printed[1][limit] = str(DEMO.verify_count)
    assert printed == [demo_args(e, Path.cwd()) for e in block]
    assert [e.args[0] for e in block] == ["export", "verify", "embed", "evaluate", "gate"]


# ---- Test B: run them on the demo's outputs ----


def _gallery(data: Path, folder: Path) -> None:
    """The demo's CIFAR-10 test images as a folder: data set (one sub-folder per class, PNG)."""
    split = load_cifar(data, "cifar10", "test")
    for i, (image, label) in enumerate(zip(split.images, split.labels)):
        (folder / split.classes[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / split.classes[label] / f"{i:04d}.png")


def _photos(data: Path, folder: Path, count: int = 60) -> None:
    """The first ``count`` of the demo's CIFAR-10 test images as a flat folder: an unlabelled gallery."""
    folder.mkdir(parents=True)
    for i, image in enumerate(load_cifar(data, "cifar10", "test").images[:count]):
        Image.fromarray(image).save(folder / f"{i:04d}.png")


def _medmnist(data: Path, path: Path) -> None:
    """The demo's CIFAR-10 images as a MedMNIST-layout .npz (grey train, RGB test, labels [N, 1])."""
    train, test = load_cifar(data, "cifar10", "train"), load_cifar(data, "cifar10", "test")
    np.savez(path, train_images=train.images.mean(axis=3).astype(np.uint8), train_labels=train.labels[:, None],
             val_images=test.images[:10], val_labels=test.labels[:10, None],
             test_images=test.images, test_labels=test.labels[:, None])


class Workspace:
    """The folder the demo ran in, with the pages' placeholders mapped onto the demo's outputs.
    Each code block starts from the demo's outputs as the demo left them (:meth:`reset`)."""

    def __init__(self, demo: Path, pristine: Path):
        self.where, self.demo, self.pristine = demo.parent, demo, pristine
        self.block, self.done = None, -1

    def restore(self) -> None:
        """Only the demo's outputs, as the demo left them."""
        for p in self.where.iterdir():
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p != self.demo:
                shutil.rmtree(p)
        shutil.rmtree(self.demo)
        shutil.copytree(self.pristine / "demo-run", self.demo, symlinks=True)

    def reset(self, block: int) -> None:
        """The demo's outputs and the pages' placeholders, before the first command of ``block``."""
        self.restore()
        for name, target in LINKS.items():
            (self.where / name).parent.mkdir(parents=True, exist_ok=True)
            (self.where / name).symlink_to(self.where / target, target_is_directory=True)
        (self.where / "bloodmnist.npz").symlink_to(self.pristine / "bloodmnist.npz")
        (self.where / "gallery").symlink_to(self.pristine / "gallery", target_is_directory=True)
        (self.where / "photos").symlink_to(self.pristine / "photos", target_is_directory=True)
        self.block, self.done = block, -1

    def run(self, example: Example, monkeypatch, capfd) -> tuple[int, str]:
        """(exit code, stdout + stderr) of the example run by cli.py's command group in this process
        (one import of torch for all), from this folder; a crash fails the test with its traceback."""
        capfd.readouterr()
        with monkeypatch.context() as m:
            m.chdir(self.where)
            for name, value in {"HF_HUB_OFFLINE": "1", **example.env}.items():
                m.setenv(name, value)
            code = cli.main(demo_args(example, self.where), prog_name="cli.py", standalone_mode=False)
        out, err = capfd.readouterr()
        code = code or 0
        assert code in example.exit_codes, f"{example}\nexit {code}\n{out[-2000:]}{err[-3000:]}"
        assert "Traceback" not in err, f"{example}\n{err[-3000:]}"
        return code, out + err


@pytest.fixture(scope="module")
def workspace(demo_run, tmp_path_factory):
    demo, _ = demo_run
    pristine = tmp_path_factory.mktemp("pristine")
    shutil.copytree(demo, pristine / "demo-run", symlinks=True)
    _gallery(demo / "data", pristine / "gallery")
    _photos(demo / "data", pristine / "photos")
    _medmnist(demo / "data", pristine / "bloodmnist.npz")
    ws = Workspace(demo, pristine)
    yield ws
    ws.restore()  # as the demo left it, for the session's other tests


def _is_demo_run(example: Example, demo_run, monkeypatch, capsys) -> bool:
    """Whether the example (its knobs reduced) is the command the session's ``demo_run`` ran."""
    if example.args[:1] != ("demo",):
        return False
    ours = parse(demo_args(example, Path.cwd()), monkeypatch, capsys)
    return ours.params == parse(demo_run[1].args[2:], monkeypatch, capsys).params


@pytest.mark.parametrize("index", range(len(EXAMPLES)), ids=[e.where for e in EXAMPLES])
def test_example_runs_on_the_demo_outputs(index, workspace, demo_run, monkeypatch, capfd):
    example = EXAMPLES[index]
    if example.needs:
        pytest.skip(f"needs: {', '.join(example.needs)}")
    # A block's commands are steps: the earlier ones run first, in one workspace.
    steps = [i for i, e in enumerate(EXAMPLES) if e.block == example.block and i < index and not e.needs
             and not _is_demo_run(e, demo_run, monkeypatch, capfd)]
    if workspace.block != example.block or workspace.done != (steps[-1] if steps else -1):
        workspace.reset(example.block)
        for i in steps:
            workspace.run(EXAMPLES[i], monkeypatch, capfd)
            workspace.done = i
    if _is_demo_run(example, demo_run, monkeypatch, capfd):
        assert demo_run[1].returncode == 0  # run once, by the session's demo_run fixture
        return
    workspace.run(example, monkeypatch, capfd)
    workspace.done = index
