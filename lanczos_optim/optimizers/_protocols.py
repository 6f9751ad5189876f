r"""The backward protocol: curvature from what ``loss.backward(create_graph=True)`` left behind.

Besides the closure protocol (the closure returns the attached loss and the optimiser
differentiates it), the optimisers accept the protocol of AdaHessian and SophiaH:

.. code-block:: python

    loss.backward(create_graph=True)   # p.grad keeps its graph
    optimizer.step()                   # or Lightning/Accelerate/HF calling step for you

The gradient is read from ``p.grad`` (so gradient clipping and accumulation act on it), and
Hessian products are backward passes through the gradients' graph:
:math:`Hv = \nabla_w (\nabla_w L \cdot v)`. The GGN :math:`J^\top H_\ell J` needs the model
outputs :math:`f` and :math:`\nabla_f \ell`; :class:`OutputRecorder` (``optimizer.attach(model)``)
keeps them with a forward hook on the model and a gradient hook on its outputs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from lanczos_optim._graph_products import (
    BatchedProduct,
    gauss_newton_apply,
    hessian_of_gradients,
)

CREATE_GRAPH_FIX = (
    "call loss.backward(create_graph=True) (Lightning: override LightningModule.backward with "
    "'def backward(self, loss, *args, **kwargs): loss.backward(create_graph=True)'; Accelerate: "
    "accelerator.backward(loss, create_graph=True); Hugging Face: a Trainer whose training_step "
    "does that), or pass a closure that only runs the "
    "forward pass and returns (loss, outputs)"
)


def select_output(out: Any) -> Tensor | None:
    """The model output tensor the GGN linearises: the tensor, ``["logits"]`` or the first item.

    Example:
        >>> import torch
        >>> t = torch.zeros(2)
        >>> select_output(t) is t, select_output({"loss": t[0], "logits": t}) is t
        (True, True)
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        logits = out.get("logits")
        return logits if isinstance(logits, Tensor) else None
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


class _Record:
    """One forward pass: the outputs, and the gradient of the loss with respect to them.

    For a ``torch.compile``'d module (whose graph cannot be differentiated twice) the record
    also keeps the inputs, so that :meth:`jacobian_outputs` can re-run the original module
    eagerly for the Jacobian products.

    Example:
        >>> import torch
        >>> out = torch.ones(2, requires_grad=True) * 2
        >>> _Record(out).jacobian_outputs() is out
        True
    """

    __slots__ = ("g_out", "outputs", "rerun")

    def __init__(self, outputs: Tensor, rerun: Callable[[], Tensor] | None = None) -> None:
        self.outputs = outputs
        self.g_out: Tensor | None = None
        self.rerun = rerun

    def jacobian_outputs(self) -> Tensor:
        """Outputs whose graph gives the Jacobian products (an eager re-run when compiled).

        Example:
            >>> import torch
            >>> x = torch.ones(1, requires_grad=True)
            >>> _Record(x * 2, rerun=lambda: x * 3).jacobian_outputs().item()
            3.0
        """
        return self.outputs if self.rerun is None else self.rerun()


def _eager_rerun(module: nn.Module, args: Any, kwargs: Any) -> Callable[[], Tensor]:
    """Re-run a compiled module's original module eagerly; its buffers are left as they were.

    Example:
        >>> import torch
        >>> class Compiled(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        ...     def __init__(self):
        ...         super().__init__()
        ...         self._orig_mod = torch.nn.BatchNorm1d(2)
        >>> module = Compiled()
        >>> out = _eager_rerun(module, (torch.randn(4, 2),), {})()
        >>> out.shape, module._orig_mod.num_batches_tracked.item()  # statistics untouched
        (torch.Size([4, 2]), 0)
    """
    original: nn.Module = module._orig_mod  # type: ignore[assignment]

    def rerun() -> Tensor:
        # Copies of the buffers: BatchNorm statistics are updated once, by the user's forward.
        buffers = {n: b.detach().clone() for n, b in original.named_buffers()}
        with torch.enable_grad():
            out = torch.func.functional_call(original, buffers, tuple(args), dict(kwargs))
        outputs = select_output(out)
        if outputs is None:  # pragma: no cover - the compiled forward gave a tensor
            raise RuntimeError("the eager re-run of the compiled module gave no tensor.")
        return outputs

    return rerun


class OutputRecorder:
    r"""Keeps the outputs of a module's forward passes and their gradients, for the GGN.

    A forward hook records every output computed with grad enabled; a hook on the output
    tensor keeps :math:`\nabla_f \ell` (with its graph under ``create_graph=True``) when the
    backward pass reaches it. The optimiser takes the records at each step and clears them.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(3, 2)
        >>> rec = OutputRecorder()
        >>> rec.attach(model)
        >>> model(torch.ones(4, 3)).pow(2).sum().backward(create_graph=True)
        >>> [r.g_out.requires_grad for r in rec.take()]
        [True]
    """

    def __init__(self) -> None:
        self.records: list[_Record] = []
        self.frozen = False
        self._handles: list[Any] = []
        self.module: nn.Module | None = None  # the attached module (its buffers: _damping)

    def attach(self, module: nn.Module) -> None:
        """Register the forward hook on ``module`` (again: the old hook is removed).

        Example:
            >>> import torch
            >>> rec = OutputRecorder()
            >>> rec.attach(torch.nn.Linear(2, 2))
            >>> rec.attached
            True
        """
        self.detach()
        self._handles.append(module.register_forward_hook(self._forward_hook, with_kwargs=True))
        self.module = module

    def detach(self) -> None:
        """Remove the hooks and forget the records.

        Example:
            >>> import torch
            >>> rec = OutputRecorder()
            >>> rec.attach(torch.nn.Linear(2, 2))
            >>> rec.detach()
            >>> rec.attached
            False
        """
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.records.clear()
        self.module = None

    @property
    def attached(self) -> bool:
        """Whether a module is attached.

        Example:
            >>> OutputRecorder().attached
            False
        """
        return bool(self._handles)

    def _forward_hook(self, module: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        outputs = select_output(out)
        if self.frozen or outputs is None or not outputs.requires_grad:
            return
        compiled = isinstance(getattr(module, "_orig_mod", None), nn.Module)
        record = _Record(outputs, _eager_rerun(module, args, kwargs) if compiled else None)

        def keep(grad: Tensor) -> None:
            if not self.frozen and record.g_out is None:
                record.g_out = grad

        outputs.register_hook(keep)
        self.records.append(record)

    def compiled_record(self, outputs: Tensor | None) -> _Record | None:
        """The record of ``outputs`` if they came from a compiled module.

        Example:
            >>> import torch
            >>> rec = OutputRecorder()
            >>> model = torch.nn.Linear(2, 2)
            >>> rec.attach(model)
            >>> rec.compiled_record(model(torch.ones(1, 2))) is None  # not compiled
            True
        """
        for r in self.records:
            if r.outputs is outputs and r.rerun is not None:
                return r
        return None

    def last_outputs(self, since: int) -> Tensor | None:
        """The outputs of the last forward pass recorded after the first ``since`` records.

        Example:
            >>> import torch
            >>> rec = OutputRecorder()
            >>> model = torch.nn.Linear(2, 2)
            >>> rec.attach(model)
            >>> out = model(torch.ones(1, 2))
            >>> rec.last_outputs(0) is out, rec.last_outputs(1)
            (True, None)
        """
        return self.records[-1].outputs if len(self.records) > since else None

    def take(self) -> list[_Record]:
        """The records whose gradient arrived; all records are forgotten.

        Example:
            >>> import torch
            >>> rec = OutputRecorder()
            >>> model = torch.nn.Linear(2, 2)
            >>> rec.attach(model)
            >>> _ = model(torch.ones(1, 2))  # a forward pass without backward
            >>> rec.take(), rec.records
            ([], [])
        """
        done = [r for r in self.records if r.g_out is not None]
        self.records = []
        return done


class BackwardGraph(NamedTuple):
    """What a backward pass left behind: the parameters it reached and their gradients.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> (w**3).sum().backward(create_graph=True)
        >>> graph = gradients_with_graph([w])
        >>> graph.index, graph.hessian([w], scale=2.0)([torch.ones(2)])  # diag(6 w) / 2
        ([0], [tensor([3., 6.])])
    """

    index: list[int]
    grads: list[Tensor]

    def hessian(self, params: Sequence[Tensor], scale: float) -> BatchedProduct:
        """``v -> H v`` through the gradients' graph (divided by a loss scale).

        Example:
            >>> import torch
            >>> w = torch.tensor([1.0], requires_grad=True)
            >>> (w**2).sum().backward(create_graph=True)
            >>> BackwardGraph([0], [w.grad]).hessian([w], 1.0)([torch.ones(1)])
            [tensor([2.])]
        """
        product = hessian_of_gradients(self.grads, params)
        return product if scale == 1.0 else _scaled(product, scale)

    @staticmethod
    def ggn(records: list[_Record], params: Sequence[Tensor], scale: float) -> BatchedProduct:
        """``v -> sum_k J_k^T H_k J_k v`` over the recorded forward passes.

        Example:
            >>> import torch
            >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
            >>> rec = OutputRecorder()
            >>> model = torch.nn.Identity()
            >>> rec.attach(model)
            >>> for _ in range(2):  # two micro-batches: the GGN (2 I each) adds up
            ...     (model(w) ** 2).sum().backward(create_graph=True)
            >>> BackwardGraph.ggn(rec.take(), [w], 1.0)([torch.ones(2)])
            [tensor([4., 4.])]
        """
        applies = [
            gauss_newton_apply(r.jacobian_outputs(), params, _output_hessian(r)) for r in records
        ]

        def apply(vs: Sequence[Tensor], batch: int | None) -> list[Tensor]:
            parts = [a(vs, batch) for a in applies]
            return [sum(ts[1:], ts[0]) for ts in zip(*parts, strict=True)]  # type: ignore[misc]

        product = BatchedProduct(apply)
        return product if scale == 1.0 else _scaled(product, scale)


def _output_hessian(record: _Record) -> Any:
    g_out, outputs = record.g_out, record.outputs

    def h_out(u: Tensor, batched: bool = False) -> Tensor:
        if not g_out.requires_grad:  # a loss linear in the outputs
            return torch.zeros_like(u)
        (hu,) = torch.autograd.grad(
            g_out, outputs, grad_outputs=u, retain_graph=True, is_grads_batched=batched
        )
        return hu

    return h_out


def compiled_ggn(
    loss: Tensor, record: _Record, params: Sequence[Tensor]
) -> tuple[list[Tensor], BatchedProduct]:
    r"""Gradient and GGN for outputs of a compiled module (closure protocol).

    The gradient is one backward pass through the compiled graph; :math:`H_\ell` comes from
    the (eager) loss on the compiled outputs and :math:`J` from an eager re-run of the module.

    Example:
        >>> import torch
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> out = 3 * w
        >>> record = _Record(out, rerun=lambda: 3 * w)  # as if compiled: J from the re-run
        >>> grads, product = compiled_ggn((out**2).sum(), record, [w])
        >>> grads[0].tolist(), product([torch.tensor([1.0, 0.0])])[0].tolist()
        ([18.0, 36.0], [18.0, 0.0])
    """
    outputs = record.outputs
    (g_out,) = torch.autograd.grad(loss, outputs, create_graph=True)
    full = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(full, params, strict=True)]
    record.g_out = g_out
    apply = gauss_newton_apply(record.jacobian_outputs(), params, _output_hessian(record))
    return grads, BatchedProduct(apply)


def is_compiled_double_backward(err: BaseException) -> bool:
    """Whether ``err`` is aot_autograd refusing to differentiate a compiled graph twice.

    Example:
        >>> err = RuntimeError("aot_autograd does not currently support double backward")
        >>> is_compiled_double_backward(err)
        True
    """
    return "does not currently support double backward" in str(err)


def _scaled(product: BatchedProduct, scale: float) -> BatchedProduct:
    inner = product._apply
    return BatchedProduct(lambda vs, batch: [t / scale for t in inner(vs, batch)])


def gradients_with_graph(params: Sequence[Tensor]) -> BackwardGraph | None:
    """The parameters with a gradient, if any ``p.grad`` carries a graph; else None.

    A gradient without a graph among them (e.g. of a parameter the loss is linear in) gives
    zero Hessian products.

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> (w**2).sum().backward()
        >>> gradients_with_graph([w]) is None  # a plain backward leaves no graph
        True
    """
    index = [i for i, p in enumerate(params) if p.requires_grad and p.grad is not None]
    if not any(params[i].grad.requires_grad for i in index):  # type: ignore[union-attr]
        return None
    return BackwardGraph(index, [params[i].grad for i in index])  # type: ignore[misc]


def returned_loss(ret: Any) -> Tensor | None:
    """The loss a closure that ran backward itself returned (Lightning: detached), detached.

    Example:
        >>> import torch
        >>> returned_loss(torch.tensor(2.0)), returned_loss(None)
        (tensor(2.), None)
    """
    if isinstance(ret, (tuple, list)) and ret:
        ret = ret[0]
    if isinstance(ret, Mapping):
        ret = ret.get("loss")
    return ret.detach() if isinstance(ret, Tensor) and ret.numel() == 1 else None


def changed_gradients(
    params: Sequence[Tensor], before: Sequence[tuple[Tensor | None, int]]
) -> bool:
    """Whether a backward pass wrote non-zero gradients since ``before`` was taken.

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> before = [(w.grad, 0)]
        >>> changed = w.sum().backward()
        >>> changed_gradients([w], before)
        True
    """
    for p, (old, version) in zip(params, before, strict=True):
        g = p.grad
        if g is None or (g is old and g._version == version):
            continue
        if g.requires_grad or bool(g.ne(0).any()):
            return True
    return False


def accumulation_steps() -> int:
    """Accelerate's gradient accumulation steps when an ``AcceleratedOptimizer`` calls, else 1.

    Looks a few frames up the stack for ``AcceleratedOptimizer.step``, so that a plain loop in
    a process that also ran Accelerate (its gradient state is process-wide) is not affected.

    Example:
        >>> accumulation_steps()
        1
    """
    state = sys.modules.get("accelerate.state")
    gradient_state = getattr(state, "GradientState", None)
    if gradient_state is None or not gradient_state._shared_state:
        return 1
    frame = sys._getframe(1)
    for _ in range(8):
        if frame is None:
            return 1
        caller = frame.f_locals.get("self")
        if frame.f_code.co_name == "step" and type(caller).__name__ == "AcceleratedOptimizer":
            kwargs = gradient_state._shared_state.get("plugin_kwargs") or {}
            return int(kwargs.get("num_steps", 1))
        frame = frame.f_back
    return 1
