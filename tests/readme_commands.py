"""The example commands of the ```bash blocks of README.md and of every page in docs/, as a user
would type them.

A command is ours when, after any ``VAR=value`` assignments and a ``/usr/bin/time [-v]`` prefix, it is
``python cli.py ...`` (any python: ``.venv/bin/python``, ``python3``), ``dpcompat ...`` (the console
command) or ``torchrun [its options] cli.py ...``. Other lines (pip, pytest, git) are not ours. A
trailing ``# ... needs: A, B`` comment says what the example needs that a test machine lacks (a GPU,
the network, hours); ``exit code N`` in the comment is an exit code the example may end with.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_NEEDS = re.compile(r"\bneeds:\s*([^;]+)")
_EXIT = re.compile(r"\bexit code (\d+)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Example:
    """One example command: where it is, what it runs and what it needs."""

    page: str  # its page, relative to the repository root: README.md, docs/commands.md, ...
    line: int  # the page's line of the command's first line
    block: int  # index of its ```bash block among all pages' blocks; a block's commands are steps run in order
    text: str  # as written, continuation lines joined
    args: tuple[str, ...]  # the arguments after cli.py / dpcompat
    env: dict = field(default_factory=dict)  # VAR=value assignments before the command
    launcher: str = "python"  # python or torchrun
    needs: tuple[str, ...] = ()  # what it needs that a test machine lacks; () when it runs anywhere
    exit_codes: tuple[int, ...] = (0,)  # exit codes its comment allows

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    def __str__(self) -> str:
        return f"{self.where}: {self.text}"


def bash_blocks(text: str) -> list[tuple[int, list[str]]]:
    """(line number of each ```bash block's first line, its lines)."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if current is None and line.strip() == "```bash":
            current, start = [], number + 1
        elif current is not None and line.strip().startswith("```"):
            blocks.append((start, current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


def _logical_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """Lines with their ``\\`` continuations joined, each with the number of its first line."""
    joined, pending, first = [], "", start
    for number, line in enumerate(lines, start):
        if not pending:
            first = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + line))
        pending = ""
    return joined


def _split_comment(line: str) -> tuple[list[str], str]:
    """The shell words of ``line`` and its trailing comment (from a ``#`` that starts a word outside quotes)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return shlex.split(line[:i]), line[i + 1:].strip()
    return shlex.split(line), ""


def _segments(words: list[str]) -> list[list[str]]:
    """``a && b ; c`` as [a, b, c]."""
    out = [[]]
    for w in words:
        if w in _SEPARATORS:
            out.append([])
        else:
            out[-1].append(w)
    return [s for s in out if s]


def _ours(words: list[str]) -> tuple[dict, str, list[str]] | None:
    """(environment, launcher, arguments) when ``words`` run our CLI, else None."""
    env = {}
    while words and _ASSIGNMENT.match(words[0]):
        name, _, value = words[0].partition("=")
        env[name], words = value, words[1:]
    if words[:1] == ["/usr/bin/time"]:
        words = words[2:] if words[1:2] == ["-v"] else words[1:]
    if not words:
        return None
    if words[0] == "dpcompat":
        return env, "python", words[1:]
    if Path(words[0]).name.startswith("python") and words[1:2] == ["cli.py"]:
        return env, "python", words[2:]
    if words[0] == "torchrun":
        at = next((i for i, w in enumerate(words) if w.endswith("cli.py")), None)
        return None if at is None else (env, "torchrun", words[at + 1:])
    return None


def pages() -> list[Path]:
    """The pages whose examples are ours to run: README.md, then every docs/*.md by name."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def doc_examples() -> list[Example]:
    """Every example command of our CLI on every page of :func:`pages`, in page order; block numbers
    run on from page to page, so each block is one number."""
    found: list[Example] = []
    for path in pages():
        first = 1 + max((e.block for e in found), default=-1)
        found += page_examples(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix(), first)
    return found


def page_examples(text: str, page: str = "README.md", first_block: int = 0) -> list[Example]:
    """Every example command of our CLI in the ```bash blocks of ``text`` (the page ``page``), in page
    order; its blocks are numbered from ``first_block``."""
    found = []
    for block, (start, lines) in enumerate(bash_blocks(text), first_block):
        for number, line in _logical_lines(start, lines):
            words, comment = _split_comment(line)
            needs = _NEEDS.search(comment)
            exits = (0, *map(int, _EXIT.findall(comment)))
            for segment in _segments(words):
                parsed = _ours(segment)
                if parsed is None:
                    continue
                env, launcher, args = parsed
                found.append(Example(
                    page=page, line=number, block=block, text=" ".join(line.split()), args=tuple(args), env=env,
                    launcher=launcher, exit_codes=exits,
                    needs=tuple(n.strip() for n in needs.group(1).split(",")) if needs else ()))
    return found
