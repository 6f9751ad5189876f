"""Train with the Hugging Face ``Trainer`` and LanczosNewton: ``optimizers=`` and a 6-line subclass.

The ``Trainer`` runs ``accelerator.backward(loss)`` and then ``optimizer.step()``. LanczosNewton
takes its curvature from the gradient's graph, so the backward needs ``create_graph=True``;
that is the whole subclass::

    class NewtonTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            model.train()
            loss = self.compute_loss(model, self._prepare_inputs(inputs),
                                     num_items_in_batch=num_items_in_batch)
            self.accelerator.backward(loss, create_graph=True)
            return loss.detach()

    optimizer = LanczosNewton(model.parameters()).attach(model)   # attach: logits for the GGN
    NewtonTrainer(model, args, train_dataset=data, optimizers=(optimizer, None)).train()

The Trainer's ``max_grad_norm`` clips the gradient the optimiser reads; a decay/no-decay pair
of parameter groups (what ``Trainer.create_optimizer`` builds) works too. Here the model is a
tiny MLP returning ``{"loss", "logits"}`` (any ``PreTrainedModel`` works the same way).

Run it (digits; ``--quick`` takes a few seconds)::

    .venv/bin/python examples/huggingface_example.py --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lanczos_optim import LanczosNewton


class NewtonTrainer(Trainer):
    """``Trainer`` whose backward keeps the graph that LanczosNewton's curvature needs."""

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        self.accelerator.backward(loss, create_graph=True)
        return loss.detach()


class DigitsMLP(nn.Module):
    """A 64-32-10 tanh MLP that returns ``{"loss", "logits"}`` like a transformers model."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.net(pixels)
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class Digits(torch.utils.data.Dataset):
    def __init__(self, quick: bool) -> None:
        digits = load_digits()
        n = 512 if quick else len(digits.target)
        self.x = torch.tensor(digits.data[:n] / 16.0, dtype=torch.float32)
        self.y = torch.tensor(digits.target[:n])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.x[i], "labels": self.y[i]}


class LossLog(TrainerCallback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def train(quick: bool, out: str) -> list[float]:
    torch.manual_seed(0)
    model = DigitsMLP()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    groups = [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = LanczosNewton(groups, lanczos_steps=10).attach(model)
    args = TrainingArguments(
        output_dir=out,
        max_steps=16 if quick else 200,
        per_device_train_batch_size=64,
        logging_steps=4,
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    log = LossLog()
    trainer = NewtonTrainer(
        model=model,
        args=args,
        train_dataset=Digits(quick),
        optimizers=(optimizer, None),
        callbacks=[log],
    )
    trainer.train()
    return log.losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset, 16 steps")
    args = parser.parse_args(argv)
    if args.quick:
        torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        losses = train(args.quick, out)
    print(f"huggingface.LanczosNewton: first_loss={losses[0]:.4f} last_loss={losses[-1]:.4f}")
    return 0 if losses[-1] < losses[0] else 1


if __name__ == "__main__":
    raise SystemExit(main())
