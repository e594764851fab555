"""Plain-text tables for the command line."""
from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; ``columns`` are (key, heading, format spec)."""
    cells = [[h for _, h, _ in columns]] + [[format(r[k], f) if k in r else "-" for k, _, f in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells)


def text_columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows of cells as fixed-width lines (each column as wide as its widest cell, left-aligned)."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines, and a blank line after it."""
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in rows),
            ""]
