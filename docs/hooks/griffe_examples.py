"""Griffe extension: read a Google ``Example:`` section as ``Examples:`` (doctest code blocks).

The package's docstrings head their doctests ``Example:``; griffe renders that title as an
admonition of plain Markdown, where ``>>>`` lines become quotes and ``[a][b]`` reference links.
``Examples:`` is griffe's examples section, rendered as Python code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section titles to ``Examples:`` before a docstring is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite the docstring of every loaded object."""
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
