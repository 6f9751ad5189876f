"""Every tensor the package creates lives on the parameters' device (or deliberately on the CPU).

No GPU is needed to catch device mixing: with ``torch.set_default_device("meta")``, any tensor
created without an explicit device lands on ``meta``, and mixing it with the CPU tensors of the
model raises ("Tensor on device meta is not on the expected device cpu!") or fails when read
("Cannot copy out of meta tensor"). On a GPU the same line would have mixed CPU and CUDA tensors
(which crashed the optimisers on CUDA in the past). Each case runs the whole entry point and then
checks the results against a run without the trap, so a case that silently skipped work fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lanczos_optim import (
    GGNOperator,
    HessianOperator,
    LanczosNewton,
    LanczosSaddleFreeNewton,
    krylov_solve,
    lanczos,
    spectral_density,
)
from lanczos_optim.flatten import flatten_tensors


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 4 * 4, 3),
    ).double()


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 1, 6, 6, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (8,), generator=gen),
        )
        for _ in range(2)
    ]


def _dense() -> torch.Tensor:
    a = torch.randn(7, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return a + a.T


class _Inputs:
    """Everything a case needs, created on the CPU before the trap is set."""

    def __init__(self) -> None:
        self.model = _model()
        self.data = _data()
        self.dense = _dense()
        self.gen = torch.Generator(device="cpu").manual_seed(3)
        self.v7 = torch.ones(7, dtype=torch.float64)
        self.grid = torch.linspace(-3, 3, 5, dtype=torch.float64)


Case = Callable[[_Inputs], list[torch.Tensor]]


def _run_lanczos(s: _Inputs) -> list[torch.Tensor]:
    res = lanczos(s.dense, 5, generator=s.gen, tol=1e-12, compute_vectors=True)
    assert res.ritz_vectors is not None
    return [res.ritz_values, res.weights, res.residuals, res.ritz_vectors.abs()]


def _run_density(batch: bool) -> Case:
    def run(s: _Inputs) -> list[torch.Tensor]:
        sd = spectral_density(s.dense, 4, num_probes=3, generator=s.gen, batch_probes=batch)
        return [sd.nodes, sd.weights, sd.moments(3), sd.smooth(s.grid, 0.5)]

    return run


def _run_krylov(v0: str | None, block_size: int = 1) -> Case:
    def run(s: _Inputs) -> list[torch.Tensor]:
        d, info = krylov_solve(
            s.dense,
            s.v7,
            4,
            1.0,
            "abs",
            v0=v0,
            generator=s.gen,
            return_info=True,
            block_size=block_size,
        )
        return [d, info.ritz_values, info.apply(s.v7)]

    return run


def _run_operator(op_cls: type, bn_mode: str, cache: bool) -> Case:
    def run(s: _Inputs) -> list[torch.Tensor]:
        loss = nn.CrossEntropyLoss()
        op = op_cls(s.model, loss, s.data, bn_mode=bn_mode, cache_graphs=cache)
        v = flatten_tensors([p.detach().cos() for p in s.model.parameters()])
        sd = spectral_density(op, 3, num_probes=2, generator=s.gen)
        return [
            op @ v,
            op @ torch.stack([v, v.flip(0)], 1),
            op.loss_and_gradient()[1],
            sd.nodes,
            *s.model.state_dict().values(),
        ]

    return run


def _run_optimizer(cls: type, **kwargs: Any) -> Case:
    def run(s: _Inputs) -> list[torch.Tensor]:
        opt = cls(s.model.parameters(), lanczos_steps=4, seed=0, **kwargs)
        for x, y in s.data * 2:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> Any:
                out = s.model(x)
                return nn.functional.cross_entropy(out, y), out

            opt.step(closure)
        info = opt.last_info
        assert info is not None
        return [*s.model.parameters(), info.ritz_values, info.weights, info.residuals]

    return run


def _run_sub_batch(s: _Inputs) -> list[torch.Tensor]:
    """Curvature from a sub-batch (curvature_closure), BatchNorm buffers of the attached model."""
    opt = LanczosNewton(s.model.parameters(), lanczos_steps=4, update_every=2).attach(s.model)
    for x, y in s.data * 2:

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> Any:
            out = s.model(x)
            return nn.functional.cross_entropy(out, y), out

        def sub(x: torch.Tensor = x[:3], y: torch.Tensor = y[:3]) -> Any:
            return nn.functional.cross_entropy(s.model(x), y)

        opt.step(closure, curvature_closure=sub)
    info = opt.last_info
    assert info is not None
    return [*s.model.parameters(), *s.model.buffers(), info.ritz_values]


CASES: dict[str, Case] = {
    "lanczos": _run_lanczos,
    "spectral_density": _run_density(False),
    "spectral_density_batched": _run_density(True),
    "krylov_solve_in_span": _run_krylov(None),
    "krylov_solve_random": _run_krylov("random"),
    "krylov_solve_blocks": _run_krylov(None, block_size=3),
    **{
        f"{cls.__name__}-{bn}-{'kept' if cache else 'rebuilt'}": _run_operator(cls, bn, cache)
        for cls in (HessianOperator, GGNOperator)
        for bn in ("eval", "train")
        for cache in (False, True)
    },
    "LanczosNewton": _run_optimizer(LanczosNewton),
    "LanczosNewton-random-momentum-wd": _run_optimizer(
        LanczosNewton, krylov_start="random", momentum=0.9, weight_decay=1e-3
    ),
    "LanczosNewton-reuse-basis": _run_optimizer(LanczosNewton, update_every=2),
    "LanczosNewton-adaptive-damping-wd": _run_optimizer(
        LanczosNewton, adaptive_damping=True, weight_decay=1e-3
    ),
    "LanczosNewton-blocks": _run_optimizer(LanczosNewton, block_size=3),
    "LanczosNewton-bf16-cpu-basis-reused": _run_optimizer(
        LanczosNewton, update_every=2, basis_dtype=torch.bfloat16, basis_device="cpu"
    ),
    "LanczosNewton-bf16-basis-blocks": _run_optimizer(
        LanczosNewton, block_size=3, basis_dtype=torch.bfloat16
    ),
    "LanczosNewton-reuse-augment-warm": _run_optimizer(
        LanczosNewton, update_every=2, reuse_complement="augment", warm_start=True
    ),
    "LanczosNewton-bf16-cpu-basis-augment-warm": _run_optimizer(
        LanczosNewton,
        update_every=2,
        basis_dtype=torch.bfloat16,
        basis_device="cpu",
        reuse_complement="augment",
        warm_start=True,
    ),
    "LanczosNewton-krylov-tol": _run_optimizer(LanczosNewton, krylov_tol=0.3),
    "LanczosNewton-subspace-momentum": _run_optimizer(LanczosNewton, subspace_momentum=True),
    "LanczosSaddleFreeNewton-random-subspace-momentum": _run_optimizer(
        LanczosSaddleFreeNewton, krylov_start="random", subspace_momentum=True
    ),
    "LanczosNewton-sub-batch-curvature": _run_sub_batch,
    "LanczosSaddleFreeNewton": _run_optimizer(LanczosSaddleFreeNewton),
    "LanczosSaddleFreeNewton-random-reuse": _run_optimizer(
        LanczosSaddleFreeNewton, krylov_start="random", update_every=3
    ),
    "LanczosSaddleFreeNewton-reuse-rayleigh": _run_optimizer(
        LanczosSaddleFreeNewton, update_every=2, reuse_complement="rayleigh"
    ),
}


@pytest.fixture(params=sorted(CASES), ids=str)
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_no_tensor_created_without_a_device(case: Case, device_trap) -> None:
    expected = case(_Inputs())
    inputs = _Inputs()  # built outside the trap: the model and data are ordinary CPU tensors
    with device_trap():
        got = case(inputs)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g.device.type == "cpu"
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_the_trap_catches_device_mixing(device_trap) -> None:
    # The technique itself: a tensor made without a device mixed with a CPU tensor raises.
    cpu = torch.ones(3, device="cpu")
    with device_trap(), pytest.raises((RuntimeError, NotImplementedError)):
        float((cpu * torch.zeros(3)).sum())
