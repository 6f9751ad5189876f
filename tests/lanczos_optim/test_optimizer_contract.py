"""The torch.optim contract of the Lanczos optimisers: errors, state, determinism, faults."""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch
from torch import nn

from lanczos_optim import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim.optimizers import StepInfo

F64 = torch.float64
CLASSES = [LanczosNewton, LanczosSaddleFreeNewton]


def _model(dtype: torch.dtype = F64, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


def _batches(dtype: torch.dtype = F64, n: int = 6) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 4, generator=gen, dtype=dtype), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(n)
    ]


def _closure(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]):
    x, y = batch

    def closure():
        outputs = model(x)
        return nn.functional.cross_entropy(outputs, y), outputs

    return closure


# ----------------------------------------------------------------------------- error table
ERROR_CASES = {
    "lr-negative": (dict(lr=-0.1), ValueError, r"Invalid learning rate: -0.1"),
    "lr-nan": (dict(lr=math.nan), ValueError, r"Invalid learning rate: nan"),
    "lr-string": (dict(lr="1"), ValueError, r"Invalid learning rate: 1"),
    "damping-zero": (dict(damping=0.0), ValueError, r"Invalid damping value: 0.0"),
    "damping-negative": (dict(damping=-1.0), ValueError, r"Invalid damping value: -1.0"),
    "damping-inf": (dict(damping=math.inf), ValueError, r"Invalid damping value: inf"),
    "steps-zero": (dict(lanczos_steps=0), ValueError, r"Invalid lanczos_steps value: 0"),
    "steps-float": (dict(lanczos_steps=2.5), ValueError, r"Invalid lanczos_steps value: 2.5"),
    "steps-bool": (dict(lanczos_steps=True), ValueError, r"Invalid lanczos_steps value: True"),
    "curvature": (dict(curvature="fisher"), ValueError, r"Invalid curvature: 'fisher'"),
    "weight-decay": (dict(weight_decay=-1e-4), ValueError, r"Invalid weight_decay value"),
    "momentum-negative": (dict(momentum=-0.1), ValueError, r"Invalid momentum value: -0.1"),
    "momentum-one": (dict(momentum=1.0), ValueError, r"Invalid momentum value: 1.0"),
    "start": (dict(krylov_start="zeros"), ValueError, r"Invalid krylov_start: 'zeros'"),
    "update-every-zero": (dict(update_every=0), ValueError, r"Invalid update_every value: 0"),
    "update-every-float": (dict(update_every=2.0), ValueError, r"Invalid update_every value"),
    "max-step-norm": (dict(max_step_norm=0.0), ValueError, r"Invalid max_step_norm value: 0.0"),
    "seed-negative": (dict(seed=-1), ValueError, r"Invalid seed: -1"),
    "seed-float": (dict(seed=1.5), ValueError, r"Invalid seed: 1.5"),
    "block-size-zero": (dict(block_size=0), ValueError, r"Invalid block_size value: 0"),
    "block-size-float": (dict(block_size=2.0), ValueError, r"Invalid block_size value: 2.0"),
    "basis-dtype-int": (
        dict(basis_dtype=torch.int8),
        ValueError,
        r"Invalid basis_dtype: torch.int8",
    ),
    "basis-dtype-str": (dict(basis_dtype="bf16"), ValueError, r"Invalid basis_dtype: 'bf16'"),
    "basis-device": (dict(basis_device="nowhere"), ValueError, r"Invalid basis_device: 'nowhere'"),
    "subspace-momentum-int": (
        dict(subspace_momentum=1),
        ValueError,
        r"Invalid subspace_momentum value: 1 \(must be a bool\)",
    ),
    "subspace-momentum-reuse": (
        dict(subspace_momentum=True, update_every=2),
        ValueError,
        r"Invalid subspace_momentum value: True with update_every=2",
    ),
}


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("case", ERROR_CASES, ids=list(ERROR_CASES))
def test_constructor_error_table(cls: type, case: str) -> None:
    kwargs, exc, pattern = ERROR_CASES[case]
    with pytest.raises(exc, match=pattern):
        cls(_model().parameters(), **kwargs)


PARAM_ERRORS = {
    "empty": (lambda m: [], ValueError, "empty parameter list"),
    "two-groups-with-their-own-damping": (
        lambda m: [{"params": m[0].parameters()}, {"params": m[2].parameters(), "damping": 0.1}],
        ValueError,
        r"parameter group 1 sets damping=0.1 but group 0 has 1.0; all groups share one eigenbasis",
    ),
    "mixed-dtypes": (
        lambda m: [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, dtype=F64))],
        ValueError,
        "one dtype and on one device",
    ),
    "integer": (lambda m: [torch.zeros(2, dtype=torch.int64)], ValueError, "floating-point"),
    "group-with-bad-lr": (
        lambda m: [{"params": list(m.parameters()), "lr": -1.0}],
        ValueError,
        "Invalid learning rate: -1.0",
    ),
}


@pytest.mark.parametrize("case", PARAM_ERRORS, ids=list(PARAM_ERRORS))
def test_parameter_error_table(case: str) -> None:
    make, exc, pattern = PARAM_ERRORS[case]
    with pytest.raises(exc, match=pattern):
        LanczosNewton(make(_model()))


def test_add_param_group_later_refuses_a_shared_option() -> None:
    model = _model()
    opt = LanczosNewton(model[0].parameters())
    with pytest.raises(ValueError, match="sets lanczos_steps=3 but group 0 has 5"):
        opt.add_param_group({"params": model[2].parameters(), "lanczos_steps": 3})


# ----------------------------------------------------------------------------- closure protocol
def _protocol_cases(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
    x, y = _batches()[0]

    def backward_called():
        opt.zero_grad()
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        return loss, out

    def backward_retained():
        out = model(x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward(retain_graph=True)
        return loss, out

    def detached():
        out = model(x)
        return nn.functional.cross_entropy(out, y).detach(), out

    def no_grad():
        with torch.no_grad():
            out = model(x)
            return nn.functional.cross_entropy(out, y), out

    def loss_only():
        return nn.functional.cross_entropy(model(x), y)

    def outputs_unrelated():
        out = model(x)
        return nn.functional.cross_entropy(model(x + 1), y), out

    def outputs_detached():
        out = model(x)
        return nn.functional.cross_entropy(out, y), out.detach()

    def vector_loss():
        out = model(x)
        return nn.functional.cross_entropy(out, y, reduction="none"), out

    def triple():
        out = model(x)
        return nn.functional.cross_entropy(out, y), out, y

    def a_float():
        return 1.0

    return {
        "backward-called": (backward_called, "already called backward"),
        "backward-retained": (backward_retained, "already called backward"),
        "detached-loss": (detached, "no autograd graph"),
        "no-grad-loss": (no_grad, "no autograd graph"),
        "ggn-without-outputs": (loss_only, r"curvature='ggn' needs the model outputs"),
        "outputs-unrelated": (outputs_unrelated, "not computed from the outputs"),
        "outputs-detached": (outputs_detached, "attached to the graph"),
        "vector-loss": (vector_loss, "scalar tensor; got a tensor of shape"),
        "triple": (triple, "tuple of length 3"),
        "float": (a_float, "scalar tensor; got float"),
    }


PROTOCOL_IDS = [
    "backward-called",
    "backward-retained",
    "detached-loss",
    "no-grad-loss",
    "ggn-without-outputs",
    "outputs-unrelated",
    "outputs-detached",
    "vector-loss",
    "triple",
    "float",
]


@pytest.mark.parametrize("case", PROTOCOL_IDS)
def test_closure_protocol_errors_explain_the_protocol(case: str) -> None:
    model = _model()
    opt = LanczosNewton(model.parameters(), lanczos_steps=3)
    before = [p.detach().clone() for p in model.parameters()]
    closure, pattern = _protocol_cases(model, opt)[case]
    with pytest.raises(RuntimeError, match=pattern) as err:
        opt.step(closure)
    assert "must only run the forward pass" in str(err.value)
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)


def test_step_requires_a_closure() -> None:
    opt = LanczosSaddleFreeNewton(_model().parameters())
    with pytest.raises(RuntimeError, match=r"requires a closure"):
        opt.step()


def test_hessian_accepts_both_closure_forms_and_zero_grad_inside() -> None:
    model = _model()
    batch = _batches()[0]
    opt = LanczosSaddleFreeNewton(model.parameters(), lanczos_steps=4)

    def loss_only():
        opt.zero_grad(set_to_none=False)  # harmless: zeroes, no backward
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    first = opt.step(loss_only)
    second = opt.step(_closure(model, batch))
    assert not first.requires_grad
    assert float(second) < float(first)


# ------------------------------------------------------------------ state and determinism
VALID_CONFIGS = {
    "newton-default": (LanczosNewton, {}),
    "newton-hessian": (LanczosNewton, dict(curvature="hessian", damping=0.5)),
    "newton-momentum-wd": (LanczosNewton, dict(momentum=0.9, weight_decay=1e-2, lr=0.5)),
    "newton-random-start": (LanczosNewton, dict(krylov_start="random", lanczos_steps=4)),
    "newton-random-start-seeded": (
        LanczosNewton,
        dict(krylov_start="random", lanczos_steps=4, seed=3),
    ),
    "newton-update-every": (LanczosNewton, dict(update_every=3, lanczos_steps=5)),
    "newton-step-bound": (LanczosNewton, dict(max_step_norm=0.05)),
    "newton-blocks": (LanczosNewton, dict(block_size=3, lanczos_steps=7)),
    "newton-blocks-reuse": (LanczosNewton, dict(block_size=2, lanczos_steps=4, update_every=2)),
    "saddle-free-default": (LanczosSaddleFreeNewton, {}),
    "saddle-free-blocks-random": (
        LanczosSaddleFreeNewton,
        dict(block_size=4, krylov_start="random", lanczos_steps=8),
    ),
    "saddle-free-random-every-momentum": (
        LanczosSaddleFreeNewton,
        dict(krylov_start="random", update_every=2, momentum=0.5, lanczos_steps=6),
    ),
    "newton-krylov-tol": (LanczosNewton, dict(krylov_tol=1e-2, lanczos_steps=8)),
    "newton-subspace-momentum": (LanczosNewton, dict(subspace_momentum=True, lanczos_steps=3)),
    "saddle-free-subspace-momentum": (
        LanczosSaddleFreeNewton,
        dict(subspace_momentum=True, lanczos_steps=4),
    ),
    # load_state_dict casts the cached bfloat16 basis to float64; the step casts it back.
    "bf16-basis-reused-across-the-checkpoint": (
        LanczosNewton,
        dict(update_every=3, lanczos_steps=5, basis_dtype=torch.bfloat16, basis_device="cpu"),
    ),
}


def _equal_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = a[key], b[key]
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), key
        else:
            assert va == vb, key


@pytest.mark.parametrize("case", VALID_CONFIGS, ids=list(VALID_CONFIGS))
def test_state_dict_round_trip_continues_bit_for_bit(case: str) -> None:
    cls, kwargs = VALID_CONFIGS[case]
    batches = _batches()
    model = _model()
    opt = cls(model.parameters(), **kwargs)
    for b in batches[:2]:
        opt.step(_closure(model, b))
    # Save to bytes and back, as a checkpoint would (weights_only loading).
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = _model(seed=123)
    model2.load_state_dict(saved["model"])
    opt2 = cls(model2.parameters(), **kwargs)
    opt2.load_state_dict(saved["opt"])
    for b in batches[2:]:
        l1 = opt.step(_closure(model, b))
        l2 = opt2.step(_closure(model2, b))
        assert torch.equal(l1, l2)
        for p, q in zip(model.parameters(), model2.parameters(), strict=True):
            assert torch.equal(p, q)
            assert torch.equal(p.grad, q.grad)
    assert opt.last_info.num_products == opt2.last_info.num_products
    assert opt.state_dict()["param_groups"] == opt2.state_dict()["param_groups"]


def test_random_start_draws_differ_per_step_and_follow_the_seed() -> None:
    def run(seed: int | None, global_seed: int) -> list[torch.Tensor]:
        torch.manual_seed(global_seed)
        model = _model()
        opt = LanczosNewton(model.parameters(), krylov_start="random", lanczos_steps=3, seed=seed)
        torch.manual_seed(global_seed)
        out = []
        for b in _batches(n=2):
            opt.step(_closure(model, b))
            out.append(opt.last_info.ritz_values.clone())
        return out

    a, b = run(7, 0), run(7, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # seed fixes the draws
    c, d = run(None, 0), run(None, 0)
    assert all(torch.equal(x, y) for x, y in zip(c, d, strict=True))  # global seed fixes them
    e = run(None, 1)
    assert not torch.equal(c[0], e[0])
    assert run(7, 0)[0].shape == (3,)
    assert opt_state_has_generator()


def opt_state_has_generator() -> bool:
    model = _model()
    opt = LanczosNewton(model.parameters(), krylov_start="random", lanczos_steps=2, seed=0)
    opt.step(_closure(model, _batches()[0]))
    state = opt.state_dict()["state"][0]
    return state["generator_state"].dtype == torch.uint8


def test_update_every_reuses_the_basis() -> None:
    model = _model()
    opt = LanczosNewton(
        model.parameters(), update_every=3, lanczos_steps=5, reuse_complement="damped"
    )
    products, ages = [], []
    for b in _batches(n=6):
        opt.step(_closure(model, b))
        products.append(opt.last_info.num_products)
        ages.append(opt.last_info.basis_age)
    assert products == [5, 0, 0, 5, 0, 0]
    assert ages == [0, 1, 2, 0, 1, 2]
    # A reused step applies the stored basis to the new gradient, complement included.
    state = opt.state[next(iter(model.parameters()))]
    assert state["krylov_basis"].shape[0] == 5


def test_deepcopy_steps_identically() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters(), momentum=0.5)
    batches = _batches()
    opt.step(_closure(model, batches[0]))
    model_copy = copy.deepcopy(model)
    opt_copy = LanczosNewton(model_copy.parameters(), momentum=0.5)
    opt_copy.load_state_dict(copy.deepcopy(opt.state_dict()))
    clone = copy.deepcopy(opt)  # the optimiser alone deep-copies (its parameters are copied)
    assert clone.param_groups[0]["params"][0] is not model[0].weight
    assert torch.equal(clone.param_groups[0]["params"][0], model[0].weight)
    assert clone.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    for b in batches[1:3]:
        opt.step(_closure(model, b))
        opt_copy.step(_closure(model_copy, b))
    for p, q in zip(model.parameters(), model_copy.parameters(), strict=True):
        assert torch.equal(p, q)


def test_repr_lists_the_hyperparameters() -> None:
    text = repr(LanczosSaddleFreeNewton(_model().parameters(), damping=0.3))
    assert text.startswith("LanczosSaddleFreeNewton (")
    for key in ("lr: 0.1", "damping: 0.3", "lanczos_steps: 20", "curvature: hessian"):
        assert key in text


def test_lr_scheduler_changes_the_step() -> None:
    model = _model()
    ref = copy.deepcopy(model)
    batch = _batches()[0]
    opt = LanczosNewton(model.parameters(), lr=1.0, max_step_norm=None)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.1)
    ref_opt = LanczosNewton(ref.parameters(), lr=1.0, max_step_norm=None)
    opt.step(_closure(model, batch))
    ref_opt.step(_closure(ref, batch))
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)
    start = [p.detach().clone() for p in model.parameters()]
    ref_start = [p.detach().clone() for p in ref.parameters()]
    opt.step(_closure(model, batch))
    ref_opt.step(_closure(ref, batch))
    assert opt.last_info.lr == pytest.approx(0.1)
    for p, s, q, r in zip(model.parameters(), start, ref.parameters(), ref_start, strict=True):
        torch.testing.assert_close(p - s, 0.1 * (q - r), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("cls", CLASSES)
def test_dtype_preserved(cls: type, dtype: torch.dtype) -> None:
    model = _model(dtype)
    opt = cls(model.parameters(), momentum=0.5, update_every=2, lanczos_steps=4)
    losses = [float(opt.step(_closure(model, b))) for b in _batches(dtype, n=4)]
    assert all(math.isfinite(v) for v in losses)
    for p in model.parameters():
        assert p.dtype == dtype
        assert p.grad.dtype == dtype
        assert opt.state[p]["momentum_buffer"].dtype == dtype
    assert opt.state[next(iter(model.parameters()))]["krylov_basis"].dtype == dtype
    assert opt.last_info.ritz_values.dtype == F64


def test_params_without_gradient_are_skipped() -> None:
    model = _model()
    unused = nn.Parameter(torch.ones(3, dtype=F64))
    frozen = nn.Parameter(torch.ones(2, dtype=F64), requires_grad=False)
    params = [*model.parameters(), unused, frozen]
    opt = LanczosNewton(params, weight_decay=0.1, momentum=0.9, krylov_start="random", seed=0)
    for b in _batches(n=2):
        opt.step(_closure(model, b))
    assert torch.equal(unused.detach(), torch.ones(3, dtype=F64))
    assert torch.equal(frozen, torch.ones(2, dtype=F64))
    assert unused.grad is None
    assert frozen.grad is None
    assert "momentum_buffer" not in opt.state[unused]
    assert all(p.grad is not None for p in model.parameters())


def test_penalty_on_parameters_enters_the_gradient_with_ggn() -> None:
    model = _model()
    x, y = _batches()[0]

    def closure():
        outputs = model(x)
        loss = nn.functional.cross_entropy(outputs, y) + 0.1 * model[0].weight.pow(2).sum()
        return loss, outputs

    opt = LanczosNewton(model.parameters(), lr=0.0)
    opt.step(closure)
    loss, _ = closure()
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)


def test_sparse_gradients_are_refused() -> None:
    emb = nn.Embedding(10, 3, sparse=True).double()
    opt = LanczosSaddleFreeNewton(emb.parameters())
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step(lambda: emb(torch.tensor([1, 2])).pow(2).sum())


def test_step_bound_limits_the_update() -> None:
    model = _model()
    opt = LanczosNewton(model.parameters(), max_step_norm=1e-3)
    before = torch.cat([p.detach().flatten() for p in model.parameters()])
    opt.step(_closure(model, _batches()[0]))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert float((after - before).norm()) == pytest.approx(1e-3, rel=1e-9)
    assert opt.last_info.step_scale < 1.0


def test_hooks_and_last_info() -> None:
    model = _model()
    opt = LanczosSaddleFreeNewton(model.parameters(), lanczos_steps=6)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.step(_closure(model, _batches()[0]))
    assert calls == ["pre", "post"]
    info = opt.last_info
    assert isinstance(info, StepInfo)
    assert info.step == 1
    assert not info.skipped
    assert info.num_products == 6
    assert info.ritz_values.shape == info.weights.shape == info.residuals.shape == (6,)
    assert float(info.weights.sum()) == pytest.approx(1.0, abs=1e-9)
    assert 0.0 < info.krylov_fraction < 1.0  # the default random start: 6 of 43 dimensions
    assert info.predicted_decrease > 0  # saddle-free directions always descend
    for key in ("closure_seconds", "gradient_seconds", "product_seconds", "bookkeeping_seconds"):
        assert getattr(info, key) >= 0.0
    assert info.total_seconds >= info.product_seconds
    record = info.to_dict()
    assert isinstance(record["ritz_values"], list)
    assert len(record["ritz_values"]) == 6


# ----------------------------------------------------------------------------- faults
def _at_zero(p: nn.Parameter) -> None:
    with torch.no_grad():
        p.copy_(torch.tensor([0.0, 1.0], dtype=F64))


def _nan_loss(p: nn.Parameter):
    return lambda: p.sum() * math.nan


def _sqrt_abs(p: nn.Parameter):
    _at_zero(p)
    return lambda: torch.sqrt(p.abs()).sum()  # finite loss, gradient inf at 0


def _kink(p: nn.Parameter):
    _at_zero(p)
    return lambda: p[0].abs() ** 1.5 + p[1] ** 2  # finite gradient, non-finite curvature at 0


FAULTS = {
    "nan-loss": (_nan_loss, "non-finite loss"),
    "inf-gradient": (_sqrt_abs, "non-finite gradient"),
    "nan-curvature": (_kink, "non-finite curvature"),
}


@pytest.mark.parametrize("case", FAULTS, ids=list(FAULTS))
def test_non_finite_step_is_skipped(case: str) -> None:
    make, reason = FAULTS[case]
    p = nn.Parameter(torch.tensor([0.5, 1.0], dtype=F64))
    opt = LanczosSaddleFreeNewton([p], momentum=0.9, krylov_start="random", seed=1)
    good = lambda: (p - 3.0).pow(2).sum()  # noqa: E731
    opt.step(good)
    bad = make(p)
    state_before = copy.deepcopy(opt.state_dict())
    p_before = p.detach().clone()
    grad_before = p.grad.clone()
    with pytest.warns(RuntimeWarning, match=reason):
        opt.step(bad)
    assert torch.equal(p.detach(), p_before)
    assert torch.equal(p.grad, grad_before)
    after = opt.state_dict()
    assert after["state"][0]["skipped_steps"] == 1
    after["state"][0]["skipped_steps"] = 0
    _equal_state(state_before["state"][0], after["state"][0])
    assert opt.last_info.skipped
    assert reason in opt.last_info.reason
    # The next good step continues as if the bad one had not happened.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(good)
    assert opt.state_dict()["state"][0]["step"] == 2


# ----------------------------------------------------------------------------- BatchNorm
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm_buffers_and_flags_only_change_by_the_closure(train: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    model.train(train)
    reference = copy.deepcopy(model)
    batch = _batches()[0]
    opt = LanczosNewton(model.parameters(), lanczos_steps=8)
    opt.step(_closure(model, batch))
    with torch.no_grad():
        reference(batch[0])  # exactly one forward, as the closure did
    for (name, b), (_, r) in zip(model.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(b, r), name
    assert [m.training for m in model.modules()] == [train] * len(list(model.modules()))
    assert opt.last_info.num_products == 8
