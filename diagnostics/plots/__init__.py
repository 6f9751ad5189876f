"""Every figure of the package: spectra, densities, landscapes, training curves, statistics.

Figures are drawn on matplotlib's Agg canvas (no display needed) and, when given a path,
written atomically.
"""

from diagnostics.plots.figures import (
    plot_density,
    plot_landscape,
    plot_landscape_2d,
    plot_runs,
    plot_spectrum,
    plot_statistics,
    plot_training_curves,
    rows_to_history,
    spectrum_title,
)

__all__ = [
    "plot_density",
    "plot_landscape",
    "plot_landscape_2d",
    "plot_runs",
    "plot_spectrum",
    "plot_statistics",
    "plot_training_curves",
    "rows_to_history",
    "spectrum_title",
]
