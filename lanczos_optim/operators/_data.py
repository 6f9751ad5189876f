"""The data the curvature operators read: batches, their checks, and the chosen parameters.

:func:`check_data` accepts one ``(inputs, targets)`` batch or a re-iterable of them,
:func:`iterate_batches` moves each batch to a device and dtype, :func:`select_params` picks the
parameters of a model to differentiate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from lanczos_optim._outputs import inputs_size, is_inputs

Batch = tuple[Tensor, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


def is_batch(obj: object) -> bool:
    """Whether ``obj`` is one ``(inputs, targets)`` pair (inputs a tensor or a dict of them)."""
    return isinstance(obj, (tuple, list)) and len(obj) == 2 and is_inputs(obj[0])


def _to(t: object, device: torch.device, dtype: torch.dtype) -> object:
    """A tensor on ``device``, floating ones cast to ``dtype``; anything else as it is."""
    if not isinstance(t, Tensor):
        return t
    t = t.to(device, non_blocking=True)
    return t.to(dtype) if t.is_floating_point() else t


def _batch_error(i: int, batch: object) -> TypeError:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return TypeError(
            f"The inputs of batch {i} are a {type(batch[0]).__name__}; inputs must be a tensor "
            "(model(inputs)) or a dict of tensors (model(**inputs))."
        )
    return TypeError(
        f"Each batch must be an (inputs, targets) pair of tensors; batch {i} is "
        f"{type(batch).__name__}."
    )


def check_data(data: object) -> Sequence[Batch] | Iterable[Batch]:
    """Accept one ``(inputs, targets)`` batch or a re-iterable of them (list, DataLoader).

    Raises:
        TypeError: If ``data`` is neither, or is a one-shot iterator.
        ValueError: If ``data`` is an empty list or tuple.

    Example:
        >>> import torch
        >>> from lanczos_optim import check_data
        >>> x, y = torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
        >>> len(check_data((x, y))), len(check_data([(x, y), (x, y)]))  # one batch: a list
        (1, 2)
        >>> check_data(x)
        Traceback (most recent call last):
        ...
        TypeError: data must be one (inputs, targets) batch or an iterable of such batches
        (e.g. a DataLoader); got Tensor.
        >>> check_data(iter([(x, y)]))
        Traceback (most recent call last):
        ...
        TypeError: data must be re-iterable (a list of batches or a DataLoader), since every
        product passes over it again; got a one-shot list_iterator.
    """
    if is_batch(data):
        return [tuple(data)]  # type: ignore[list-item]
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be one (inputs, targets) batch or an iterable of such batches "
            f"(e.g. a DataLoader); got {type(data).__name__}."
        )
    if isinstance(data, Iterator):
        raise TypeError(
            "data must be re-iterable (a list of batches or a DataLoader), since every product "
            f"passes over it again; got a one-shot {type(data).__name__}."
        )
    if isinstance(data, (list, tuple)) and len(data) == 0:
        raise ValueError("data is empty; give at least one (inputs, targets) batch.")
    return data  # type: ignore[return-value]


def iterate_batches(
    data: Iterable[object], device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[Tensor, Tensor, int]]:
    """Yield ``(inputs, targets, batch size)`` on ``device``, floating tensors cast to ``dtype``.

    Inputs are a tensor or a dict of tensors (for ``model(**inputs)``). Empty batches are
    skipped.

    Raises:
        TypeError: If a batch is not an ``(inputs, targets)`` pair of tensors.

    Example:
        >>> import torch
        >>> from lanczos_optim import iterate_batches
        >>> x, y = torch.ones(3, 2, dtype=torch.float32), torch.tensor([0, 1, 1])
        >>> data = [(x, y), (x[:0], y[:0])]  # the second batch is empty
        >>> cpu = torch.device("cpu")
        >>> [(xb.dtype, yb.dtype, n) for xb, yb, n in iterate_batches(data, cpu, torch.float64)]
        [(torch.float64, torch.int64, 3)]
    """
    for i, batch in enumerate(data):
        if not is_batch(batch):
            raise _batch_error(i, batch)
        x, y = batch
        if isinstance(x, Mapping):  # keyword inputs: model(**x)
            x = {k: _to(v, device, dtype) for k, v in x.items()}
        else:
            x = _to(x, device, dtype)
        y = _to(y, device, dtype)
        n = inputs_size(x)
        if n:
            yield x, y, n


def select_params(
    model: nn.Module, params: Iterable[Tensor] | None
) -> tuple[list[Tensor], list[str]]:
    """Return the chosen parameters and their names in ``model`` (default: all trainable).

    Example:
        >>> import torch
        >>> from lanczos_optim import select_params
        >>> model = torch.nn.Linear(2, 1).double()
        >>> model.bias.requires_grad = False
        >>> params, names = select_params(model, None)  # the frozen bias is skipped
        >>> names, params[0] is model.weight
        (['weight'], True)
        >>> select_params(model, [model.bias])
        Traceback (most recent call last):
        ...
        ValueError: params[0] (bias) does not require grad.
    """
    named = {id(p): n for n, p in model.named_parameters()}
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    if not chosen:
        raise ValueError("No parameters to differentiate: params is empty or all are frozen.")
    names = []
    for i, p in enumerate(chosen):
        if id(p) not in named:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) is not a parameter of model.")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] ({named[id(p)]}) does not require grad.")
        names.append(named[id(p)])
    if len(set(names)) != len(names):
        raise ValueError("params lists the same parameter twice.")
    return chosen, names
