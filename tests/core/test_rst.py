"""The docstrings' reStructuredText, for the site (Markdown) and the terminal (plain text)."""

from __future__ import annotations

from dalib._rst import rst_to_markdown, rst_to_text

DOC = """Summary with :math:`x^2` and :class:`~dalib.losses.mmd` and :func:`dalib.run`.

.. math:: a = b
    + c

    d = e

After ``code``.
"""


def test_markdown_math_blocks_one_per_equation_and_inline_math():
    assert rst_to_markdown(DOC) == (
        "Summary with $x^2$ and `mmd` and `dalib.run`.\n\n"
        "$$\na = b\n+ c\n$$\n\n$$\nd = e\n$$\n\nAfter ``code``.\n"
    )


def test_text_keeps_the_formulas_indented_and_drops_the_markup():
    assert rst_to_text(DOC) == (
        "Summary with x^2 and mmd and dalib.run.\n\n"
        "    a = b\n    + c\n\n    d = e\n\nAfter code.\n"
    )


def test_an_indented_directive_keeps_its_indent():
    assert rst_to_text("Text:\n\n  .. math:: y\n\nEnd") == "Text:\n\n      y\n\nEnd\n"
