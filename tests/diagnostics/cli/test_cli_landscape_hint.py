"""A spectrum saved without Ritz vectors: ``landscape`` names the CLI flag that keeps them."""

from __future__ import annotations

from pathlib import Path

import pytest

from diagnostics.cli.app import main

SMALL = ["--model", "mlp", "--subset", "64", "--float64", "--quiet"]


def test_landscape_on_a_spectrum_without_vectors_names_the_save_eigvec_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spectrum = tmp_path / "s.npz"
    assert main(["spectrum", *SMALL, "--steps", "4", "--out", str(spectrum)]) == 0
    capsys.readouterr()
    out = tmp_path / "l.npz"
    assert main(["landscape", *SMALL, "--spectrum", str(spectrum), "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "no Ritz vectors" in err
    assert "lanczos-optim spectrum --save-eigvec" in err
    assert not out.exists()


def test_spectrum_command_defaults_to_the_library_spectrum_steps():
    import inspect

    from diagnostics import compute_eigenspectrum
    from diagnostics.cli import build_parser
    from lanczos_optim import SPECTRUM_LANCZOS_STEPS

    library = inspect.signature(compute_eigenspectrum).parameters["lanczos_steps"].default
    assert build_parser().parse_args(["spectrum"]).steps == library == SPECTRUM_LANCZOS_STEPS
