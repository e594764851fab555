"""The demo ends with the next commands on its own files, and each runs as printed from the folder the
demo ran in (the session's ``demo_run``: ``demo --smoke --workdir demo-run``)."""
import shlex
import shutil
import sys
from pathlib import Path

from dpcompat.cli import cli

ROOT = Path(__file__).resolve().parents[1]
HEADER = "next, each stage on its own with the demo's files (run from this folder):\n"
GATE_EXIT_CODES = {0, 3, 4}  # keep the index; backfill or re-index; undecided


def printed_commands(stdout: str) -> list[list[str]]:
    lines = stdout.split(HEADER, 1)[1].splitlines()
    return [shlex.split(line) for line in lines if line.startswith("  ")]


def test_every_printed_command_runs_as_printed(demo_run, tmp_path, monkeypatch, capfd):
    demo, r = demo_run
    commands = printed_commands(r.stdout)
    assert [c[2] for c in commands] == ["export", "verify", "embed", "evaluate", "gate"]
    assert all(c[:2] == [sys.executable, str(ROOT / "cli.py")] for c in commands)  # how the demo was started
    assert all(word.startswith("demo-run/") for c in commands for word in c[3:] if "/" in word)
    shutil.copytree(demo, tmp_path / "demo-run", symlinks=True)  # the commands write into the demo's folders
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for command in commands:
        capfd.readouterr()
        code = cli.main(command[2:], prog_name="cli.py", standalone_mode=False) or 0
        out, err = capfd.readouterr()
        allowed = GATE_EXIT_CODES if command[2] == "gate" else {0}
        assert code in allowed, f"{shlex.join(command)}\nexit {code}\n{out[-2000:]}{err[-2000:]}"
        assert "Traceback" not in err
    assert (tmp_path / "demo-run" / "reports-tasks" / "compatibility.json").is_file()
