r"""Diagonal curvature approximations: BackPACK diagonals and a model-agnostic Hutchinson estimate.

BackPACK gives the exact GGN diagonal, its Monte-Carlo estimate and the Hessian diagonal for the
layers it supports; :func:`hutchinson_diagonal` works for any model, through operator products.

Each diagonal is of the data-set curvature :math:`C = \sum_b \frac{|b|}{N} C_b`, weighted by
batch size exactly as :mod:`lanczos_optim.operators` weight their products.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from diagnostics._progress import progress_bar
from lanczos_optim import (
    LossFn,
    check_bn_mode,
    check_data,
    curvature_mode,
    curvature_operator,
    iterate_batches,
)

__all__ = ["KINDS", "UnsupportedModelError", "diagonal_approximations", "hutchinson_diagonal"]

KINDS = ("diag_ggn_exact", "diag_ggn_mc", "diag_hessian")
_FALLBACKS = (None, "hutchinson")
_CHUNK = 32  # probe columns per operator pass in hutchinson_diagonal
_NOTES = {"SumModule": "a residual addition", "ScaleModule": "a scalar multiplication"}


class UnsupportedModelError(ValueError):
    """BackPACK cannot compute a diagonal of this model; ``offending`` lists what it refuses.

    Example:
        >>> err = UnsupportedModelError("diag_ggn_exact", ["Dropout"])
        >>> isinstance(err, ValueError), err.offending
        (True, ['Dropout'])
        >>> "fallback='hutchinson'" in str(err)
        True
    """

    def __init__(self, kind: str, offending: Sequence[str], detail: str = "") -> None:
        self.kind, self.offending = kind, list(offending)
        msg = f"BackPACK cannot compute {kind!r} for this model; refused: {', '.join(offending)}."
        hint = " Pass fallback='hutchinson' for a model-agnostic estimate."
        said = f" BackPACK says: {detail.strip().rstrip('.')}." if detail else ""
        super().__init__(msg + said + hint)


def hutchinson_diagonal(
    operator: object, num_samples: int, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Estimate the diagonal of a square operator from Rademacher probes (Bekas et al., 2007).

    .. math::
        \hat d = \frac{1}{n} \sum_{k=1}^{n} z_k \odot A z_k, \qquad
        z_k \in \{\pm 1\}^P, \qquad
        \mathbb{E}\,\hat d = \mathrm{diag}(A), \quad
        \mathrm{Var}\,\hat d_i = \frac{1}{n} \sum_{j \ne i} A_{ij}^2 .

    The error falls as :math:`n^{-1/2}`. Probes go through the operator in blocks of 32 columns
    (one data pass per block for a curvature operator).

    Args:
        operator: A ``[P, P]`` tensor or any object with ``shape`` and ``matmat`` or ``@`` on
            ``[P, K]`` blocks (e.g. :class:`~lanczos_optim.HessianOperator`).
        num_samples: Number of probes :math:`n`, at least 1.
        generator: Random generator for the probes (CPU).

    Returns:
        The estimate, shape ``[P]``, in the operator's dtype (accumulated in float64).

    Raises:
        ValueError: If ``num_samples`` is not a positive int or the operator is not square.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))
        >>> hutchinson_diagonal(A, 4).tolist()  # exact for a diagonal matrix
        [1.0, 2.0, 3.0, 4.0]
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}.")
    shape = tuple(getattr(operator, "shape", ()))
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"operator must be square [P, P] with a shape; got shape {shape}.")
    dim = int(shape[0])
    dtype = getattr(operator, "dtype", None) or torch.get_default_dtype()
    device = torch.device(getattr(operator, "device", None) or "cpu")
    matmat = getattr(operator, "matmat", None) if not isinstance(operator, Tensor) else None
    acc = torch.zeros(dim, dtype=torch.float64, device=device)
    done = 0
    while done < num_samples:
        k = min(_CHUNK, num_samples - done)
        z = torch.randint(0, 2, (dim, k), generator=generator).to(device, dtype) * 2 - 1
        az = matmat(z) if matmat is not None else operator @ z  # type: ignore[operator]
        acc += (z * az).to(torch.float64).sum(dim=1)
        done += k
    return (acc / num_samples).to(dtype)


def _extension(kind: str, mc_samples: int) -> object:
    from backpack.extensions import DiagGGNExact, DiagGGNMC, DiagHessian

    if kind == "diag_ggn_mc":
        return DiagGGNMC(mc_samples=mc_samples)
    return DiagGGNExact() if kind == "diag_ggn_exact" else DiagHessian()


def _refused(model: nn.Module, loss_fn: object, ext: object, bn_mode: str) -> list[str]:
    """Modules (and the loss) that ``ext`` has no rule for, or BatchNorm in train mode."""
    from backpack.utils.module_classification import is_no_op

    known = getattr(ext, "_BackpropExtension__module_extensions", None)
    out = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        label = f"{name or '<root>'} ({kind}{': ' + _NOTES[kind] if kind in _NOTES else ''})"
        if is_no_op(m) or any(m.children()):  # containers: handled by _prepare's converter
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and bn_mode == "train":
            out.append(f"{label[:-1]} in train mode)")
        elif known is not None and type(m) not in known:
            out.append(label)
    if not isinstance(loss_fn, nn.Module) or (known is not None and type(loss_fn) not in known):
        out.append(f"loss_fn ({type(loss_fn).__name__})")
    return out


def _prepare(model: nn.Module) -> tuple[nn.Module, dict[int, nn.Parameter], list[str]]:
    """Deep-copy and extend the model (through the converter for custom containers)."""
    from backpack import extend
    from backpack.utils.module_classification import is_no_op

    memo: dict[int, object] = {}
    clone = copy.deepcopy(model, memo)
    mapping = {id(p): memo[id(p)] for p in model.parameters() if id(p) in memo}
    if not any(any(m.children()) and not is_no_op(m) for m in clone.modules()):
        return extend(clone), mapping, []  # type: ignore[return-value]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = extend(clone, use_converter=True)
        except Exception as exc:  # torch.fx cannot trace data-dependent control flow
            return clone, mapping, [f"<root> ({type(model).__name__}: converter failed: {exc})"]
    found = [re.search(r"op=(\w+), target=(.*?)\. If", str(w.message)) for w in caught]
    ops = [f"{m[2]} ({m[1]}: a function, not a module BackPACK can see)" for m in found if m]
    return converted, mapping, ops


def _backpack_culprit(exc: BaseException, net: nn.Module, loss_fn: object) -> str | None:
    """``"name (Type)"`` of the module BackPACK was working on when it raised, else None."""
    names = {id(m): n or "<root>" for n, m in net.named_modules()}
    names[id(loss_fn)] = "loss_fn"
    found, tb = None, exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if "/backpack/" in frame.f_code.co_filename.replace("\\", "/"):
            module = frame.f_locals.get("module")
            if isinstance(module, nn.Module):
                found = f"{names.get(id(module), '?')} ({type(module).__name__})"
            found = found or "a module"
        tb = tb.tb_next
    return found or ("a module" if isinstance(exc, NotImplementedError) else None)


class _IgnoredTargets(NotImplementedError):
    """Targets equal to ``ignore_index``: BackPACK's cross-entropy counts them (wrong)."""


def _check_no_ignored_targets(loss_fn: object, targets: object) -> None:
    index = getattr(loss_fn, "ignore_index", None)
    ignores = isinstance(index, int) and isinstance(targets, Tensor)
    if ignores and not targets.is_floating_point() and bool((targets == index).any()):
        raise _IgnoredTargets(
            f"targets equal to ignore_index={index}, which BackPACK does not ignore"
        )


def _backpack_diagonal(
    net: nn.Module,
    loss_fn: nn.Module,
    data: Iterable,
    params: list[Tensor],
    ext: object,
    bn_mode: str,
    seed: int | None,
    bar: Any,
) -> Tensor:
    from backpack import backpack

    acc = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64, device=params[0].device)
    total, sum_red = 0, getattr(loss_fn, "reduction", "mean") == "sum"
    field = ext.savefield  # type: ignore[attr-defined]
    devices = [params[0].device] if params[0].device.type == "cuda" else []
    rng = torch.random.fork_rng(devices=devices) if seed is not None else nullcontext()
    with rng, torch.enable_grad(), curvature_mode(net, bn_mode), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        if seed is not None:
            torch.manual_seed(seed)
        for x, y, n in iterate_batches(data, params[0].device, params[0].dtype):
            bar.update()
            _check_no_ignored_targets(loss_fn, y)
            with backpack(ext):
                loss_fn(net(x), y).backward()
            parts = [getattr(p, field, torch.zeros_like(p)).reshape(-1) for p in params]
            acc += torch.cat(parts).to(torch.float64) * (1.0 if sum_red else n)
            total += n
            for p in params:
                p.grad = None
    if total == 0:
        raise ValueError("data is empty: it yielded no samples.")
    return (acc if sum_red else acc / total).to(params[0].dtype)


def _check_options(
    kinds: str | Sequence[str], fallback: object, mc_samples: object, hutchinson_samples: object
) -> tuple[str, ...]:
    """The kinds asked for, without repeats; raises on a bad kind, fallback or sample count."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(dict.fromkeys(kinds))
    if not kinds or any(k not in KINDS for k in kinds):
        bad = [k for k in kinds if k not in KINDS] or kinds
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}; got {bad!r}.")
    if fallback not in _FALLBACKS:
        raise ValueError(f"fallback must be one of {_FALLBACKS}; got {fallback!r}.")
    for name, value in (("mc_samples", mc_samples), ("hutchinson_samples", hutchinson_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return kinds


def _attempt_backpack(
    net: nn.Module, bp_loss: object, *args: Any
) -> tuple[Tensor | None, list[str], str]:
    """BackPACK's diagonal, or ``None`` with the refusing layer and BackPACK's message.

    ``args`` are the remaining arguments of :func:`_backpack_diagonal`. Errors that no layer
    of ``net`` explains are raised.
    """
    try:
        return _backpack_diagonal(net, bp_loss, *args), [], ""
    except Exception as exc:
        culprit = (
            "loss_fn (ignore_index)"
            if isinstance(exc, _IgnoredTargets)
            else _backpack_culprit(exc, net, bp_loss)
        )
        if culprit is None:
            raise
        return None, [f"{culprit}: {type(exc).__name__} in BackPACK"], str(exc)


def diagonal_approximations(
    model: nn.Module,
    loss_fn: LossFn,
    data: object,
    kinds: Sequence[str] | str = KINDS,
    *,
    bn_mode: str = "eval",
    fallback: str | None = None,
    mc_samples: int = 1,
    seed: int | None = None,
    hutchinson_samples: int = 100,
    progress: bool = False,
    reduction: str | None = None,
) -> dict[str, Tensor]:
    r"""Diagonals of the data-set GGN and Hessian, through BackPACK (Dangel et al., 2020).

    .. math::
        \mathrm{diag}(C) = \sum_b \frac{|b|}{N}\, \mathrm{diag}(C_b), \qquad
        C \in \{ G = J^\top H_\ell J,\ \hat G_{\mathrm{MC}},\ H \}.

    ``diag_ggn_mc`` replaces :math:`H_\ell` by ``mc_samples`` sampled outer products (unbiased).
    BackPACK works on a deep copy of ``model`` (custom containers such as residual blocks go
    through its ``use_converter``), so the model, its hooks, buffers and ``.grad`` are untouched;
    the copy costs one model's memory. Layers BackPACK refuses (BatchNorm with
    ``bn_mode="train"``, BatchNorm for ``diag_hessian``, LayerNorm, GELU, SiLU, additions for
    ``diag_hessian``, functional ops it cannot see, losses other than MSE/cross-entropy, ...)
    raise :class:`UnsupportedModelError` listing them; with ``fallback="hutchinson"`` those
    kinds are estimated by :func:`hutchinson_diagonal` on the GGN (both GGN kinds) or Hessian
    operator, with a warning.

    Args:
        model: The network; diagonals are over its trainable parameters, flattened in the order
            of ``model.parameters()``.
        loss_fn: ``loss_fn(outputs, targets)``, e.g. ``nn.CrossEntropyLoss()``.
        data: One ``(inputs, targets)`` batch or a re-iterable of them.
        kinds: Any of :data:`KINDS`.
        bn_mode: ``"eval"`` or ``"train"`` BatchNorm statistics.
        fallback: ``None`` (raise on refusal) or ``"hutchinson"``.
        mc_samples: Monte-Carlo samples per backward pass for ``diag_ggn_mc``.
        seed: Seed for the MC samples and Hutchinson probes (global RNG state is preserved).
        hutchinson_samples: Probes of the Hutchinson fallback.
        progress: Show a progress bar of the batches of each BackPACK pass on stderr (only
            when it is a terminal).
        reduction: ``"mean"`` or ``"sum"`` for a loss that states no reduction, passed to the
            operators of the Hutchinson fallback (BackPACK takes only ``nn`` losses). Targets
            equal to a cross-entropy's ``ignore_index`` are refused by the BackPACK path, which
            would count them.

    Returns:
        ``{kind: flat diagonal [P]}`` in the parameters' dtype.

    Raises:
        ValueError: On an unknown kind, fallback or ``bn_mode``, bad sample counts, or empty data.
        UnsupportedModelError: If BackPACK refuses the model and ``fallback`` is ``None``.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 1)).double()
        >>> x, y = torch.randn(8, 3).double(), torch.randn(8, 1).double()
        >>> d = diagonal_approximations(model, torch.nn.MSELoss(), (x, y), ["diag_hessian"])
        >>> torch.allclose(d["diag_hessian"][:3], 2 * (x**2).mean(0))
        True
    """
    kinds = _check_options(kinds, fallback, mc_samples, hutchinson_samples)
    check_bn_mode(bn_mode)
    data = check_data(data)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters.")

    net, mapping, graph_refusals = _prepare(model)
    clones = [mapping[id(p)] for p in params]
    bp_loss = None
    if isinstance(loss_fn, nn.Module):
        from backpack import extend

        bp_loss = extend(copy.deepcopy(loss_fn))
    out: dict[str, Tensor] = {}
    cache: dict[str, Tensor] = {}  # Hutchinson estimates, shared by the two GGN kinds
    for kind in kinds:
        ext = _extension(kind, mc_samples)
        refused = graph_refusals + _refused(net, loss_fn, ext, bn_mode)
        detail = ""
        if not refused:
            total = len(data) if hasattr(data, "__len__") else None
            with progress_bar(total, kind, enabled=progress, unit="batch") as bar:
                diag, refused, detail = _attempt_backpack(
                    net, bp_loss, data, clones, ext, bn_mode, seed, bar
                )
            if diag is not None:
                out[kind] = diag
                continue
        if fallback is None:
            raise UnsupportedModelError(kind, refused, detail)
        warnings.warn(
            f"{kind}: BackPACK refuses {', '.join(refused)}; using a Hutchinson estimate "
            f"with {hutchinson_samples} probes instead.",
            stacklevel=2,
        )
        curv = "hessian" if kind == "diag_hessian" else "ggn"
        if curv not in cache:
            op = curvature_operator(
                curv, model, loss_fn, data, bn_mode=bn_mode, reduction=reduction
            )
            gen = torch.Generator().manual_seed(seed) if seed is not None else None
            cache[curv] = hutchinson_diagonal(op, hutchinson_samples, generator=gen)
        out[kind] = cache[curv]
    return out
