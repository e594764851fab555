"""The documentation's shape (issue 20): a README a newcomer reads in five minutes that leads to every
page of docs/, pages that say what they cover, and links between them that arrive somewhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from readme_commands import README, ROOT, pages

MAX_README_LINES = 250
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def prose(path: Path) -> str:
    """The page without its fenced code blocks (a ``#`` there is a comment, not a heading)."""
    return _FENCE.sub("", path.read_text(encoding="utf-8"))


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation and symbols dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {anchor(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", prose(path), re.M)}


def local_links(path: Path) -> list[tuple[Path, str]]:
    """(target file, anchor or '') of every link of ``path`` that is not a URL."""
    found = []
    for target in _LINK.findall(prose(path)):
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        found.append(((path.parent / file).resolve() if file else path, fragment))
    return found


def test_readme_is_short_and_leads_to_every_page():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    linked = {file for file, _ in local_links(README)}
    assert set(pages()[1:]) <= linked, sorted(p.name for p in set(pages()[1:]) - linked)
    first_screen = "\n".join(text.splitlines()[:30])
    assert "backfill" in first_screen and "pytest -q" in first_screen and "cli.py demo" in first_screen


@pytest.mark.parametrize("page", pages()[1:], ids=lambda p: p.name)
def test_each_page_opens_with_a_title_and_what_it_covers(page):
    lines = page.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2] and not lines[2].startswith(("#", "`", "|", "-"))


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_arrive(page):
    broken = [f"{file.relative_to(ROOT)}#{fragment}" for file, fragment in local_links(page)
              if not file.exists() or (fragment and file.suffix == ".md" and fragment not in anchors(file))]
    assert not broken, broken


def test_anchor_follows_github():
    assert anchor("The report folder (`evaluate --out`)") == "the-report-folder-evaluate---out"
    assert anchor("The reference's batch-position defect, and what dpcompat does instead") == \
        "the-references-batch-position-defect-and-what-dpcompat-does-instead"
