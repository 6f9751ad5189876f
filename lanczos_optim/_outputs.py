"""Structured model outputs and inputs: picking the tensor the loss takes, dicts of inputs.

Models may return a dict, a tuple or a Hugging Face ``ModelOutput`` (a dict subclass). The
selector ``outputs=`` picks the tensor that the loss takes:

* ``None`` (default): a tensor as it is; a mapping's ``"logits"`` entry when it has one; any
  other structure is passed to the loss unchanged where only the loss needs it (the Hessian
  of a loss other than torch's own) and refused where a tensor is needed (the GGN);
* a key or an index: ``out[outputs]``;
* a function: ``outputs(out)``.

Inputs may be a tensor (``model(inputs)``) or a dict of tensors (``model(**inputs)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

OutputSelector = str | int | Callable[[Any], Any] | None


def check_selector(outputs: object) -> OutputSelector:
    """Return ``outputs`` if it is a valid selector, else raise ``TypeError``."""
    if outputs is None or callable(outputs) or isinstance(outputs, str):
        return outputs  # type: ignore[return-value]
    if isinstance(outputs, int) and not isinstance(outputs, bool):
        return outputs
    raise TypeError(
        f"outputs must be None, a key, an index or a function of the model's output; "
        f"got {type(outputs).__name__}."
    )


def _describe(out: object) -> str:
    if isinstance(out, Mapping):
        return f"{type(out).__name__} with keys {list(out)}"
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of length {len(out)}"
    return type(out).__name__


#: How to pick the tensor, told by the operators and spectra (which take ``outputs=``).
_SELECT_FIX = "; pass outputs= a key, an index or a function that picks it (e.g. outputs='logits')"


def select_outputs(
    out: object, selector: OutputSelector, *, need_tensor: bool, who: str, fix: str = _SELECT_FIX
) -> Any:
    """The part of the model's output ``out`` that the loss takes (see the module docstring).

    ``fix`` ends the error when a tensor is needed and none is found (the optimisers, which
    take no ``outputs=``, give ``""`` and say the fix themselves).

    Raises:
        ValueError: If ``selector`` selects nothing in ``out``.
        TypeError: If a tensor is needed and ``out`` is a structure without ``"logits"``.
    """
    if selector is None:
        if isinstance(out, Mapping) and "logits" in out:
            out = out["logits"]
    elif callable(selector):
        out = selector(out)
    else:
        try:
            out = out[selector]  # type: ignore[index]
        except (KeyError, IndexError, TypeError) as err:
            raise ValueError(
                f"outputs={selector!r} selects nothing in the model's output, a {_describe(out)}."
            ) from err
    if need_tensor and not isinstance(out, Tensor):
        raise TypeError(
            f"{who} needs the output tensor the loss takes, but the model returned a "
            f"{_describe(out)}{fix}."
        )
    return out


def takes_tensor(loss_fn: object) -> bool:
    """Whether ``loss_fn`` is one of torch's own losses, which take the output tensor."""
    return isinstance(loss_fn, nn.Module) and type(loss_fn).__module__ == "torch.nn.modules.loss"


def is_inputs(obj: object) -> bool:
    """Whether ``obj`` can be a batch's inputs: a tensor, or a non-empty dict of tensors."""
    if isinstance(obj, Tensor):
        return True
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and any(isinstance(v, Tensor) for v in obj.values())
    )


def inputs_size(x: Tensor | Mapping[str, Any]) -> int:
    """Batch size of tensor inputs (dim 0), or of the first tensor of dict inputs."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.ndim else 1
    first = next(v for v in x.values() if isinstance(v, Tensor))
    return int(first.shape[0]) if first.ndim else 1
