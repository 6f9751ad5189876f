"""Data seen identically on every pass, structured outputs and dict inputs of the operators."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lanczos_optim import GGNOperator, HessianOperator


def _data(n: int = 12) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    return model, torch.randn(n, 4, dtype=torch.float64), torch.randint(0, 3, (n,))


class _Augmented(Dataset):
    """A dataset with a random augmentation (noise added on every read)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.x[i] + 0.1 * torch.randn_like(self.x[i]), self.y[i]


def _probe(op: object) -> Tensor:
    return torch.ones(op.shape[0], dtype=torch.float64)  # type: ignore[attr-defined]


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_shuffled_loader_is_refused(cls: type) -> None:
    model, x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5, shuffle=True, drop_last=True)
    with pytest.raises(ValueError, match="shuffle=False"):
        cls(model, nn.CrossEntropyLoss(), loader)
    op = cls(model, nn.CrossEntropyLoss(), loader, check_deterministic=False)
    op @ _probe(op)  # the escape hatch


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_random_augmentation_is_refused_on_the_second_pass(bn_mode: str) -> None:
    model, x, y = _data()
    loader = DataLoader(_Augmented(x, y), batch_size=5)
    op = HessianOperator(model, nn.CrossEntropyLoss(), loader, bn_mode=bn_mode)
    op @ _probe(op)
    with pytest.raises(ValueError, match="differs from the first pass"):
        op @ _probe(op)


def test_deterministic_loader_is_accepted_and_exact() -> None:
    model, x, y = _data()
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    listed = [(x[:5], y[:5]), (x[5:10], y[5:10]), (x[10:], y[10:])]
    a = HessianOperator(model, nn.CrossEntropyLoss(), loader)
    b = HessianOperator(model, nn.CrossEntropyLoss(), listed)
    for _ in range(3):
        assert torch.allclose(a @ _probe(a), b @ _probe(b), rtol=1e-13, atol=0)


class _DictModel(nn.Module):
    def __init__(self, inner: nn.Module, kind: str) -> None:
        super().__init__()
        self.inner, self.kind = inner, kind

    def forward(self, x: Tensor | None = None, *, features: Tensor | None = None) -> object:
        out = self.inner(x if x is not None else features)
        if self.kind == "dict":
            return {"logits": out, "hidden": out.detach()}
        return (out, out.detach())


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_dict_outputs_use_their_logits(cls: type) -> None:
    model, x, y = _data()
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    truth = cls(model, nn.CrossEntropyLoss(), batches) @ torch.eye(43, dtype=torch.float64)
    wrapped = _DictModel(model, "dict")
    got = cls(wrapped, nn.CrossEntropyLoss(), batches) @ torch.eye(43, dtype=torch.float64)
    assert torch.allclose(got, truth, rtol=1e-12, atol=1e-14)


def test_tuple_outputs_need_a_selector_for_the_ggn() -> None:
    model, x, y = _data()
    wrapped = _DictModel(model, "tuple")
    eye = torch.eye(43, dtype=torch.float64)
    truth_h = HessianOperator(model, nn.CrossEntropyLoss(), (x, y)) @ eye
    truth_g = GGNOperator(model, nn.CrossEntropyLoss(), (x, y)) @ eye
    first = lambda out, t: nn.functional.cross_entropy(out[0], t)  # noqa: E731
    # The Hessian passes the tuple to a loss that reads it ...
    assert torch.allclose(HessianOperator(wrapped, first, (x, y)) @ eye, truth_h, atol=1e-14)
    # ... the GGN needs the tensor, and says how to pick it.
    op = GGNOperator(wrapped, nn.CrossEntropyLoss(), (x, y))
    with pytest.raises(TypeError, match="outputs="):
        op @ eye[:, 0]
    picked = GGNOperator(wrapped, nn.CrossEntropyLoss(), (x, y), outputs=0) @ eye
    assert torch.allclose(picked, truth_g, atol=1e-14)
    by_fn = GGNOperator(wrapped, nn.CrossEntropyLoss(), (x, y), outputs=lambda o: o[0]) @ eye
    assert torch.allclose(by_fn, truth_g, atol=1e-14)
    with pytest.raises(ValueError, match="selects nothing"):
        GGNOperator(wrapped, nn.CrossEntropyLoss(), (x, y), outputs="logits") @ eye[:, 0]


def test_torch_loss_on_a_tuple_names_the_selector_for_the_hessian_too() -> None:
    # A torch loss needs the tensor: the Hessian said only "must be Tensor, not tuple".
    model, x, y = _data()
    op = HessianOperator(_DictModel(model, "tuple"), nn.CrossEntropyLoss(), (x, y))
    with pytest.raises(TypeError, match="outputs=") as info:
        op @ torch.zeros(43, dtype=torch.float64)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_dict_inputs_are_passed_as_keywords(cls: type) -> None:
    model, x, y = _data()
    eye = torch.eye(43, dtype=torch.float64)
    truth = cls(model, nn.CrossEntropyLoss(), [(x[:7], y[:7]), (x[7:], y[7:])]) @ eye
    wrapped = _DictModel(model, "dict")
    batches = [({"features": x[:7]}, y[:7]), ({"features": x[7:]}, y[7:])]
    op = cls(wrapped, nn.CrossEntropyLoss(), batches)
    assert torch.allclose(op @ eye, truth, rtol=1e-12, atol=1e-14)
    assert op.num_samples == 12


def test_bad_inputs_are_named_as_inputs() -> None:
    model, _, y = _data()
    op = HessianOperator(model, nn.CrossEntropyLoss(), [(["a", "b"], y), (["c"], y)])
    with pytest.raises(TypeError, match="The inputs of batch 0 are a list"):
        op @ torch.zeros(43, dtype=torch.float64)
