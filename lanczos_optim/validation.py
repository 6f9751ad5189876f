r"""One validator and one default for each choice shared by the engine, the optimisers and tools.

Every function, class and command that takes one of these choices validates it here, so that a
bad value gets the same one-line message wherever it is given:

* :func:`check_lanczos_steps` (defaults :data:`OPTIMIZER_LANCZOS_STEPS` and
  :data:`SPECTRUM_LANCZOS_STEPS`): an int :math:`m \ge 1`, **capped at the dimension** :math:`P`.
  Capping is exact: the Krylov space :math:`\mathcal{K}_m(A, v)` of a :math:`P`-dimensional
  operator stops growing at :math:`m = P`, where Lanczos has found the whole spectrum (or broke
  down earlier on an invariant subspace), so more steps could not change the result.
* :func:`check_num_probes` (default :data:`NUM_PROBES`): an int :math:`d \ge 1`.
* :func:`check_curvature` (:data:`CURVATURES`): ``"hessian"`` or ``"ggn"``.
* :func:`check_bn_mode` (:data:`BN_MODES`) and :func:`check_precision` (:data:`PRECISIONS`).

Example:
    >>> from lanczos_optim.validation import check_curvature, check_lanczos_steps
    >>> check_lanczos_steps(100, dim=17)  # more steps than dimensions: capped, exact
    17
    >>> check_curvature("ggn")
    'ggn'
    >>> check_lanczos_steps(0)
    Traceback (most recent call last):
    ...
    ValueError: Invalid lanczos_steps value: 0 (must be an int >= 1)
"""

from __future__ import annotations

from numbers import Integral

from lanczos_optim._model_state import BN_MODES, check_bn_mode
from lanczos_optim._precision import PRECISIONS, check_precision

__all__ = [
    "BN_MODES",
    "CURVATURES",
    "NUM_PROBES",
    "OPTIMIZER_LANCZOS_STEPS",
    "SADDLE_FREE_LANCZOS_STEPS",
    "PRECISIONS",
    "SPECTRUM_LANCZOS_STEPS",
    "check_bn_mode",
    "check_curvature",
    "check_lanczos_steps",
    "check_num_probes",
    "check_precision",
]

#: Curvature matrices: the Hessian and the generalised Gauss-Newton matrix.
CURVATURES = ("hessian", "ggn")
#: Default Lanczos steps per LanczosNewton step (curvature products per step): 5 reached the
#: training loss of 20 within 1 % at a third of the cost (``benchmarks/krylov_size.py``).
OPTIMIZER_LANCZOS_STEPS = 5
#: Default Lanczos steps per LanczosSaddleFreeNewton step: its random start needs more.
SADDLE_FREE_LANCZOS_STEPS = 20
#: Default Lanczos steps per probe of a spectrum estimate.
SPECTRUM_LANCZOS_STEPS = 100
#: Default number of random probes of a stochastic estimate (the paper uses one, section 8).
NUM_PROBES = 1


def _positive_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def check_lanczos_steps(
    value: object, dim: int | None = None, *, name: str = "lanczos_steps"
) -> int:
    """Return the number of Lanczos steps to run: ``value``, capped at ``dim`` when given.

    Args:
        value: The steps asked for; an int (or NumPy integer) ``>= 1``.
        dim: The operator's dimension :math:`P`; more steps than :math:`P` are capped at
            :math:`P` (exact, see the module docstring).
        name: The argument's name in the error message (``num_steps`` for the engine).

    Raises:
        ValueError: If ``value`` is not an int ``>= 1`` (bools are refused).

    Example:
        >>> check_lanczos_steps(30), check_lanczos_steps(30, dim=10)
        (30, 10)
    """
    if not _positive_int(value):
        raise ValueError(f"Invalid {name} value: {value!r} (must be an int >= 1)")
    steps = int(value)  # type: ignore[call-overload]
    return steps if dim is None else min(steps, int(dim))


def check_num_probes(value: object) -> int:
    """Return ``value`` as the number of random probes if it is an int ``>= 1``.

    Raises:
        ValueError: Otherwise (bools are refused).

    Example:
        >>> check_num_probes(3)
        3
    """
    if not _positive_int(value):
        raise ValueError(f"Invalid num_probes value: {value!r} (must be an int >= 1)")
    return int(value)  # type: ignore[call-overload]


def check_curvature(value: object) -> str:
    """Return ``value`` if it is one of :data:`CURVATURES`, else raise naming the allowed values.

    Raises:
        ValueError: On any other value.

    Example:
        >>> check_curvature("fisher")
        Traceback (most recent call last):
        ...
        ValueError: Invalid curvature: 'fisher'; expected one of ('hessian', 'ggn')
    """
    if value not in CURVATURES:
        raise ValueError(f"Invalid curvature: {value!r}; expected one of {CURVATURES}")
    return value  # type: ignore[return-value]
