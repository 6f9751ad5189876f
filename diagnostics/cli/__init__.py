"""The ``lanczos-optim`` command line and the demo it runs.

Commands: ``train``, ``spectrum``, ``statistics``, ``landscape``, ``diagonal``, ``plot``, ``demo``.
"""

from diagnostics.cli.app import build_parser, main
from diagnostics.cli.demo import run_demo

__all__ = ["build_parser", "main", "run_demo"]
