"""The gradient and the curvature product of a step, from the closure's graph or ``p.grad``'s.

:class:`GradientGraph` is a mixin of the Lanczos Newton optimisers: it reads the autograd graph
(without running it) to find the parameters the loss reaches, differentiates the closure's loss,
and builds the GGN or Hessian product when a fresh Lanczos basis is due.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lanczos_optim._graph_products import BatchedProduct, ggn_product, hessian_product
from lanczos_optim.optimizers import _amp, _protocols

_FREED_GRAPH = "backward through the graph a second time"


def _graph_leaves(root: Any, stop: Any = None) -> tuple[set[int], bool]:
    """Ids of the leaf tensors reached from autograd node ``root``, not walking past ``stop``.

    Returns the ids and whether ``stop`` was reached. Only reads the graph; computes nothing.
    """
    found: set[int] = set()
    seen: set[Any] = set()
    stack = [root]
    reached_stop = False
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if stop is not None and node is stop:
            reached_stop = True
            continue
        variable = getattr(node, "variable", None)
        if variable is not None:
            found.add(id(variable))
            continue
        stack.extend(fn for fn, _ in node.next_functions)
    return found, reached_stop


class GradientGraph:
    """Mixin: the step's gradient and curvature product (uses ``_params``, ``_recorder``)."""

    def _live_parameters(
        self, loss: Tensor, outputs: Tensor | None, use_ggn: bool
    ) -> tuple[list[int], set[int], Any]:
        """Indices of the parameters that receive a gradient, and those the loss reaches directly.

        Found by reading (not running) the graph; "directly" means not via the outputs. The
        third item is the autograd edge the outputs were cast from (``out.float()`` returned,
        the loss computed from ``out``; bf16 autocast), else None.
        """
        stop = outputs.grad_fn if use_ggn and outputs is not None else None
        direct, reached_outputs = _graph_leaves(loss.grad_fn, stop)
        source = _amp.cast_source(outputs) if stop is not None and not reached_outputs else None
        if source is not None:
            direct, reached_outputs = _graph_leaves(loss.grad_fn, source.node)
            source = source if reached_outputs else None
        via_outputs: set[int] = set()
        if use_ggn:
            if stop is not None and not reached_outputs:
                raise self._protocol_error(
                    "the loss was not computed from the outputs the closure returned."
                    + _amp.cast_hint(outputs)  # type: ignore[arg-type]
                )
            via_outputs = _graph_leaves(stop)[0] if stop is not None else {id(outputs)}
        reached = direct | via_outputs
        index = [i for i, p in enumerate(self._params) if p.requires_grad and id(p) in reached]
        return index, direct, source

    def _differentiate(
        self,
        loss: Tensor,
        outputs: Tensor | None,
        live: list[Tensor],
        direct: set[int],
        refresh: bool,
        use_ggn: bool,
        source: Any = None,
    ) -> tuple[list[Tensor], BatchedProduct | None]:
        """The gradient of ``live``, and the curvature product when a fresh basis is due."""
        product: BatchedProduct | None = None
        try:
            with torch.enable_grad():
                compiled = self._recorder.compiled_record(outputs) if use_ggn else None
                if refresh and compiled is not None:  # torch.compile: eager Jacobian products
                    grads, product = _protocols.compiled_ggn(loss, compiled, live)
                elif refresh and source is not None:  # outputs cast after the loss (autocast)
                    grads, product = _amp.cast_ggn(loss, outputs, source, live)  # type: ignore[arg-type]
                elif refresh and use_ggn:
                    grads, product = ggn_product(loss, outputs, live)  # type: ignore[arg-type]
                    if any(id(p) in direct for p in live):
                        # The loss also depends on parameters directly (not via the outputs),
                        # e.g. a penalty in the closure: take its full gradient.
                        full = torch.autograd.grad(loss, live, retain_graph=True, allow_unused=True)
                        grads = [
                            g if g is not None else torch.zeros_like(p)
                            for g, p in zip(full, live, strict=True)
                        ]
                elif refresh:
                    grads, product = hessian_product(loss, live)
                else:
                    full = torch.autograd.grad(loss, live, allow_unused=True)
                    grads = [
                        torch.zeros_like(p) if g is None else g
                        for g, p in zip(full, live, strict=True)
                    ]
        except RuntimeError as err:
            if _FREED_GRAPH in str(err):
                raise self._protocol_error("the closure already called backward().") from err
            raise
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients (e.g. "
                "nn.Embedding(sparse=True)); use dense gradients."
            )
        return grads, product

    def _from_backward(
        self,
        backward: _protocols.BackwardGraph,
        live: list[Tensor],
        refresh: bool,
        use_ggn: bool,
        scale: float,
    ) -> tuple[list[Tensor], BatchedProduct | None]:
        """The gradient in ``p.grad`` and the curvature from its graph (backward protocol)."""
        grads = [g.detach() if scale == 1.0 else g.detach() / scale for g in backward.grads]
        if any(g.is_sparse for g in grads):
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients (e.g. "
                "nn.Embedding(sparse=True)); use dense gradients."
            )
        if not refresh:
            return grads, None
        if not use_ggn:
            return grads, backward.hessian(live, scale)
        records = self._recorder.take()
        if not records:
            raise RuntimeError(
                f"{type(self).__name__}: curvature='ggn' in the backward protocol needs the model "
                "outputs: call optimizer.attach(model) once, or use curvature='hessian'."
            )
        return grads, backward.ggn(records, live, scale)
