"""Progress bars of the long analyses: shown on a terminal, silent otherwise."""

from __future__ import annotations

import io
import sys

import pytest
import torch

from diagnostics.analysis.diagonal import diagonal_approximations
from diagnostics.analysis.landscape import build_loss_landscape
from diagnostics.analysis.spectrum import compute_eigenspectrum
from diagnostics.analysis.statistics import loss_statistics


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x, y = torch.randn(48, 6), torch.randint(0, 3, (48,))
    data = [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]
    return model.double(), torch.nn.CrossEntropyLoss(), [(a.double(), b) for a, b in data]


def _stderr_of(monkeypatch, stream, run) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    run()
    return stream.getvalue()


def _runs(model, loss_fn, data):
    spec = compute_eigenspectrum(model, loss_fn, data, lanczos_steps=6, seed=0, save_eigvec=True)
    return {
        "Lanczos (hessian)": lambda p: compute_eigenspectrum(
            model, loss_fn, data, lanczos_steps=6, num_probes=2, seed=0, progress=p
        ),
        "landscape": lambda p: build_loss_landscape(
            model, loss_fn, data, directions=spec, indices=[0, 5], n_points=3, progress=p
        ),
        "diag_ggn_exact": lambda p: diagonal_approximations(
            model, loss_fn, data, ["diag_ggn_exact"], progress=p
        ),
        "statistics": lambda p: loss_statistics(model, loss_fn, data, seed=0, progress=p),
    }


@pytest.mark.parametrize(
    ("name", "total"),
    [
        ("Lanczos (hessian)", "/12"),
        ("landscape", "/6"),
        ("diag_ggn_exact", "/3"),
        ("statistics", "/3"),
    ],
)
def test_a_bar_counts_steps_points_or_batches_on_a_terminal(
    model_and_data, monkeypatch, name, total
):
    run = _runs(*model_and_data)[name]
    text = _stderr_of(monkeypatch, _Terminal(), lambda: run(True))
    assert name in text
    assert total in text


@pytest.mark.parametrize("name", ["Lanczos (hessian)", "landscape", "diag_ggn_exact", "statistics"])
def test_no_bar_when_quiet_or_not_a_terminal(model_and_data, monkeypatch, name):
    run = _runs(*model_and_data)[name]
    assert _stderr_of(monkeypatch, _Terminal(), lambda: run(False)) == ""
    assert _stderr_of(monkeypatch, io.StringIO(), lambda: run(True)) == ""
