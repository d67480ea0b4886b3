"""The docstrings' reStructuredText, rendered for the documentation site and for the terminal.

Method docstrings write formulas as ``.. math::`` blocks and ``:math:`x``` roles, and name
other objects with roles such as ``:class:`~dalib.Method```. :func:`rst_to_markdown` turns them
into the Markdown that the site's ``pymdownx.arithmatex`` renders (``docs/_hooks.py``);
:func:`rst_to_text` into plain text for ``dalib show``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_REF_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _roles(line: str, math: str, ref: str) -> str:
    """The inline roles of one line: math through the ``math`` format, references through ``ref``
    (``~pkg.Name`` keeps only ``Name``)."""
    line = _MATH_ROLE.sub(lambda m: math.format(m.group(1).strip()), line)
    return _REF_ROLE.sub(lambda m: ref.format(m.group(2).rsplit(".", 1)[-1] if m.group(1) else m.group(2)), line)


def _convert(text: str, line: Callable[[str], str], equation: Callable[[str, list[str]], list[str]]) -> str:
    """``text`` with each plain line through ``line`` and each equation of a ``.. math::``
    directive (its indented body, split at blank lines) through ``equation(indent, lines)``;
    a blank line before each directive."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = _MATH_DIRECTIVE.match(lines[i])
        if match is None:
            out.append(line(lines[i]))
            i += 1
            continue
        indent = match["indent"]
        equations: list[list[str]] = [[match["first"].strip()] if match["first"].strip() else []]
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > len(indent)):
            if lines[i].strip():
                equations[-1].append(lines[i].strip())
            elif equations[-1]:
                equations.append([])
            i += 1
        if out and out[-1].strip():
            out.append("")
        for eq in filter(None, equations):
            out += equation(indent, eq)
    return "\n".join(out).rstrip() + "\n"


def rst_to_markdown(text: str) -> str:
    """``.. math::`` blocks become ``$$`` blocks (one per equation: the directive's
    blank-line-separated paragraphs), ``:math:`x``` becomes ``$x$`` and cross-reference roles
    (``:func:`name```, ``:class:`~pkg.Name```) become code spans."""
    return _convert(text, lambda line: _roles(line, "${}$", "`{}`"),
                    lambda indent, eq: [f"{indent}$$", *(f"{indent}{x}" for x in eq), f"{indent}$$", ""])


def rst_to_text(text: str) -> str:
    """Plain text for a terminal: each ``.. math::`` equation on its own lines, indented by four
    spaces, then a blank line; the roles and ````literals```` lose their markup."""
    return _convert(text, lambda line: _LITERAL.sub(r"\1", _roles(line, "{}", "{}")),
                    lambda indent, eq: [*(f"{indent}    {x}" for x in eq), ""])
