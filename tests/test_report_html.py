"""report.html: one self-contained page per report folder, the decision first, every string from data
escaped; opened in headless Chromium (Debian's ``chromium``; skipped with the reason where it is
missing) it logs no error, makes no request beyond its own file and data URIs, and decodes every figure."""
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from dpcompat.evaluate.metrics.compat import compatibility
from dpcompat.evaluate.decide import decide_arrays
from dpcompat.evaluate.pipeline import Evaluation
from dpcompat.evaluate.report.html import HTML_FILE, write_html
from dpcompat.evaluate.report.labels import figure_files
from dpcompat.evaluate.report.production import write_production
from dpcompat.evaluate.report.writer import check_out_dir, write_reports

from browser import Browser, find_browser

HOSTILE = '<script>alert("x")</script>'


def evaluation(models, notes=()):
    rng = np.random.default_rng(5)
    labels = np.arange(60) % 4
    base = rng.standard_normal((4, 8))[labels] + rng.standard_normal((60, 8))
    sets = []
    for m in range(len(models)):
        x = base + 0.6 * m * rng.standard_normal((60, 8))
        sets.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))
    result = compatibility(sets, sets, labels, labels, k=3, exclude_self=True, resamples=100)
    data = {"spec": "cifar10:test", "count": 60}
    decision = decide_arrays(result, list(models), [None] * len(models), sets, sets, labels, labels, k=3,
                             exclude_self=True)
    return Evaluation(result=result, models=list(models), query=data, gallery=data, decision=decision,
                      protocol={"similarity": "cosine", "k": 3, "own_image_left_out": True},
                      provenance=[{"data": "generated", "backbone": "random"}] * len(models), notes=list(notes))


def with_decision(folder: Path) -> dict:
    """Add a ``decision`` object (the contract of decision-design) with one pair of each recommendation
    to the folder's compatibility.json, render the page again and return the decision."""
    data = json.loads((folder / "compatibility.json").read_text())
    m, top1 = data["models"], data["metrics"]["top1"]
    kinds = [("keep", "compatible", None, None), ("backfill", "not compatible", 0.3, None),
             ("re-index", "not compatible", None, None), ("collect", "undecided", None, 1260)]
    pairs = []
    for (j, i), (rec, verdict, fraction, needed) in zip([(0, 1), (0, 2), (1, 2), (0, 3)], kinds):
        pairs.append({"gallery": m[j], "query": m[i], "gallery_sha256": "a" * 64, "query_sha256": "b" * 64,
                      "value": top1[i][j], "reference": top1[j][j], "difference": top1[i][j] - top1[j][j],
                      "low": top1[i][j] - top1[j][j] - 0.02, "high": top1[i][j] - top1[j][j] + 0.02,
                      "verdict": verdict, "recommendation": rec, "backfill_fraction": fraction,
                      "backfill_interval": [-0.009, 0.004] if fraction else None, "queries": 60,
                      "queries_needed": needed, "words": f"{rec} words for {m[i]} on {m[j]}"})
    data["decision"] = {"rule": {"metric": "top1", "tolerance": 0.01, "confidence": 0.95, "resamples": 100,
                                 "seed": 0, "text": "RULE TEXT: lose at most 0.01 top-1."}, "pairs": pairs}
    (folder / "compatibility.json").write_text(json.dumps(data))
    write_html(folder)
    return data["decision"]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """One report of four models, two of them with ids that are markup (written once: figures take time)."""
    out = tmp_path_factory.mktemp("report") / "out"
    write_reports(evaluation([HOSTILE, "a&b", "task3", "task4"], notes=["GENERATED DATA: made up <b>bold</b>"]), out)
    return out


@pytest.fixture
def report(written, tmp_path):
    """A copy of the report each test may change."""
    return Path(shutil.copytree(written, tmp_path / "out"))


def test_the_page_is_self_contained_escaped_and_puts_the_decision_first(report):
    page = (report / HTML_FILE).read_text()
    assert "<script" not in page.lower() and HOSTILE not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page and "a&amp;b" in page
    assert not re.search(r"https?://|url\(|@import|<link|<iframe", page)
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(figure_files())  # every figure, the headline once
    assert page.index("<section") == page.index('<section id="decision"')  # the first thing after the header
    assert page.index('id="decision"') < page.index('id="evidence"') < page.index('id="provenance"')
    assert page.index("decision.png") < page.index("heatmap_top1.png")
    assert "@media print" in page and "system-ui" in page
    assert check_out_dir(report) == report  # report.html is one of a report folder's own files


def test_the_decision_object_is_rendered_when_present(report):
    decision = with_decision(report)
    page = (report / HTML_FILE).read_text()
    table = page[page.index('id="decision"'):page.index('id="evidence"')]
    for text in ("keep the index", "backfill 30% of the gallery", "re-index", "collect about 1,200 more queries",
                 "RULE TEXT: lose at most 0.01 top-1."):
        assert text in table, text
    assert table.count('class="badge') == len(decision["pairs"])
    assert "keep words for a&amp;b on &lt;script&gt;" in table


def test_production_sections_carry_the_notes_and_enter_the_page(report):
    fractions = [0.0, 0.5, 1.0]
    pair = {"new": "task4", "old": "task3", "curves": {"exact": {"top1": [0.5, 0.7, 0.9], "mAP": [0.4, 0.5, 0.6]},
                                                       "hnsw": {"top1": [0.5, 0.69, 0.9], "mAP@K": [0.45, 0.5, 0.62]}},
            "auc": {"exact": {"top1": 0.7, "mAP": 0.5}, "hnsw": {"top1": 0.695, "mAP@K": 0.52}}}
    result = {"models": ["task3", "task4"], "k": 3, "own_image_left_out": True,
              "backfill": {"fractions": fractions, "items": 60, "order": "random, seed 0", "pairs": [pair]}}
    written = write_production(result, report, notes=["RANDOM BACKBONE: made up"], caption="Query cifar10:test (N = 60)")
    assert report / HTML_FILE in written and (report / "backfill_task4_task3.png").is_file()
    assert json.loads((report / "production.json").read_text())["notes"] == ["RANDOM BACKBONE: made up"]
    assert "RANDOM BACKBONE: made up" in (report / "production.md").read_text()
    page = (report / HTML_FILE).read_text()
    section = page[page.index('id="production"'):]
    assert "RANDOM BACKBONE: made up" in section and 'alt="backfill_task4_task3.png"' in section
    assert check_out_dir(report) == report


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_the_page_in_headless_chromium(report, tmp_path):
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium); CI installs it")
    with_decision(report)
    browser = Browser(executable)
    try:
        url = (report / HTML_FILE).resolve().as_uri()
        browser.open(url)
        images = browser.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
        scripts = browser.evaluate("document.scripts.length")
        shot = browser.screenshot(tmp_path / "report-first-screen.png")
        pdf = browser.pdf()
    finally:
        browser.close()
    methods = [e.get("method") for e in browser.events]
    errors = [e["params"] for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    requests = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    assert "Page.loadEventFired" in methods and not errors
    assert requests[0] == url and all(u.startswith("data:image/png;base64,") for u in requests[1:])
    assert scripts == 0
    assert len(images) == (report / HTML_FILE).read_text().count("<img ") == len(figure_files())
    assert all(complete and width > 0 for complete, width in images), images
    assert png_size(shot) == (1280, 900)
    assert pdf[:5] == b"%PDF-"
