"""The optimisers in the training frameworks people run: Lightning, Accelerate, Hugging Face.

Each case runs the real framework on the CPU for a few steps on a small digits MLP.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _digits(n: int = 256, dtype: torch.dtype = torch.float32):
    digits = load_digits()
    x = torch.tensor(digits.data[:n] / 16.0, dtype=dtype)
    return x, torch.tensor(digits.target[:n])


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10)).to(dtype)


def _example(name: str) -> Any:
    sys.path.insert(0, str(EXAMPLES))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))


# ----------------------------------------------------------------------------- Lightning
def _fit(module: Any, steps: int = 8, **trainer_kw: Any) -> None:
    L = pytest.importorskip("lightning")
    x, y = _digits()
    gen = torch.Generator().manual_seed(0)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kw,
    )
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=gen))


@pytest.mark.parametrize("name", ["LanczosNewton", "LanczosSaddleFreeNewton"])
def test_lightning_automatic_optimisation_trains(name: str) -> None:
    pytest.importorskip("lightning")
    example = _example("lightning_example")
    torch.manual_seed(0)
    module = example.DigitsClassifier(name)
    _fit(module, steps=12, gradient_clip_val=5.0)
    assert len(module.losses) == 12
    assert sum(module.losses[-3:]) / 3 < module.losses[0]
    assert all(p.grad is None or p.grad.grad_fn is None for p in module.parameters())


def test_lightning_bf16_mixed_with_clipping_trains() -> None:
    pytest.importorskip("lightning")
    module = _example("lightning_example").DigitsClassifier("LanczosNewton")
    _fit(module, precision="bf16-mixed", gradient_clip_val=0.5)
    assert module.losses[-1] < module.losses[0]
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_lightning_accumulate_grad_batches_steps_on_the_accumulated_gradient() -> None:
    pytest.importorskip("lightning")
    module = _example("lightning_example").DigitsClassifier("LanczosNewton")
    _fit(module, steps=3, accumulate_grad_batches=2)
    assert len(module.losses) == 6  # 6 batches, 3 optimiser steps
    opt = module.trainer.optimizers[0]
    assert opt.state[next(iter(module.parameters()))]["step"] == 3


def test_lightning_without_the_backward_override_names_it() -> None:
    L = pytest.importorskip("lightning")

    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = _mlp()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return LanczosSaddleFreeNewton(self.parameters())

    with pytest.raises(RuntimeError, match=r"override LightningModule.backward") as err:
        _fit(Plain(), steps=1)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------- Accelerate
@pytest.fixture
def accelerate_state() -> Iterator[Any]:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState, GradientState

    yield accelerate
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _accelerated(accelerate: Any, accumulation: int, curvature: str = "hessian"):
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    model = _mlp(torch.float64)
    opt = LanczosNewton(model.parameters(), curvature=curvature, lanczos_steps=8)
    model, opt = accelerator.prepare(model, opt)
    return accelerator, model, opt


def test_accelerate_backward_protocol_trains(accelerate_state: Any) -> None:
    accelerator, model, opt = _accelerated(accelerate_state, 1, curvature="ggn")
    opt.optimizer.attach(model)
    x, y = _digits(dtype=torch.float64)
    losses = []
    for _ in range(6):
        loss = nn.functional.cross_entropy(model(x), y)
        accelerator.backward(loss, create_graph=True)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_accelerate_closure_protocol_returns_none_but_records_the_loss(
    accelerate_state: Any,
) -> None:
    _, model, opt = _accelerated(accelerate_state, 1)
    x, y = _digits(dtype=torch.float64)
    returned = opt.step(lambda: nn.functional.cross_entropy(model(x), y))
    assert returned is None  # AcceleratedOptimizer.step drops the closure's loss
    assert opt.optimizer.last_info.loss == pytest.approx(
        float(nn.functional.cross_entropy(_mlp(torch.float64)(x), y))
    )


def test_accelerate_accumulation_steps_on_the_accumulated_batch(accelerate_state: Any) -> None:
    accelerator, model, opt = _accelerated(accelerate_state, 2)
    x, y = _digits(dtype=torch.float64)
    for xs, ys in zip(x.chunk(4), y.chunk(4), strict=True):
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.cross_entropy(model(xs), ys), create_graph=True)
            opt.step()
            opt.zero_grad()
    assert opt.optimizer.state[next(iter(model.parameters()))]["step"] == 2
    # The same two steps, each on the concatenated pair of micro-batches, by the closure.
    reference = _mlp(torch.float64)
    ref_opt = LanczosNewton(reference.parameters(), curvature="hessian", lanczos_steps=8)
    for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
        ref_opt.step(lambda xs=xs, ys=ys: nn.functional.cross_entropy(reference(xs), ys))
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-8)


def test_accelerate_accumulation_with_a_closure_is_refused(accelerate_state: Any) -> None:
    accelerator, model, opt = _accelerated(accelerate_state, 2)
    x, y = _digits(dtype=torch.float64)

    def run() -> None:
        for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
            with accelerator.accumulate(model):
                opt.step(lambda xs=xs, ys=ys: nn.functional.cross_entropy(model(xs), ys))

    with pytest.raises(RuntimeError, match=r"gradient_accumulation_steps=2.*create_graph=True"):
        run()


# ----------------------------------------------------------------------------- Hugging Face
def test_huggingface_trainer_trains_with_two_parameter_groups(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    example = _example("huggingface_example")
    losses = example.train(quick=True, out=str(tmp_path))
    assert len(losses) == 4
    assert losses[-1] < 0.7 * losses[0]


def test_huggingface_trainer_without_create_graph_names_the_fix(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    example = _example("huggingface_example")
    model = example.DigitsMLP()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True, save_strategy="no"
    )
    opt = LanczosNewton(model.parameters()).attach(model)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=example.Digits(True), optimizers=(opt, None)
    )
    with pytest.raises(RuntimeError, match=r"Hugging Face: a Trainer whose training_step"):
        trainer.train()
