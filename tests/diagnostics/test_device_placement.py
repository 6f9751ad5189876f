"""The diagnostics create no tensor without a device (see tests/lanczos_optim/ for the trap).

Each entry point runs once normally and once under ``torch.set_default_device("meta")`` on the
same CPU model and data; a tensor created without an explicit device lands on ``meta`` and
mixing it with the model's tensors raises, as mixing CPU and CUDA tensors would on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import (
    build_loss_landscape,
    compare_to_spectrum,
    compute_eigenspectrum,
    diagonal_approximations,
    loss_statistics,
)


class _Inputs:
    """Model, data and a spectrum, created on the CPU before the trap is set."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(
            nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3)
        ).double()
        g = torch.Generator().manual_seed(1)
        self.data = [
            (
                torch.randn(8, 4, generator=g, dtype=torch.float64),
                torch.randint(0, 3, (8,), generator=g),
            )
            for _ in range(2)
        ]
        self.loss = nn.CrossEntropyLoss()
        self.spectrum = compute_eigenspectrum(
            self.model, self.loss, self.data, lanczos_steps=5, seed=0, save_eigvec=True
        )
        self.diag = torch.linspace(0, 1, self.spectrum.num_params, dtype=torch.float64)


def _arrays(obj: object) -> list[np.ndarray]:
    if isinstance(obj, torch.Tensor):
        return [obj.detach().cpu().numpy()]
    if isinstance(obj, dict):
        return [a for k in sorted(obj) for a in _arrays(obj[k])]
    if isinstance(obj, (float, int, np.ndarray, np.floating)):
        return [np.asarray(obj, dtype=np.float64)]
    if isinstance(obj, (list, tuple)):
        return [a for x in obj for a in _arrays(x)]
    return []


Case = Callable[[_Inputs], list[np.ndarray]]

CASES: dict[str, Case] = {
    "compute_eigenspectrum": lambda s: _arrays(
        [
            (
                sp := compute_eigenspectrum(
                    s.model, s.loss, s.data, lanczos_steps=5, seed=0, save_eigvec=True, num_probes=2
                )
            ).ritz_values,
            sp.weights,
            np.abs(sp.ritz_vectors),
        ]
    ),
    "loss_statistics": lambda s: _arrays(
        loss_statistics(s.model, s.loss, s.data, seed=0, num_probes=2).as_dict()
    ),
    "build_loss_landscape": lambda s: _arrays(
        [
            (
                ls := build_loss_landscape(
                    s.model,
                    s.loss,
                    s.data,
                    s.data,
                    directions=s.spectrum,
                    indices=[0, 4],
                    n_points=3,
                    curvature="ggn",
                )
            ).train_loss,
            ls.test_loss,
        ]
    ),
    "build_loss_landscape_plane": lambda s: _arrays(
        build_loss_landscape(
            s.model,
            s.loss,
            s.data,
            directions=s.spectrum,
            indices=[0, 4],
            n_points=3,
            plane=True,
            filter_normalize=True,
        ).train_loss
    ),
    "diagonal_approximations": lambda s: _arrays(
        diagonal_approximations(
            s.model.eval(), s.loss, s.data, kinds=["diag_ggn_exact", "diag_ggn_mc"], seed=0
        )
    ),
    "compare_to_spectrum": lambda s: _arrays(compare_to_spectrum(s.diag, s.spectrum)),
}


@pytest.fixture(params=sorted(CASES), ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_no_tensor_created_without_a_device(case: Case, device_trap) -> None:
    expected = case(_Inputs())
    inputs = _Inputs()
    with device_trap():
        got = case(inputs)
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
