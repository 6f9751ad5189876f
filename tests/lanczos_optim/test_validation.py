"""One validator, one message and one default per choice, shared by every entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lanczos_optim
from lanczos_optim import (
    CURVATURES,
    LanczosNewton,
    check_curvature,
    check_lanczos_steps,
    check_num_probes,
    krylov_solve,
    lanczos,
    spectral_density,
)
from lanczos_optim.validation import (
    NUM_PROBES,
    OPTIMIZER_LANCZOS_STEPS,
    SADDLE_FREE_LANCZOS_STEPS,
    SPECTRUM_LANCZOS_STEPS,
)

F64 = torch.float64


@pytest.mark.parametrize("value", [1, 7, np.int64(3)])
def test_lanczos_steps_accepts_ints_and_caps_at_the_dimension(value) -> None:
    assert check_lanczos_steps(value) == int(value)
    assert type(check_lanczos_steps(value)) is int
    assert check_lanczos_steps(value, dim=2) == min(int(value), 2)


@pytest.mark.parametrize("value", [0, -1, 2.0, True, "3", None])
def test_lanczos_steps_one_message(value) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid lanczos_steps value: {value!r} \(must be"):
        check_lanczos_steps(value)


@pytest.mark.parametrize("value", [0, -2, 1.0, False, None])
def test_num_probes_one_message(value) -> None:
    with pytest.raises(ValueError, match=rf"^Invalid num_probes value: {value!r} \(must be"):
        check_num_probes(value)


def test_curvature_one_tuple_and_one_message() -> None:
    assert CURVATURES == ("hessian", "ggn")
    assert lanczos_optim.optimizers.CURVATURES is CURVATURES
    assert [check_curvature(c) for c in CURVATURES] == list(CURVATURES)
    with pytest.raises(ValueError, match=r"^Invalid curvature: 'fisher'; expected one of"):
        check_curvature("fisher")


def _entry_points() -> dict:
    a = torch.diag(torch.arange(1.0, 5.0, dtype=F64))
    v = torch.ones(4, dtype=F64)
    w = torch.nn.Parameter(torch.ones(2, dtype=F64))
    return {
        "lanczos": lambda s: lanczos(a, s, v0=v),
        "spectral_density": lambda s: spectral_density(a, s, 1),
        "krylov_solve": lambda s: krylov_solve(
            a, v, lanczos_steps=s, damping=1.0, return_info=True
        ),
        "LanczosNewton": lambda s: LanczosNewton([w], lanczos_steps=s),
    }


@pytest.mark.parametrize("entry", sorted(_entry_points()))
def test_every_entry_point_refuses_bad_steps_with_the_one_message(entry: str) -> None:
    with pytest.raises(ValueError, match=r"Invalid (num|lanczos)_steps value: 0 \(must be an int"):
        _entry_points()[entry](0)


def test_steps_above_p_cap_in_the_engine_the_quadrature_and_the_solver() -> None:
    """Lanczos on a P-dim space is exact at m = P: asking more runs P steps everywhere."""
    points = _entry_points()
    assert points["lanczos"](9).num_steps == 4
    assert [r.num_steps for r in points["spectral_density"](9).per_probe] == [4]
    _, info = points["krylov_solve"](9)
    assert info.num_products == 4


def test_defaults_are_the_named_constants() -> None:
    import inspect

    from diagnostics.analysis import compute_eigenspectrum, loss_statistics
    from lanczos_optim import LanczosSaddleFreeNewton

    def default(f, name):
        return inspect.signature(f).parameters[name].default

    assert default(LanczosNewton, "lanczos_steps") == OPTIMIZER_LANCZOS_STEPS == 5
    assert default(LanczosSaddleFreeNewton, "lanczos_steps") == SADDLE_FREE_LANCZOS_STEPS == 20
    assert default(compute_eigenspectrum, "lanczos_steps") == SPECTRUM_LANCZOS_STEPS == 100
    for f in (compute_eigenspectrum, loss_statistics, spectral_density):
        assert default(f, "num_probes") == NUM_PROBES == 1
