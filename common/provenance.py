"""Where a model's weights came from, carried from training to its checkpoint's ``args``, the export's
metadata and everything made from it: ``{"data": ..., "backbone": ...}`` with

  ``data``      ``"generated"`` (dpcompat's stand-in images, see :mod:`common.synthetic`) or the data
                set's name (``"cifar100"``)
  ``backbone``  ``"random"`` or ``"pretrained <weights>"`` (a file or a timm name)

``{}`` means unknown (a checkpoint trained elsewhere). The marker file that generated data carries in
its folder is how the reader tells generated from real data.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .atomic import write_json

MARKER = "dpcompat-generated.json"
GENERATED = "generated"
RANDOM = "random"
# The one wording of each caveat: the demo's log, evaluate's reports (summary, Markdown, JSON, figures)
# and the production report all print these.
GENERATED_NOTE = ("GENERATED DATA: trained on generated images (classes of hue and stripe orientation, dpcompat's "
                  "stand-in when no CIFAR files could be had), not on CIFAR; these numbers show that the chain runs, "
                  "not how compatible real models are")
RANDOM_BACKBONE_NOTE = ("RANDOM BACKBONE: the ViT backbone was randomly initialised and frozen (no pretrained "
                        "weights), so the embeddings carry no pretrained features; these numbers are not those of "
                        "real DualPrompt models")


def write_marker(folder: str | Path, description: dict) -> Path:
    """Mark ``folder`` as holding generated data (``description``: how it was generated)."""
    return write_json(Path(folder) / MARKER, {"generated_by": "dpcompat", **description})


def read_marker(folder: str | Path) -> Optional[dict]:
    """The marker's description when ``folder`` holds generated data, else None (an unreadable
    marker still marks the data as generated)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {"generated_by": "unknown (unreadable marker)"}
    return found if isinstance(found, dict) else {"generated_by": "unknown (malformed marker)"}


def notes(provenance: dict) -> list[str]:
    """The caveats a report of a model with this provenance must carry."""
    out = []
    if provenance.get("data") == GENERATED:
        out.append(GENERATED_NOTE)
    if provenance.get("backbone") == RANDOM:
        out.append(RANDOM_BACKBONE_NOTE)
    return out
