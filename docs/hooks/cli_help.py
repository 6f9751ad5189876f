"""MkDocs hook: replace ``<!-- cli-help COMMAND -->`` with that command's ``--help`` text.

The command-line reference is generated from the argparse parser of ``lanczos-optim`` at build
time, so it cannot drift from the code. ``<!-- cli-help -->`` (no command) inserts the top-level
help.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

_MARKER = re.compile(r"<!-- cli-help(?: (?P<command>[a-z]+))? -->")
_WIDTH = "100"
_ROOT = str(Path(__file__).resolve().parents[2])


def _help_text(command: str | None) -> str:
    if _ROOT not in sys.path:  # document this checkout, installed or not
        sys.path.insert(0, _ROOT)
    from diagnostics.cli import build_parser

    argv = [command, "--help"] if command else ["--help"]
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = _WIDTH  # argparse wraps to the terminal width; fix it for the page
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            build_parser().parse_args(argv)
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old
    return out.getvalue().rstrip()


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    """Insert the generated help wherever a page holds a ``cli-help`` marker."""
    return _MARKER.sub(lambda m: f"```text\n{_help_text(m['command'])}\n```", markdown)
