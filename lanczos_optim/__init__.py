"""lanczos-optim: Lanczos curvature for PyTorch.

The engine (:func:`lanczos`, :func:`spectral_density`), curvature operators
(:class:`HessianOperator`, :class:`GGNOperator`) and the Lanczos Newton optimisers.
"""

from lanczos_optim.curvature import (
    CURVATURES,
    BatchedProduct,
    BatchWeights,
    LossFn,
    check_data,
    check_scalar_loss,
    curvature_mode,
    curvature_operator,
    ggn_product,
    hessian_product,
    iterate_batches,
    output_hessian_product,
    select_params,
)
from lanczos_optim.flatten import flatten_tensors, unflatten_vector
from lanczos_optim.krylov import krylov_solve
from lanczos_optim.lanczos import LanczosResult, lanczos
from lanczos_optim.operators import CurvatureOperator, GGNOperator, HessianOperator
from lanczos_optim.optimizers import LanczosNewton, LanczosSaddleFreeNewton
from lanczos_optim.quadrature import SpectralDensity, spectral_density
from lanczos_optim.validation import (
    BN_MODES,
    NUM_PROBES,
    OPTIMIZER_LANCZOS_STEPS,
    PRECISIONS,
    SADDLE_FREE_LANCZOS_STEPS,
    SPECTRUM_LANCZOS_STEPS,
    check_bn_mode,
    check_curvature,
    check_lanczos_steps,
    check_num_probes,
    check_precision,
)

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
    # curvature building blocks (lanczos_optim.curvature)
    "CURVATURES",
    "BatchedProduct",
    "BatchWeights",
    "LossFn",
    "check_data",
    "check_scalar_loss",
    "curvature_mode",
    "curvature_operator",
    "ggn_product",
    "hessian_product",
    "iterate_batches",
    "output_hessian_product",
    "select_params",
    # optimisers
    "krylov_solve",
    "LanczosNewton",
    "LanczosSaddleFreeNewton",
    # helpers
    "flatten_tensors",
    "unflatten_vector",
    # choices: one validator and one default each (lanczos_optim.validation)
    "BN_MODES",
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
