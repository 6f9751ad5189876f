"""Real data in CI (issue 5, section 6): train briefly on Fashion-MNIST, then its Hessian spectrum.

The data come from Debian's ``dataset-fashion-mnist`` (IDX files under
/usr/share/datasets/fashion-mnist), which ``.ci/run`` installs before ``make test``. Without them
the test fails under CI (``CI=true``) and is skipped elsewhere, with a message saying how to
install them.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from diagnostics import compute_eigenspectrum, load_dataset, small_cnn, train_network

INSTALL_HINT = "apt-get install dataset-fashion-mnist"
SAMPLES = 512


def require_fashion_mnist(subset: int, train: bool = True):
    """Load a Fashion-MNIST subset, or fail (under CI) / skip (elsewhere) saying how to get it."""
    try:
        return load_dataset("fashion-mnist", train=train, subset=subset, seed=0)
    except FileNotFoundError as err:
        message = f"Fashion-MNIST is not installed ({err}); run `{INSTALL_HINT}`."
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("Under CI the Fashion-MNIST data must be installed. " + message)
        pytest.skip(message)


def _mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model.eval()(x), y))


@pytest.mark.data
def test_train_and_spectrum_on_fashion_mnist() -> None:
    train = require_fashion_mnist(SAMPLES)
    test = require_fashion_mnist(256, train=False)
    x, y = train.tensors
    assert x.shape == (SAMPLES, 1, 28, 28)

    torch.manual_seed(0)
    model = small_cnn((1, 28, 28), 10, channels=(8, 16))
    before = _mean_loss(model, x, y)
    result = train_network(
        model=model,
        dataset=train,
        test_dataset=test,
        epochs=1,
        batch_size=32,
        lr=0.05,
        optimizer_kwargs={"momentum": 0.9},
        schedule="constant",
        device="cpu",
        seed=0,
        progress=False,
    )
    after = _mean_loss(result.model, x, y)
    assert math.isfinite(after)
    assert after < before - 0.1, (before, after)  # starts near log(10) = 2.30
    assert result.history[-1]["test_acc"] > 0.2  # chance is 0.1

    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, SAMPLES, 256)]
    spectrum = compute_eigenspectrum(
        result.model, nn.CrossEntropyLoss(), batches, curvature="hessian", lanczos_steps=10, seed=0
    )
    assert spectrum.meta["num_samples"] == SAMPLES
    assert spectrum.ritz_values.shape == (10,)
    assert np.isfinite(spectrum.ritz_values).all()
    assert np.isfinite(spectrum.weights).all()
    assert (spectrum.weights >= 0).all()
    assert spectrum.weights.sum() == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < spectrum.lambda_max < 1e4
    assert spectrum.lambda_min < spectrum.lambda_max
    assert 0.0 <= spectrum.negative_mass() < 1.0
    assert math.isfinite(spectrum.trace()[0])


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_missing_fashion_mnist_fails_under_ci_and_skips_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path, ci: str, outcome: type[BaseException]
) -> None:
    import diagnostics.training.datasets

    monkeypatch.setattr(diagnostics.training.datasets, "FASHION_MNIST_DIRS", (str(tmp_path),))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=r"apt-get install dataset-fashion-mnist"):
        require_fashion_mnist(16)
