r"""Curvature from a smaller batch than the gradient: ``step(closure, curvature_closure=...)``.

The gradient comes from ``closure`` (or from ``p.grad`` in the backward protocol); on the steps
that compute a fresh Lanczos basis, ``curvature_closure`` runs one more forward pass, on a
sub-batch, and every curvature product is a backward pass through *its* graph:

.. math::
    d = (C_S + \delta I)^{-1} g_B \quad \text{(in the Krylov space)},

with :math:`g_B` the gradient of the batch :math:`B` and :math:`C_S` the GGN (or Hessian) of
the sub-batch :math:`S`. A product then costs about :math:`|S|/|B|` of one on the full batch.
Slicing the closure's own outputs instead would not save anything: the products would still
run backward through the full batch's graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lanczos_optim._graph_products import BatchedProduct
from lanczos_optim.optimizers import _protocols

if TYPE_CHECKING:
    from lanczos_optim.optimizers._base import _LanczosNewtonBase

_AUTOCAST_DEVICES = ("cpu", "cuda", "xpu", "mps", "hpu")


def check(curvature_closure: object) -> None:
    """Raise ``TypeError`` unless ``curvature_closure`` is ``None`` or callable.

    Example:
        >>> check(None)
        >>> check(3)
        Traceback (most recent call last):
        ...
        TypeError: curvature_closure must be None or a callable; got int.
    """
    if curvature_closure is not None and not callable(curvature_closure):
        raise TypeError(
            f"curvature_closure must be None or a callable; got {type(curvature_closure).__name__}."
        )


def in_callers_autocast(
    device: torch.device, fn: Callable[[], Any] | None
) -> Callable[[], Any] | None:
    """``fn`` re-entering the autocast that is active now on ``device`` (``fn`` itself if none).

    The optimiser switches autocast off for its own arithmetic; the sub-closure, like the
    closure, runs under the caller's.

    Example:
        >>> import torch
        >>> with torch.autocast("cpu", dtype=torch.bfloat16):
        ...     f = in_callers_autocast(torch.device("cpu"), lambda: torch.ones(2) @ torch.ones(2))
        >>> f().dtype
        torch.bfloat16
    """
    kind = device.type
    if fn is None or kind not in _AUTOCAST_DEVICES or not torch.is_autocast_enabled(kind):
        return fn
    dtype, user = torch.get_autocast_dtype(kind), fn

    def wrapped() -> Any:
        with torch.autocast(kind, dtype=dtype, enabled=True):
            return user()

    return wrapped


@contextlib.contextmanager
def _buffers_kept(model: nn.Module | None) -> Iterator[None]:
    """Restore ``model``'s buffers (BatchNorm running statistics, counters) on exit.

    Only buffers whose values changed are written, through ``.data`` so that autograd's version
    counter does not flag the sub-batch's graph: a buffer a forward pass changed is one it
    updated (train-mode running statistics), which that pass's backward never reads.
    """
    if model is None:
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                if not torch.equal(buf, value):
                    buf.data.copy_(value)


def curvature_product(
    opt: _LanczosNewtonBase, closure: Callable[[], Any], live: list[Tensor], curvature: str
) -> BatchedProduct:
    """Run ``closure`` once and return the curvature product on its graph, over ``live``.

    The buffers of an attached model (:meth:`attach`) are restored afterwards, so BatchNorm's
    running statistics see only the step's main forward pass.

    Raises:
        RuntimeError: When the sub-closure breaks the closure protocol (backward, no graph,
            no outputs for the GGN), naming ``curvature_closure``.
    """
    rec, use_ggn = opt._recorder, curvature == "ggn"
    candidates = [p for p in opt._params if p.requires_grad]
    before = [(p.grad, p.grad._version if p.grad is not None else 0) for p in candidates]
    seen = len(rec.records)
    with _buffers_kept(getattr(opt, "_attached_model", None)), torch.enable_grad():
        rec.frozen, opt._in_closure = False, True
        try:
            ret = closure()
        finally:
            rec.frozen, opt._in_closure = True, False
    try:
        if _protocols.changed_gradients(candidates, before):
            raise opt._protocol_error("the closure called backward().")
        recorded = rec.last_outputs(seen)
        if isinstance(ret, Tensor) and use_ggn and recorded is not None:
            ret = (ret, recorded)  # the attached model's outputs
        loss, outputs = opt._parse(ret, curvature)
        _, direct, source = opt._live_parameters(loss, outputs, use_ggn)
    except RuntimeError as err:
        raise RuntimeError(f"curvature_closure: {err}") from None
    product = opt._differentiate(loss, outputs, live, direct, True, use_ggn, source)[1]
    if product is None:  # pragma: no cover - _differentiate returns one whenever refresh
        raise RuntimeError("internal error: no curvature product.")
    return product
