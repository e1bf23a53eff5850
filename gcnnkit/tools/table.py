"""The one plain-text table layout of the command line (``check``, ``compare``, ``bench``, ``plugins``, ``eval``)."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[object]], align: str = "<", sep: str = "  ", min_width: int = 0) -> list[str]:
    """``rows`` (the header first, where there is one) as lines of aligned columns.

    Each column is as wide as its widest cell, and at least ``min_width``. ``align`` has one
    character per column, ``<`` (left) or ``>`` (right); its last character holds for the columns
    after it. Cells are joined by ``sep``; trailing spaces are dropped. Every row has the same
    number of cells.
    """
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return []
    widths = [max(min_width, *(len(row[i]) for row in cells)) for i in range(len(cells[0]))]
    aligns = [align[min(i, len(align) - 1)] for i in range(len(widths))]
    return [
        sep.join(c.rjust(w) if a == ">" else c.ljust(w) for c, w, a in zip(row, widths, aligns, strict=True)).rstrip()
        for row in cells
    ]
