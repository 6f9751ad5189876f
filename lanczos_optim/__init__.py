"""lanczos-optim: Lanczos curvature for PyTorch.

The engine (:func:`lanczos`, :func:`spectral_density`), curvature operators
(:class:`HessianOperator`, :class:`GGNOperator`) and the Lanczos Newton optimisers.
"""

from lanczos_optim.flatten import flatten_tensors, unflatten_vector
from lanczos_optim.krylov import krylov_solve
from lanczos_optim.lanczos import LanczosResult, lanczos
from lanczos_optim.operators import CurvatureOperator, GGNOperator, HessianOperator
from lanczos_optim.optimizers import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim.quadrature import SpectralDensity, spectral_density

__version__ = "0.1.0"

__all__ = [
    # engine
    "LanczosResult",
    "lanczos",
    "SpectralDensity",
    "spectral_density",
    # operators
    "CurvatureOperator",
    "GGNOperator",
    "HessianOperator",
    # optimisers
    "krylov_solve",
    "LanczosNewton",
    "LanczosSaddleFreeNewton",
    # helpers
    "flatten_tensors",
    "unflatten_vector",
]
