"""Text is cut to a platform's limits as the platforms count length (UTF-16 code units),
ending in an ellipsis, never over the limit, and never through half an escape."""

from __future__ import annotations

import re

from bot.fitting import clip, double_bold, fit, pieces, units

PARTIAL_ESCAPE = re.compile(r"&[a-z]{0,3}$")


def test_length_is_counted_in_utf16_code_units() -> None:
    assert units("abc") == 3
    assert units("🚀") == 2
    assert units("é") == 1


def test_text_within_the_limit_is_left_as_it_is() -> None:
    assert clip("deploy v1.4", 11) == "deploy v1.4"
    assert fit("deploy v1.4", 11) == "deploy v1.4"


def test_clipped_text_ends_in_an_ellipsis_within_the_limit() -> None:
    clipped = clip("deploy v1.4 onto main", 10)
    assert clipped == "deploy v1…"
    assert units(clipped) <= 10


def test_an_emoji_is_not_cut_in_half() -> None:
    assert fit("ab🚀", 3) == "ab"
    assert clip("ab🚀cd", 4) == "ab…"


def test_tiny_limits_never_exceed_the_limit() -> None:
    assert clip("deploy", 1) == "…"
    assert clip("deploy", 0) == ""


def test_a_cut_escape_goes_too() -> None:
    assert fit("a &lt; b", 4, torn=PARTIAL_ESCAPE) == "a "
    assert clip("a &lt; b", 5, torn=PARTIAL_ESCAPE) == "a…"
    assert fit("a &lt; b", 4) == "a &l"


def test_pieces_are_cut_at_line_ends_within_the_limit() -> None:
    text = "first line\nsecond line\nthird"
    cut = pieces(text, 16)
    assert cut == ["first line", "second line", "third"]
    assert all(units(p) <= 16 for p in cut)
    assert pieces("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_slack_style_bold_becomes_markdown_bold_outside_code() -> None:
    assert double_bold("*Approve* to queue") == "**Approve** to queue"
    assert double_bold("**already** bold") == "**already** bold"
    assert double_bold("run `a *b* c` now") == "run `a *b* c` now"
    assert double_bold("2 * 3 * 4 and • items") == "2 * 3 * 4 and • items"
