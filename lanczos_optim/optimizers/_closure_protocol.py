"""Running a step's closure: the closure protocol, its errors, the backward protocol's checks.

:class:`ClosureProtocol` is a mixin of the Lanczos Newton optimisers: it runs the closure in grad
mode and tells apart the closure protocol (the closure returns the loss, or ``(loss, outputs)``,
still attached to its graph) from the backward protocol (``loss.backward(create_graph=True)``
before ``step()``), refusing what neither can do (a scaled loss, Accelerate's accumulation).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lanczos_optim._outputs import select_outputs
from lanczos_optim.optimizers import _amp, _protocols

Closure = Callable[[], Any]


class Evaluated(NamedTuple):
    """What phase 1 found: the loss, the outputs, the backward graph, when the closure ended."""

    loss: Tensor | None
    outputs: Tensor | None
    backward: _protocols.BackwardGraph | None
    t_closure: float


class ClosureProtocol:
    """Mixin: run and read the closure (uses the optimiser's ``_params`` and ``_recorder``)."""

    def _protocol_error(self, what: str) -> RuntimeError:
        name = type(self).__name__
        return RuntimeError(
            f"{name}.step(closure): {what} The closure must only run the forward pass and "
            "return the loss still attached to its graph (or (loss, outputs) with the model "
            f"outputs for curvature='ggn'); {name} differentiates it and writes p.grad itself."
        )

    def _parse(self, ret: object, curvature: str) -> tuple[Tensor, Tensor | None]:
        outputs = None
        if isinstance(ret, (tuple, list)):
            if len(ret) != 2:
                raise self._protocol_error(
                    f"the closure returned a {type(ret).__name__} of length {len(ret)}."
                )
            ret, outputs = ret
        if not isinstance(ret, Tensor) or ret.ndim != 0 or not ret.is_floating_point():
            got = (
                f"a tensor of shape {tuple(ret.shape)}"
                if isinstance(ret, Tensor)
                else type(ret).__name__
            )
            raise self._protocol_error(f"the loss must be a scalar tensor; got {got}.")
        if not ret.requires_grad or ret.grad_fn is None:
            raise self._protocol_error(
                "the loss has no autograd graph (was it detached, a .item(), or computed under "
                "torch.no_grad()?)."
            )
        if curvature == "ggn":
            if outputs is not None and not isinstance(outputs, Tensor):
                outputs = self._select_outputs(outputs)
            if outputs is None:
                raise self._protocol_error(
                    "curvature='ggn' needs the model outputs, but the closure returned only "
                    "the loss: return (loss, outputs)."
                )
            if not isinstance(outputs, Tensor) or not outputs.requires_grad:
                raise self._protocol_error(
                    "the outputs must be the model's output tensor, attached to the graph of "
                    "the loss."
                )
        return ret, outputs

    def _select_outputs(self, outputs: object) -> Tensor:
        """The logits of dict-like outputs (a ``ModelOutput``); other structures are refused."""
        try:
            return select_outputs(outputs, None, need_tensor=True, who=type(self).__name__, fix="")
        except TypeError as err:
            raise self._protocol_error(
                f"{err} Return (loss, logits) with the tensor the loss was computed from."
            ) from err

    def _run_closure(self, closure: Closure | None, curvature: str) -> Evaluated:
        """Run the closure in grad mode; return its loss, outputs, backward graph and end time.

        The backward protocol (no closure, or a closure that ran ``backward(create_graph=True)``)
        gives the gradients with their graph instead of outputs. Raises the protocol errors.
        """
        params = self._params
        if closure is None:
            backward = _protocols.gradients_with_graph(params)
            if backward is None:
                raise self._no_graph_error(any(p.grad is not None for p in params))
            return Evaluated(None, None, backward, time.perf_counter())
        self._refuse_closure_with(curvature)
        candidates = [p for p in params if p.requires_grad]
        before = [(p.grad, p.grad._version if p.grad is not None else 0) for p in candidates]
        seen = len(self._recorder.records)
        self._in_closure = True
        try:
            with torch.enable_grad():
                ret = closure()
        finally:
            self._in_closure = False
        t_closure = time.perf_counter()
        if _protocols.changed_gradients(candidates, before):
            backward = _protocols.gradients_with_graph(params)
            if backward is None:
                raise self._protocol_error(
                    "the closure already called backward() without create_graph=True: "
                    f"{_protocols.CREATE_GRAPH_FIX}."
                )
            return Evaluated(_protocols.returned_loss(ret), None, backward, t_closure)
        recorded = self._recorder.last_outputs(seen)
        if isinstance(ret, Tensor) and curvature == "ggn" and recorded is not None:
            ret = (ret, recorded)  # the outputs of the attached model (attach())
        loss, outputs = self._parse(ret, curvature)
        scale = _amp.scaler_scale_of(loss)
        if scale is not None:
            raise self._protocol_error(
                f"the closure returned a loss scaled by a GradScaler (scale {scale}): return the "
                f"unscaled loss ({_amp.BF16_HINT})."
            )
        return Evaluated(loss, outputs, None, t_closure)

    def _refuse_closure_with(self, curvature: str) -> None:
        """Refuse what the closure protocol cannot do: GradScaler, accumulation (Accelerate)."""
        name = type(self).__name__
        if _amp.grad_scaler_state(self) is not None:
            raise RuntimeError(
                f"{name}.step(closure) under a GradScaler: {_amp.BF16_HINT}; or use the backward "
                "protocol (scaler.scale(loss).backward(create_graph=True); scaler.step(opt))."
            )
        steps = _protocols.accumulation_steps()
        if steps > 1:
            raise RuntimeError(
                f"{name}.step(closure) with Accelerate's gradient_accumulation_steps={steps}: "
                "the skipped batches never reach the closure; use accelerator.backward(loss, "
                "create_graph=True) and optimizer.step() without a closure."
            )

    def _no_graph_error(self, has_grads: bool) -> RuntimeError:
        name = type(self).__name__
        if has_grads:
            return RuntimeError(
                f"{name}.step() found gradients without a graph, so no curvature: "
                f"{_protocols.CREATE_GRAPH_FIX}."
            )
        return RuntimeError(
            f"{name}.step() requires a closure that runs the forward pass and returns the loss "
            "(or (loss, outputs) for curvature='ggn'), e.g. optimizer.step(closure), or "
            "gradients from loss.backward(create_graph=True) before step()."
        )

    def _loss_scale(self, backward: _protocols.BackwardGraph | None) -> float | None:
        """The GradScaler's scale in the backward protocol (1 without); None: skip (inf found)."""
        scaler = _amp.grad_scaler_state(self)
        if scaler is None or backward is None:
            return 1.0
        grad_scale, found_inf = scaler
        if grad_scale is None:
            raise RuntimeError(
                f"{type(self).__name__}: scaler.unscale_(optimizer) before step() unscales p.grad "
                f"but not its graph; clip with max_step_norm instead, or {_amp.BF16_HINT}."
            )
        if found_inf is not None and float(found_inf) > 0:
            return None
        return float(grad_scale)
