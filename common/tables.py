"""Plain-text tables for the command line."""
from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; ``columns`` are (key, heading, format spec)."""
    cells = [[h for _, h, _ in columns]] + [[format(r[k], f) if k in r else "-" for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)
