"""The documentation site: the API reference shows every public name, the CLI page every command.

`make test` builds the site with ``mkdocs build --strict``; these tests check what a strict build
cannot: that nothing public is missing from the pages.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import diagnostics

ROOT = Path(__file__).resolve().parents[1]
ROOMS = sorted(m.name for m in pkgutil.iter_modules(diagnostics.__path__) if m.name[0] != "_")


def _hook(name: str) -> object:  # the MkDocs hooks are files, not a package
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / "hooks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cli_help = _hook("cli_help")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings_handlers.python")
    out = tmp_path_factory.mktemp("site")
    build = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    done = subprocess.run(build, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_every_diagnostics_room_has_an_api_page() -> None:
    assert set(ROOMS) >= {"analysis", "cli", "plots", "results", "training", "wandb_logger"}
    for room in ROOMS:
        page = ROOT / "docs" / "api" / f"{room}.md"
        assert f"::: diagnostics.{room}" in page.read_text(encoding="utf-8"), page


@pytest.mark.parametrize(
    ("module", "page"),
    [("lanczos_optim", "lanczos_optim")] + [(f"diagnostics.{r}", r) for r in ROOMS],
)
def test_api_reference_documents_every_public_name(site: Path, module: str, page: str) -> None:
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    names = importlib.import_module(module).__all__
    missing = [
        name
        for name in names
        if not re.search(rf'id="{re.escape(module)}\.(?:[\w.]+\.)?{re.escape(name)}"', html)
    ]
    assert not missing, f"{module}: {missing} not in docs/api/{page}.md's page"


def test_cli_reference_has_every_command() -> None:
    top = cli_help._help_text(None)
    commands = re.findall(r"^    ([a-z]+)\b", top, re.M)
    assert {"train", "spectrum", "demo"} <= set(commands)
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in commands:
        assert f"<!-- cli-help {command} -->" in page, command
        assert cli_help._help_text(command).startswith(f"usage: lanczos-optim {command} ")


def test_the_hook_writes_the_help_of_the_marked_command() -> None:
    page = cli_help.on_page_markdown("a\n\n<!-- cli-help stats -->\n")
    assert page.startswith("a\n\n```text\nusage: lanczos-optim stats ")
    assert "--probes" in page
    assert page.rstrip().endswith("```")


def test_readme_links_point_at_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert len(local) >= 8, local
    assert [t for t in local if not (ROOT / t).is_file()] == []


def test_sphinx_markup_is_rewritten_as_markdown() -> None:
    rst_to_markdown = _hook("griffe_rst").rst_to_markdown
    text = (
        "Uses :func:`~lanczos_optim.lanczos` on :math:`A` (:class:`torch.Tensor`).\n"
        "\n"
        ".. math::\n"
        "    x_i = y_i\n"
        "\n"
        "Example:\n"
        "    >>> 1 + 1\n"
        "    2\n"
    )
    assert rst_to_markdown(text) == (
        "Uses `lanczos` on `A` (`torch.Tensor`).\n"
        "\n"
        "    x_i = y_i\n"  # an indented code block after a blank line
        "\n"
        "Examples:\n"
        "    >>> 1 + 1\n"
        "    2\n"
    )
