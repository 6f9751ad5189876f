"""Analyses of a trained network's curvature: spectra, statistics, landscapes, diagonals.

Also the random-matrix laws the spectra are compared with. Everything here is built on the
public API of :mod:`lanczos_optim`; BackPACK is imported only by the diagonal comparison.
"""

from diagnostics.analysis.compare import compare_to_spectrum
from diagnostics.analysis.diagonal import (
    KINDS,
    UnsupportedModelError,
    diagonal_approximations,
    hutchinson_diagonal,
)
from diagnostics.analysis.landscape import Landscape, build_loss_landscape, select_directions
from diagnostics.analysis.random_matrices import (
    marchenko_pastur,
    marchenko_pastur_atom,
    marchenko_pastur_cdf,
    marchenko_pastur_density,
    marchenko_pastur_support,
    semicircle_cdf,
    semicircle_density,
    synthetic_spectrum,
    wigner,
)
from diagnostics.analysis.spectrum import Spectrum, compute_eigenspectrum
from diagnostics.analysis.statistics import LossStatistics, loss_statistics

__all__ = [
    # spectra
    "Spectrum",
    "compute_eigenspectrum",
    # statistics
    "LossStatistics",
    "loss_statistics",
    # landscapes
    "Landscape",
    "build_loss_landscape",
    "select_directions",
    # diagonal approximations
    "KINDS",
    "UnsupportedModelError",
    "compare_to_spectrum",
    "diagonal_approximations",
    "hutchinson_diagonal",
    # random matrices
    "marchenko_pastur",
    "marchenko_pastur_atom",
    "marchenko_pastur_cdf",
    "marchenko_pastur_density",
    "marchenko_pastur_support",
    "semicircle_cdf",
    "semicircle_density",
    "synthetic_spectrum",
    "wigner",
]
