r"""Griffe extension: read the package's reStructuredText markup as Markdown for the API pages.

The docstrings are Google style with a few Sphinx constructs that mkdocstrings shows verbatim:

- an ``Example:`` section is an admonition of plain Markdown to griffe, where ``>>>`` lines
  become quotes and ``[a][b]`` reference links; ``Examples:`` is its doctest section;
- roles (``:func:`~lanczos_optim.lanczos```, ``:math:`\theta```) become inline code, the last
  path component where the role asks for it with ``~``;
- a ``.. math::`` directive's line is dropped, so its indented formula reads as a code block.

Formulas stay TeX source: the site is built and read without network (no MathJax).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:math|func|class|meth|attr|data|mod|obj|exc):`(~?)([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^[ \t]*\.\. math::[ \t]*\n", re.MULTILINE)


def _role(match: re.Match[str]) -> str:
    short, target = match[1], match[2]
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def rst_to_markdown(text: str) -> str:
    """Return ``text`` with the Sphinx markup above rewritten as Markdown."""
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _MATH_DIRECTIVE.sub("", text)
    return _ROLE.sub(_role, text)


class RstToMarkdown(griffe.Extension):
    """Rewrite every loaded docstring before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of one object."""
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
