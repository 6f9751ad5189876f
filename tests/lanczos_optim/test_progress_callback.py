"""The optional per-step ``callback`` of lanczos, spectral_density and lanczos_many."""

from __future__ import annotations

import torch

from lanczos_optim import lanczos, spectral_density
from lanczos_optim._lanczos_many import lanczos_many


def _matrix(n: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a + a.T


def test_lanczos_calls_back_after_every_step_with_the_step_count():
    seen: list[int] = []
    res = lanczos(_matrix(), 7, generator=torch.Generator().manual_seed(1), callback=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert res.num_steps == 7


def test_lanczos_reports_the_step_that_breaks_down():
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    seen: list[int] = []
    res = lanczos(a, 3, v0=torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), callback=seen.append)
    assert res.breakdown
    assert seen == list(range(1, res.num_steps + 1))


def test_the_callback_does_not_change_the_result():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = lanczos(_matrix(), 10, generator=g1)
    called = lanczos(_matrix(), 10, generator=g2, callback=lambda j: None)
    assert torch.equal(plain.ritz_values, called.ritz_values)


def test_spectral_density_passes_the_callback_to_each_probe():
    seen: list[int] = []
    g = torch.Generator().manual_seed(0)
    spectral_density(_matrix(), 5, 3, generator=g, batch_probes=False, callback=seen.append)
    assert seen == [1, 2, 3, 4, 5] * 3


def test_batched_probes_call_back_once_per_lock_step():
    seen: list[int] = []
    g = torch.Generator().manual_seed(0)
    spectral_density(_matrix(), 6, 4, generator=g, batch_probes=True, callback=seen.append)
    assert seen == [1, 2, 3, 4, 5, 6]
    seen.clear()
    starts = torch.randn(30, 2, dtype=torch.float64)
    lanczos_many(lambda m: _matrix() @ m, starts, 4, callback=seen.append)
    assert seen == [1, 2, 3, 4]
