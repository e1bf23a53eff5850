"""The one table layout of the command line (:func:`gcnnkit.tools.table.format_table`)."""

from __future__ import annotations

from gcnnkit.tools.table import format_table


def test_columns_are_as_wide_as_their_widest_cell_and_left_aligned_by_default():
    lines = format_table([("layer", "types", ""), ("0.lift", "image[1] -> group[4]", "ok"), ("end", "x", "FAIL")])
    assert lines == [
        "layer   types",  # the empty last header cell leaves no trailing spaces
        "0.lift  image[1] -> group[4]  ok",
        "end     x                     FAIL",
    ]


def test_the_last_alignment_holds_for_the_remaining_columns():
    lines = format_table([("", "eval ms", "x"), ("floor", 1.5, "1.000"), ("native", "12.25", "-")], "<>")
    assert lines == ["        eval ms      x", "floor       1.5  1.000", "native    12.25      -"]


def test_separator_and_minimum_width():
    assert format_table([("a", "b"), ("ccc", "d")], ">", sep="|", min_width=2) == ["  a| b", "ccc| d"]
    assert format_table([]) == []
