"""Every Python snippet of README.md and docs/ runs as written; every CLI line in them parses.

A ```python fenced block is executed in a fresh namespace, in a temporary working folder, with
W&B disabled, torch's random state restored afterwards. Line numbers in a failing snippet's
traceback are those of the Markdown file. A block that is deliberately not runnable (e.g. it
needs torchrun) says so in an HTML comment on the line before its fence::

    <!-- no-run: needs torchrun -->
    ```python

Shell blocks (```bash) are not run, but each ``lanczos-optim ...`` command in them must parse
with the real argument parser, so an option renamed in the code fails here.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MIN_RUNNABLE = 16  # the snippets run today; fewer means blocks were dropped or marked no-run

_FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S
)
_NO_RUN = re.compile(r"<!--\s*no-run\b")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text, and whether it may be run."""

    path: Path
    line: int  # 1-based line of the first line of the body
    language: str
    code: str
    runnable: bool

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    blocks = []
    for m in _FENCE.finditer(text):
        start = text.count("\n", 0, m.start("body")) + 1
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        indent = len(m["indent"])
        body = "".join(line[indent:] for line in m["body"].splitlines(keepends=True))
        language = (m["info"].split() or [""])[0]
        blocks.append(Block(path, start, language, body, not _NO_RUN.search(before)))
    return blocks


BLOCKS = [b for path in SOURCES for b in _blocks(path)]
PYTHON = [b for b in BLOCKS if b.language == "python"]
RUNNABLE = [b for b in PYTHON if b.runnable]
SHELL = [b for b in BLOCKS if b.language == "bash"]


def _cli_lines(code: str) -> list[list[str]]:
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "lanczos-optim":
            commands.append(words[1:])
    return commands


CLI = [(b, argv) for b in SHELL for argv in _cli_lines(b.code)]


def test_the_readme_and_docs_hold_enough_runnable_snippets() -> None:
    assert len(RUNNABLE) >= MIN_RUNNABLE, [b.name for b in PYTHON]
    assert any(b.path.name == "README.md" for b in RUNNABLE)


def test_fences_are_found_with_their_line_and_no_run_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n<!-- no-run: needs torchrun -->\n```python\ny\n```\n"
        "\n- item\n\n  ```bash\n  lanczos-optim --version\n  ```\n",
        encoding="utf-8",
    )
    found = [(b.line, b.language, b.code, b.runnable) for b in _blocks(page)]
    assert found == [
        (4, "python", "x = 1\n", True),
        (9, "python", "y\n", False),
        (15, "bash", "lanczos-optim --version\n", True),
    ]
    assert _cli_lines("lanczos-optim train --epochs 2 \\\n    --out run  # note\nls") == [
        ["train", "--epochs", "2", "--out", "run"]
    ]


def _compile(block: Block) -> object:
    # Blank lines first, so a traceback's line numbers are the Markdown file's.
    return compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.name)
def test_snippet_compiles(block: Block) -> None:
    _compile(block)  # also the ones marked no-run


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.name)
def test_snippet_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)
    os.environ.update(WANDB_MODE="disabled", WANDB_DIR=str(tmp_path), MPLBACKEND="Agg")
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            exec(_compile(block), {"__name__": "__main__"})
    finally:  # nothing a snippet sets leaks into the other tests
        os.environ.clear()
        os.environ.update(environ)
        torch.set_num_threads(threads)
        import matplotlib.pyplot as plt

        plt.close("all")
    assert torch.get_default_dtype() == dtype, "a snippet must not change the default dtype"


@pytest.mark.parametrize(("block", "argv"), CLI, ids=[f"{b.name}:{a[0]}" for b, a in CLI])
def test_cli_example_parses(block: Block, argv: list[str]) -> None:
    from diagnostics.cli import build_parser

    code = 0
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help and --version exit 0, a bad option 2
        code = exit_.code
    assert code == 0, f"{block.name}: lanczos-optim {shlex.join(argv)}"
