r"""Parameter groups of the Lanczos optimisers: one eigenbasis, per-group ``lr`` and decay.

All groups share one Lanczos eigenbasis (the curvature couples every parameter), so the options
that shape the basis and the solve are shared. ``lr`` and ``weight_decay`` may differ per group:
with :math:`\Lambda` the diagonal of the groups' weight decays and :math:`\eta` their learning
rates, coordinate by coordinate,

.. math::
    g = \nabla L(w) + \Lambda w, \qquad d = (C + \Lambda + \delta I)^{-1} g \ \text{(in the
    Krylov space)}, \qquad w \leftarrow w - \eta \odot d .
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

#: Options that must be equal in every parameter group (they shape the shared basis and solve).
SHARED_OPTIONS = (
    "damping",
    "lanczos_steps",
    "curvature",
    "momentum",
    "krylov_start",
    "update_every",
    "max_step_norm",
    "seed",
    "block_size",
    "basis_dtype",
    "basis_device",
    "adaptive_damping",
    "reuse_complement",
    "warm_start",
    "krylov_tol",
)
#: Options a parameter group may set for itself.
PER_GROUP_OPTIONS = ("lr", "weight_decay")


def check_shared(name: str, groups: Sequence[dict[str, Any]]) -> None:
    """Raise ``ValueError`` when a group differs from the first in an option that is shared.

    Example:
        >>> check_shared("LanczosNewton", [{"damping": 1.0}, {"damping": 1.0}])
        >>> check_shared("LanczosNewton", [{"damping": 1.0}, {"damping": 0.5}])
        Traceback (most recent call last):
        ...
        ValueError: LanczosNewton: parameter group 1 sets damping=0.5 but group 0 has 1.0; ...
    """
    first = groups[0]
    for k, group in enumerate(groups[1:], start=1):
        for key in SHARED_OPTIONS:
            if key in first and group.get(key) != first[key]:
                raise ValueError(
                    f"{name}: parameter group {k} sets {key}={group.get(key)!r} but group 0 has "
                    f"{first[key]!r}; all groups share one eigenbasis, so only "
                    f"{' and '.join(PER_GROUP_OPTIONS)} may differ per group."
                )


def per_coordinate(
    groups: Sequence[dict[str, Any]], key: str, index: Sequence[int], live: Sequence[Tensor]
) -> float | Tensor:
    """The option ``key`` of the live parameters: a float if equal for all, else a flat vector.

    ``index`` numbers the parameters of all groups in order; ``live`` are the parameters at
    those positions.

    Example:
        >>> import torch
        >>> a, b = torch.zeros(2), torch.zeros(1)
        >>> groups = [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.5}]
        >>> per_coordinate(groups, "lr", [0, 1], [a, b])
        tensor([1.0000, 1.0000, 0.5000])
        >>> per_coordinate(groups, "lr", [0], [a])
        1.0
    """
    owner = [float(g[key]) for g in groups for _ in g["params"]]
    values = [owner[i] for i in index]
    if len(set(values)) <= 1:
        return values[0] if values else float(groups[0][key])
    pairs = zip(values, live, strict=True)
    return torch.cat([p.new_full((p.numel(),), v) for v, p in pairs])


def all_params(groups: Sequence[dict[str, Any]]) -> list[Tensor]:
    """The parameters of all groups, in order.

    Example:
        >>> all_params([{"params": [1, 2]}, {"params": [3]}])
        [1, 2, 3]
    """
    return [p for g in groups for p in g["params"]]


def warn_scheduled_momentum(owner: Any, groups: Sequence[dict[str, Any]]) -> None:
    """Warn once when OneCycleLR/CyclicLR (``cycle_momentum=True``) drive the momentum key.

    Those schedulers write ``max_momentum`` into the groups and cycle ``momentum``; the
    optimisers honour it as heavy-ball momentum on the Newton direction, which the user may not
    have meant (the default is no momentum).

    Example:
        >>> import warnings
        >>> class Opt:
        ...     pass
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     for _ in range(2):
        ...         warn_scheduled_momentum(Opt, [{"momentum": 0.9, "max_momentum": 0.95}])
        >>> len(caught)
        1
    """
    if getattr(owner, "_warned_momentum", False) or "max_momentum" not in groups[0]:
        return
    owner._warned_momentum = True
    warnings.warn(
        f"{type(owner).__name__}: a scheduler with cycle_momentum=True (OneCycleLR, CyclicLR) "
        f"drives 'momentum' (now {groups[0]['momentum']}), applied as heavy-ball momentum on "
        "the Newton direction; pass cycle_momentum=False to keep the optimiser's momentum.",
        UserWarning,
        stacklevel=4,
    )
