"""Optimisers by name, and one training step that works for every optimiser.

Two step protocols exist:

- **torch.optim style** (SGD, Adam, any ``torch.optim`` class): ``zero_grad()``, forward,
  ``loss.backward()``, ``step()``. ``torch.optim.LBFGS`` gets the usual closure that calls
  ``backward`` itself.
- **Self-differentiating** (:class:`lanczos_optim.LanczosNewton`,
  :class:`lanczos_optim.LanczosSaddleFreeNewton`): ``step(closure)`` with a closure that only
  runs the forward pass and returns ``(loss, outputs)`` *without* calling ``backward``; the
  optimiser differentiates the loss, computes curvature products and writes ``p.grad``.

- **Hessian-based** (pytorch-optimizer's ``AdaHessian``, ``SophiaH``): as torch.optim, but the
  gradients keep their graph (``create_graph=True``) so that ``step()`` can take Hessian-vector
  products; the graph is dropped after the step.

:func:`differentiates_itself` and :func:`needs_create_graph` decide which protocol an optimiser
follows and :func:`train_step` applies it. The peers of :data:`PEER_OPTIMIZERS` come from
pytorch-optimizer (and K-FAC from curvlinops), installed by ``pip install 'lanczos-optim[bench]'``.

Example:
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(4, 3)
    >>> opt = build_optimizer("lanczos_newton", model.parameters(), lanczos_steps=3)
    >>> differentiates_itself(opt)
    True
    >>> x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> loss, outputs = train_step(model, opt, torch.nn.functional.cross_entropy, x, y)
    >>> outputs.shape, loss.requires_grad
    (torch.Size([8, 3]), False)
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "OPTIMIZERS",
    "PEER_OPTIMIZERS",
    "build_optimizer",
    "check_hyperparameter_types",
    "default_hyperparameters",
    "differentiates_itself",
    "needs_create_graph",
    "resolve_hyperparameters",
    "resolve_optimizer",
    "train_step",
]

#: Short names accepted by :func:`build_optimizer` (besides any ``torch.optim`` class name).
OPTIMIZERS = ("sgd", "adam", "lanczos_newton", "lanczos_saddle_free")

#: The second-order peers (``pip install 'lanczos-optim[bench]'``): pytorch-optimizer's SWATS
#: (the Deep Curvature Suite's), AdaHessian, SophiaH, Shampoo, SOAP and PSGD-Kron, and K-FAC on
#: curvlinops (:class:`diagnostics.training._kfac.KFAC`).
PEER_OPTIMIZERS = ("swats", "adahessian", "sophiah", "shampoo", "soap", "kron", "kfac")

_SHORT = {
    "sgd": ("torch.optim", "SGD"),
    "adam": ("torch.optim", "Adam"),
    "lanczos_newton": ("lanczos_optim", "LanczosNewton"),
    "lanczos_saddle_free": ("lanczos_optim", "LanczosSaddleFreeNewton"),
    "swats": ("pytorch_optimizer", "SWATS"),
    "adahessian": ("pytorch_optimizer", "AdaHessian"),
    "sophiah": ("pytorch_optimizer", "SophiaH"),
    "shampoo": ("pytorch_optimizer", "Shampoo"),
    "soap": ("pytorch_optimizer", "SOAP"),
    "kron": ("pytorch_optimizer", "Kron"),
    "kfac": ("diagnostics.training._kfac", "KFAC"),
}
#: The packages a short name needs besides its class's module (imported lazily by the class).
_NEEDS = {"kfac": "curvlinops"}
#: Defaults that learn on the harness's data sets, by (top-level package, class). Torch's SGD
#: default (lr 1e-3, no momentum) barely moves in a few epochs. The peers' learning rates: the
#: lowest mean training loss over seeds 0 and 1 of the harness's digits MLP (batches of 128,
#: 3 epochs, linear schedule) on the grid {1e-4, 3e-4, ..., 1, 3}; of two within 5 %, the smaller.
#: AdaHessian's is its own default, the best here (0.3 diverged), though issue 17 saw it diverge
#: on other problems. K-FAC (ours) has its own constructor default. Others keep their own.
_DEFAULTS: dict[tuple[str, str], dict[str, float]] = {
    ("torch", "SGD"): {"lr": 0.05, "momentum": 0.9},
    ("torch", "Adam"): {"lr": 1e-3},
    ("pytorch_optimizer", "SWATS"): {"lr": 0.03},
    ("pytorch_optimizer", "AdaHessian"): {"lr": 0.1},
    ("pytorch_optimizer", "SophiaH"): {"lr": 1.0},
    ("pytorch_optimizer", "Shampoo"): {"lr": 1.0},
    ("pytorch_optimizer", "SOAP"): {"lr": 0.1},
    ("pytorch_optimizer", "Kron"): {"lr": 0.1},
}
#: Where each optional package comes from, for the message when it is missing.
_EXTRA_HINT = "pip install 'lanczos-optim[bench]'"
_OPTIONAL = {"pytorch_optimizer": "pytorch-optimizer", "curvlinops": "curvlinops-for-pytorch"}
_SELF_DIFFERENTIATING = ("LanczosNewton", "LanczosSaddleFreeNewton", "_LanczosNewtonBase")


def _torch_optimizers() -> dict[str, type[torch.optim.Optimizer]]:
    out = {}
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer):
            out[name] = obj
    out.pop("Optimizer", None)
    return out


def resolve_optimizer(name: str | type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """Return the optimiser class for a short name or a ``torch.optim`` class name.

    Matching ignores case and treats ``-`` as ``_``: ``"SGD"``, ``"sgd"``, ``"AdamW"``,
    ``"adamw"``, ``"lanczos-newton"`` and ``"LanczosNewton"`` all work. A class is returned as is.

    Args:
        name: One of :data:`OPTIMIZERS`, a ``torch.optim`` class name, a
            ``lanczos_optim`` optimiser class name, or an optimiser class.

    Returns:
        The class.

    Raises:
        ValueError: Unknown name, with the allowed names.
        ModuleNotFoundError: A peer whose package is missing, with the command that installs it.

    Example:
        >>> resolve_optimizer("rmsprop").__name__
        'RMSprop'
    """
    if isinstance(name, type) and issubclass(name, torch.optim.Optimizer):
        return name
    key = str(name).lower().replace("-", "_")
    if key in _SHORT:
        return _import(key, *_SHORT[key])
    candidates = _torch_optimizers()
    for attr in ("LanczosNewton", "LanczosSaddleFreeNewton"):
        candidates[attr] = getattr(importlib.import_module("lanczos_optim"), attr)
    for cls_name, cls in candidates.items():
        if cls_name.lower() == key.replace("_", "") or cls_name.lower() == key:
            return cls
    raise ValueError(
        f"Unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS + PEER_OPTIMIZERS)}, or the "
        "name of any torch.optim optimizer class (e.g. AdamW, RMSprop, Adagrad, LBFGS)."
    )


def _import(key: str, module: str, attr: str) -> type[torch.optim.Optimizer]:
    """Import an optimiser class; a missing optional package gets the install hint."""
    try:
        if key in _NEEDS:
            importlib.import_module(_NEEDS[key])
        return getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as err:
        package = _OPTIONAL.get((err.name or "").split(".")[0])
        if package is None:
            raise
        raise ModuleNotFoundError(
            f"Optimizer {key!r} needs {package}, which is not installed: {_EXTRA_HINT}",
            name=err.name,
        ) from None


def default_hyperparameters(name: str | type[torch.optim.Optimizer]) -> dict[str, float]:
    """The hyperparameters the training harness uses when the caller gives none.

    SGD: ``lr=0.05, momentum=0.9``; Adam: ``lr=1e-3``; the peers of :data:`PEER_OPTIMIZERS` a
    learning rate that learns on digits (the table ``_DEFAULTS``); every other optimiser (ours
    included) its own constructor's default learning rate (``LanczosNewton`` 1.0,
    ``LanczosSaddleFreeNewton`` 0.1), so the learning rate in force can always be recorded.

    Args:
        name: See :func:`resolve_optimizer`.

    Returns:
        A new dict (empty when the constructor has no default learning rate).

    Raises:
        ValueError: Unknown name, with the allowed names.

    Example:
        >>> default_hyperparameters("sgd"), default_hyperparameters("lanczos_newton")
        ({'lr': 0.05, 'momentum': 0.9}, {'lr': 1.0})
    """
    cls = resolve_optimizer(name)
    key = (cls.__module__.split(".")[0], cls.__name__)
    if key in _DEFAULTS:
        return dict(_DEFAULTS[key])
    param = inspect.signature(cls.__init__).parameters.get("lr")
    default = param.default if param is not None else None
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return {}
    return {"lr": float(default)}


def resolve_hyperparameters(
    name: str | type[torch.optim.Optimizer],
    kwargs: Mapping[str, Any] | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """The optimiser's keyword arguments: the caller's over :func:`default_hyperparameters`.

    Every default the caller does not set is filled in (e.g. SGD with only ``lr`` given still
    gets ``momentum=0.9``; pass ``momentum=0`` for plain SGD).

    Args:
        name: See :func:`resolve_optimizer`.
        kwargs: The caller's keyword arguments (may hold ``lr``).
        lr: The learning rate, given apart from ``kwargs``.

    Returns:
        The keyword arguments to build the optimiser with.

    Raises:
        ValueError: Unknown name, or ``lr`` given twice with different values.

    Example:
        >>> resolve_hyperparameters("sgd", {"momentum": 0.0})
        {'lr': 0.05, 'momentum': 0.0}
    """
    out = dict(kwargs or {})
    if lr is not None:
        if "lr" in out and out["lr"] != lr:
            raise ValueError(f"lr given twice: lr={lr} and optimizer_kwargs['lr']={out['lr']}.")
        out["lr"] = lr
    return {**default_hyperparameters(name), **out}


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, Tensor)) and not isinstance(value, bool)


def check_hyperparameter_types(
    cls: type[torch.optim.Optimizer], kwargs: Mapping[str, Any], prefix: str = ""
) -> None:
    """Refuse a non-number where the optimiser's constructor has a number as default.

    Torch's own messages for a string learning rate or momentum (``'<' not supported between
    instances of 'str' and 'float'``, ``Invalid learning rate: 1``) do not name the type.

    Args:
        cls: The optimiser class.
        kwargs: Its keyword arguments.
        prefix: Put in front of the message (e.g. ``"SGD: "`` or ``"--opt "``).

    Raises:
        TypeError: Naming the argument, the value and its type (a non-number for a number, a
            non-bool for a bool); or an argument the optimiser does not take, with the ones it
            does.
        ValueError: A non-finite number (``inf``, ``nan``) where a number is expected.

    Example:
        >>> check_hyperparameter_types(torch.optim.SGD, {"momentum": "abc"}, prefix="--opt ")
        Traceback (most recent call last):
        ...
        TypeError: --opt momentum: expected a number, got 'abc' (str)
        >>> check_hyperparameter_types(torch.optim.SGD, {"lr": 1e400}, prefix="--opt ")
        Traceback (most recent call last):
        ...
        ValueError: --opt lr: expected a finite number, got inf
    """
    params = inspect.signature(cls.__init__).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in kwargs.items():
        if key not in params and not open_ended:
            known = ", ".join(n for n in params if n not in ("self", "params"))
            raise TypeError(f"{prefix}{key}: not an option of {cls.__name__} (it takes {known})")
        default = params[key].default if key in params else None
        if value is None and key in params and "None" in str(params[key].annotation):
            continue  # an optional number given as None (e.g. max_step_norm=None: no bound)
        if _is_number(default) and not _is_number(value):
            raise TypeError(
                f"{prefix}{key}: expected a number, got {value!r} ({type(value).__name__})"
            )
        if isinstance(default, bool) and not isinstance(value, bool):
            raise TypeError(
                f"{prefix}{key}: expected true or false, got {value!r} ({type(value).__name__})"
            )
        if _is_number(default) and isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}{key}: expected a finite number, got {value!r}")


def build_optimizer(
    name: str | type[torch.optim.Optimizer],
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    *,
    model: nn.Module | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build an optimiser by name with its keyword arguments.

    Args:
        name: See :func:`resolve_optimizer`.
        params: Parameters (or parameter groups) to optimise.
        model: The network, passed on to an optimiser whose constructor takes ``model`` (K-FAC
            reads its layers), and attached to a Lanczos optimiser with
            ``adaptive_damping=True`` (its extra forward then restores the model's BatchNorm
            statistics); ignored by the others.
        **kwargs: The optimiser's hyperparameters, e.g. ``lr=0.05, momentum=0.9``.

    Returns:
        The optimiser.

    Raises:
        ValueError: Unknown name, or an invalid hyperparameter (the optimiser's own message).
        TypeError: A keyword argument the optimiser does not take, or a non-number where the
            optimiser expects a number (:func:`check_hyperparameter_types`).

    Example:
        >>> opt = build_optimizer("sgd", torch.nn.Linear(2, 2).parameters(), lr=0.1, momentum=0.9)
        >>> type(opt).__name__, opt.defaults["momentum"]
        ('SGD', 0.9)
    """
    cls = resolve_optimizer(name)
    check_hyperparameter_types(cls, kwargs, prefix=f"{cls.__name__}: ")
    if "model" in inspect.signature(cls.__init__).parameters and "model" not in kwargs:
        if model is None:
            raise ValueError(f"{cls.__name__} needs the network: build_optimizer(..., model=net)")
        kwargs = {**kwargs, "model": model}
    try:
        opt = cls(params, **kwargs)
    except TypeError as err:
        raise TypeError(f"{cls.__name__}: {err}") from None
    if model is not None and kwargs.get("adaptive_damping") is True:
        # Its extra forward (the loss after the step) then leaves BatchNorm statistics alone.
        opt.attach(model)  # type: ignore[attr-defined]
    return opt


def differentiates_itself(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` wants a forward-only closure returning ``(loss, outputs)``.

    The rule, in order:

    1. An attribute ``differentiates_closure`` on the optimiser (or its class) decides, so any
       third-party optimiser with the same protocol can opt in (``True``) or out (``False``).
    2. Otherwise it is ``True`` for the optimisers of ``lanczos_optim`` (any class named
       ``LanczosNewton``, ``LanczosSaddleFreeNewton`` or their shared base
       ``_LanczosNewtonBase`` in the method resolution order, defined in a ``lanczos_optim``
       module), and ``False`` for everything else.

    Args:
        optimizer: The optimiser.

    Returns:
        ``True`` for the self-differentiating protocol.

    Example:
        >>> differentiates_itself(torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1))
        False
    """
    flag = getattr(optimizer, "differentiates_closure", None)
    if flag is not None:
        return bool(flag)
    return any(
        cls.__name__ in _SELF_DIFFERENTIATING and cls.__module__.startswith("lanczos_optim")
        for cls in type(optimizer).__mro__
    )


def needs_create_graph(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step()`` takes Hessian-vector products of the gradients it is given.

    An attribute ``needs_create_graph`` on the optimiser (or its class) decides; otherwise it is
    ``True`` for the optimisers of pytorch-optimizer whose ``step`` takes a ``hessian`` argument
    (the Hutchinson family: ``AdaHessian``, ``SophiaH``), which need the gradients computed with
    ``create_graph=True``.

    Args:
        optimizer: The optimiser.

    Returns:
        ``True`` when the gradients must keep their graph.

    Example:
        >>> needs_create_graph(torch.optim.Adam(torch.nn.Linear(2, 2).parameters()))
        False
    """
    flag = getattr(optimizer, "needs_create_graph", None)
    if flag is not None:
        return bool(flag)
    cls = type(optimizer)
    return cls.__module__.startswith("pytorch_optimizer") and (
        "hessian" in inspect.signature(cls.step).parameters
    )


def _step_with_graph(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
    """``step()`` on gradients that keep their graph, then drop the graph (no reference cycle)."""
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    for p, grad in zip(params, grads, strict=True):
        p.grad = grad
    optimizer.step()
    for p in params:
        if p.grad is not None:
            p.grad = p.grad.detach()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
) -> tuple[Tensor, Tensor]:
    """One optimiser step on one batch, with the protocol the optimiser needs.

    The model is left in the mode the caller set (train mode for training).

    Args:
        model: The network.
        optimizer: Any optimiser (see :func:`differentiates_itself`).
        loss_fn: ``loss_fn(outputs, targets)`` returning the mean loss of the batch.
        inputs: The batch.
        targets: Its labels.

    Returns:
        ``(loss, outputs)`` of the first forward pass of the step (before the update), detached.

    Example:
        >>> import torch
        >>> from lanczos_optim import LanczosNewton
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 3)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> loss_fn = torch.nn.CrossEntropyLoss()
        >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> for opt in (sgd, LanczosNewton(model.parameters())):
        ...     loss, outputs = train_step(model, opt, loss_fn, x, y)
        ...     print(type(opt).__name__, tuple(outputs.shape), loss.requires_grad)
        SGD (32, 3) False
        LanczosNewton (32, 3) False
    """
    first: list[tuple[Tensor, Tensor]] = []

    if differentiates_itself(optimizer):

        def closure() -> tuple[Tensor, Tensor]:
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            if not first:
                first.append((loss.detach(), outputs.detach()))
            return loss, outputs

        optimizer.step(closure)
    elif isinstance(optimizer, torch.optim.LBFGS):

        def lbfgs_closure() -> Tensor:
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = loss_fn(outputs, targets)
            loss.backward()
            if not first:
                first.append((loss.detach(), outputs.detach()))
            return loss

        optimizer.step(lbfgs_closure)
    elif needs_create_graph(optimizer):
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_fn(outputs, targets)
        _step_with_graph(optimizer, loss)
        first.append((loss.detach(), outputs.detach()))
    else:
        optimizer.zero_grad()
        outputs = model(inputs)
        loss = loss_fn(outputs, targets)
        loss.backward()
        optimizer.step()
        first.append((loss.detach(), outputs.detach()))
    return first[0]
