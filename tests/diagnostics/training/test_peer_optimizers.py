"""The harness trains with the second-order peers: pytorch-optimizer's and K-FAC on curvlinops."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from diagnostics.cli import main
from diagnostics.training import KFAC, PEER_OPTIMIZERS, train_network
from diagnostics.training.datasets import load_dataset
from diagnostics.training.optimizers import (
    build_optimizer,
    default_hyperparameters,
    differentiates_itself,
    needs_create_graph,
    resolve_optimizer,
    train_step,
)

pytest.importorskip("pytorch_optimizer")
pytest.importorskip("curvlinops")


@pytest.fixture(scope="module")
def digits() -> TensorDataset:
    return load_dataset("digits", subset=256, seed=0)


@pytest.mark.parametrize("name", PEER_OPTIMIZERS)
def test_the_harness_trains_with_each_peer_on_digits(name: str, digits: TensorDataset) -> None:
    # 256 digits, batches of 32, 3 epochs (24 steps) at the peer's default learning rate.
    res = train_network(
        model="mlp", dataset=digits, optimizer=name, epochs=3, batch_size=32,
        schedule="constant", progress=False, seed=0,
    )  # fmt: skip
    losses = [row["train_loss"] for row in res.history]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.85 * 2.3026, (name, losses)  # log(10): the untrained loss
    assert losses[-1] < losses[0], (name, losses)


def test_peer_names_resolve_to_their_classes() -> None:
    import pytorch_optimizer as po

    expected = {
        "swats": po.SWATS, "adahessian": po.AdaHessian, "sophiah": po.SophiaH,
        "shampoo": po.Shampoo, "soap": po.SOAP, "kron": po.Kron, "kfac": KFAC,
    }  # fmt: skip
    assert set(expected) == set(PEER_OPTIMIZERS)
    for name, cls in expected.items():
        assert resolve_optimizer(name) is cls
        assert resolve_optimizer(name.upper()) is cls
        assert default_hyperparameters(name)["lr"] > 0


def test_the_hessian_based_peers_get_gradients_with_their_graph() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    kinds = {name: build_optimizer(name, net.parameters(), model=net) for name in PEER_OPTIMIZERS}
    assert {n for n, opt in kinds.items() if needs_create_graph(opt)} == {"adahessian", "sophiah"}
    assert not any(differentiates_itself(opt) for opt in kinds.values())
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    before = [p.detach().clone() for p in net.parameters()]
    # Without create_graph AdaHessian's Hutchinson product fails ("element 0 of tensors does not
    # require grad"); through train_step it steps, and no gradient keeps its graph afterwards.
    loss, _ = train_step(net, kinds["adahessian"], nn.functional.cross_entropy, x, y)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and p.grad.grad_fn is None for p in net.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


def test_adahessian_fails_without_the_graph() -> None:
    net = nn.Linear(4, 3)
    opt = build_optimizer("adahessian", net.parameters())
    nn.functional.cross_entropy(net(torch.randn(8, 4)), torch.randint(0, 3, (8,))).backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        opt.step()


def test_kfac_needs_the_network() -> None:
    net = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"KFAC needs the network: build_optimizer\(\.\.\., model"):
        build_optimizer("kfac", net.parameters())
    with pytest.raises(ValueError, match="Invalid damping: 0"):
        KFAC(net.parameters(), model=net, damping=0)
    with pytest.raises(ValueError, match="Invalid fisher_type: 'empirical'"):
        KFAC(net.parameters(), model=net, fisher_type="empirical")


def test_kfac_trains_clearly_on_digits(digits: TensorDataset) -> None:
    # K-FAC against the same number of plain gradient steps from the same weights and batches:
    # its training loss must fall well below the start, and below SGD without momentum.
    def final_loss(make) -> float:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
        opt = make(net)
        x, y = digits.tensors
        x = x.float()
        g = torch.Generator().manual_seed(0)
        for _ in range(3):  # epochs
            for idx in torch.randperm(len(y), generator=g).split(32):
                train_step(net, opt, nn.functional.cross_entropy, x[idx], y[idx])
        with torch.no_grad():
            return float(nn.functional.cross_entropy(net(x), y))

    kfac = final_loss(lambda net: KFAC(net.parameters(), model=net))
    sgd = final_loss(lambda net: torch.optim.SGD(net.parameters(), lr=0.03))
    assert kfac < 0.5, kfac
    assert kfac < 0.5 * sgd, (kfac, sgd)


def test_kfac_preconditions_with_the_damped_inverse_of_its_factors() -> None:
    # One step from zero momentum: the parameters move by -lr (F + damping I)^{-1} g, F the
    # type-2 K-FAC matrix built by curvlinops on the same batch (dense, float64).
    from curvlinops import KFACLinearOperator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 2, (10,))
    params = list(net.parameters())
    curvature = KFACLinearOperator(
        net, nn.CrossEntropyLoss(), params, [(x, y)], fisher_type="type-2",
        check_deterministic=False,
    )  # fmt: skip
    dense = curvature @ torch.eye(curvature.shape[1], dtype=torch.float64)
    opt = KFAC(params, model=net, lr=0.5, damping=0.3, fisher_type="type-2")
    before = torch.cat([p.detach().flatten() for p in params])
    loss = nn.functional.cross_entropy(net(x), y)
    grad = torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])
    opt.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    after = torch.cat([p.detach().flatten() for p in params])
    expected = -0.5 * torch.linalg.solve(dense + 0.3 * torch.eye(len(grad)), grad)
    torch.testing.assert_close(after - before, expected, rtol=1e-6, atol=1e-9)


def test_cli_trains_with_a_peer_and_its_keywords(tmp_path: Path) -> None:
    argv = ["train", "--dataset", "digits", "--subset", "128", "--epochs", "1", "--quiet",
            "--wandb", "disabled", "--out", str(tmp_path / "soap"), "--optimizer", "soap",
            "--opt", "precondition_frequency=5", "--batch-size", "32"]  # fmt: skip
    assert main(argv) == 0
    bad = [*argv[:-4], "--opt", "precondition_frequency=often", "--out", str(tmp_path / "b")]
    assert main(bad) == 2


def test_unknown_peer_name_is_one_line_with_the_choices(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match=r"Unknown optimizer 'sopha'; allowed: .*sophiah, shampoo"):
        resolve_optimizer("sopha")
    assert main(["train", "--optimizer", "sopha", "--wandb", "disabled", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "swats, adahessian, sophiah, shampoo, soap, kron, kfac" in err


@pytest.mark.parametrize(
    ("name", "module"), [("soap", "pytorch_optimizer"), ("kfac", "curvlinops")]
)
def test_missing_package_names_the_install_command(
    name: str, module: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    hint = r"pip install 'lanczos-optim\[bench\]'"
    with pytest.raises(ModuleNotFoundError, match=rf"Optimizer '{name}' needs .*: {hint}"):
        resolve_optimizer(name)
    assert main(["train", "--optimizer", name, "--wandb", "disabled", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install 'lanczos-optim[bench]'" in err
