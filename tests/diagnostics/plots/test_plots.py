"""The data behind each figure of diagnostics.plots.figures (not its pixels)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import QuadMesh
from matplotlib.container import BarContainer, StemContainer
from matplotlib.figure import Figure

from diagnostics.analysis.landscape import Landscape
from diagnostics.analysis.spectrum import Spectrum
from diagnostics.plots.figures import (
    plot_density,
    plot_landscape,
    plot_landscape_2d,
    plot_spectrum,
    plot_training_curves,
)
from lanczos_optim import lanczos, spectral_density

RNG = np.random.default_rng(0)


def _stems(fig: Figure) -> StemContainer:
    (stems,) = [c for c in fig.axes[0].containers if isinstance(c, StemContainer)]
    return stems


def _bars(fig: Figure) -> list[BarContainer]:
    return [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]


@pytest.fixture
def spectrum() -> Spectrum:
    a = torch.diag(torch.tensor([-1.0, 0.0, 0.5, 2.0, 9.0], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    runs = [lanczos(a, 5, generator=gen), lanczos(a, 3, generator=gen)]
    return Spectrum.from_lanczos(runs, num_params=5)


def test_spectrum_stems_sum_to_one(spectrum: Spectrum) -> None:
    fig = plot_spectrum(spectrum)
    stems = _stems(fig)
    np.testing.assert_allclose(stems.markerline.get_xdata(), spectrum.ritz_values)
    np.testing.assert_allclose(stems.markerline.get_ydata(), spectrum.weights)
    assert stems.markerline.get_ydata().sum() == pytest.approx(1.0, abs=1e-12)
    assert len(stems.stemlines.get_segments()) == spectrum.ritz_values.size
    assert _bars(fig) == []


@pytest.mark.parametrize("kind", ["pair", "tensors", "spectral_density"])
def test_spectrum_inputs_are_normalised(kind: str) -> None:
    nodes, weights = np.array([0.0, 1.0, 4.0]), np.array([2.0, 1.0, 1.0])
    if kind == "pair":
        arg = (nodes, weights)
        expected = weights / 4
    elif kind == "tensors":
        arg = (torch.from_numpy(nodes), torch.from_numpy(weights))
        expected = weights / 4
    else:
        a = torch.diag(torch.arange(6.0, dtype=torch.float64))
        arg = spectral_density(a, 4, num_probes=2, generator=torch.Generator().manual_seed(1))
        nodes, expected = arg.nodes.numpy(), arg.weights.numpy()
    stems = _stems(plot_spectrum(arg))
    np.testing.assert_allclose(stems.markerline.get_xdata(), nodes)
    np.testing.assert_allclose(stems.markerline.get_ydata(), expected, rtol=1e-12)


def test_spectrum_over_exact_and_diagonal_histograms(spectrum: Spectrum) -> None:
    exact, diag = RNG.normal(size=200), RNG.uniform(-1, 9, size=50)
    fig = plot_spectrum(spectrum, exact=exact, diagonal=diag, bins=20, log=True)
    bars = _bars(fig)
    labels = [b.patches[0].get_label() for b in bars]
    assert labels == ["eigenvalues (histogram)", "diagonal (histogram)"]
    edges = np.histogram_bin_edges(np.concatenate([spectrum.ritz_values, exact, diag]), 20)
    for container, values in zip(bars, (exact, diag), strict=True):
        heights = np.array([p.get_height() for p in container.patches])
        lefts = np.array([p.get_x() for p in container.patches])
        np.testing.assert_allclose(lefts, edges[:-1])  # shared bins
        np.testing.assert_allclose(heights, np.histogram(values, edges)[0] / values.size)
        assert heights.sum() == pytest.approx(1.0)
    assert _stems(fig).markerline.get_ydata().sum() == pytest.approx(1.0)
    assert fig.axes[0].get_yscale() == "log"


def test_density_data() -> None:
    x = np.linspace(-2, 2, 81)
    y = np.sqrt(np.clip(4 - x**2, 0, None)) / (2 * np.pi)
    exact = RNG.uniform(-2, 2, size=300)
    fig = plot_density(x, y, exact=exact, bins=16, label="semicircle")
    (line,) = fig.axes[0].lines
    np.testing.assert_array_equal(line.get_xdata(), x)
    np.testing.assert_array_equal(line.get_ydata(), y)
    assert line.get_label() == "semicircle"
    (bars,) = _bars(fig)
    area = sum(p.get_height() * p.get_width() for p in bars.patches)
    assert area == pytest.approx(1.0)


def _landscape(has_test: bool, classification: bool, plane: bool) -> Landscape:
    k, n = 3, 7
    t = np.linspace(-1, 1, n)
    curv = np.array([2.0, 0.5, -0.3])
    quad = 0.4 + np.outer([0.1, -0.2, 0.0], t) + 0.5 * np.outer(curv, t**2)
    nan = np.full((k, n), np.nan)
    acc = RNG.uniform(0.5, 1, (k, n)) if classification else nan
    arrays = {
        "t": t,
        "labels": np.array(["θ = 2", "θ = 0.5", "θ = -0.3"]),
        "loss0": np.float64(0.4),
        "train_loss": quad + 0.05 * np.abs(t) ** 3,
        "train_acc": acc,
        "test_loss": quad + 0.2 if has_test else nan,
        "test_acc": acc - 0.1 if has_test else nan,
        "quadratic": quad,
        "slope": np.array([0.1, -0.2, 0.0]),
        "curvature": curv,
        "ritz_value": curv,
        "direction_index": np.arange(3.0),
        "direction_norm": np.ones(k),
    }
    if plane:
        a, b = np.meshgrid(t, t, indexing="ij")
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "quadratic"):
            arrays[f"plane_{name}"] = 0.4 + a**2 + 0.3 * b**2 + (0.1 * a * b if "q" in name else 0)
    meta = {"num_test_samples": 9 if has_test else 0, "plane": [0, 2] if plane else None}
    return Landscape(arrays, meta)


@pytest.mark.parametrize(
    ("has_test", "classification", "titles"),
    [
        (True, True, ["train loss", "test loss", "train accuracy", "test accuracy"]),
        (False, True, ["train loss", "train accuracy"]),
        (True, False, ["train loss", "test loss"]),
        (False, False, ["train loss"]),
    ],
)
def test_landscape_lines_equal_arrays(has_test: bool, classification: bool, titles: list) -> None:
    ls = _landscape(has_test, classification, plane=False)
    fig = plot_landscape(ls)
    assert [ax.get_title() for ax in fig.axes] == titles
    keys = {"train loss": "train_loss", "test loss": "test_loss"}
    keys |= {"train accuracy": "train_acc", "test accuracy": "test_acc"}
    for ax in fig.axes:
        lines = {line.get_label(): line for line in ax.lines}
        for i, label in enumerate(ls.labels):
            np.testing.assert_array_equal(lines[label].get_xdata(), ls.t)
            np.testing.assert_array_equal(
                lines[label].get_ydata(), getattr(ls, keys[ax.get_title()])[i]
            )
            quad = lines.get(f"_quadratic {label}")
            if ax.get_title() == "train loss":
                np.testing.assert_array_equal(quad.get_ydata(), ls.quadratic[i])
            else:
                assert quad is None
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [*ls.labels, "quadratic model"]
    no_quad = plot_landscape(ls, quadratic=False)
    assert not any(line.get_label().startswith("_quadratic") for line in no_quad.axes[0].lines)


@pytest.mark.parametrize("which", ["train_loss", "test_acc"])
def test_landscape_2d_mesh_equals_plane(which: str) -> None:
    ls = _landscape(True, True, plane=True)
    fig = plot_landscape_2d(ls, which=which)
    (mesh,) = [c for c in fig.axes[0].collections if isinstance(c, QuadMesh)]
    grid = getattr(ls, f"plane_{which}")
    np.testing.assert_array_equal(np.asarray(mesh.get_array()).reshape(grid.shape), grid)
    assert fig.axes[0].get_ylabel() == "a along θ = 2"
    assert fig.axes[0].get_xlabel() == "b along θ = -0.3"


@pytest.mark.parametrize(
    ("ls", "kwargs", "match"),
    [
        (_landscape(True, True, plane=False), {}, "no plane; build it with plane=True"),
        (_landscape(False, True, plane=True), {"which": "test_loss"}, "needs test data"),
        (_landscape(True, True, plane=True), {"which": "loss"}, "which must be one of"),
    ],
)
def test_landscape_2d_errors(ls: Landscape, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_landscape_2d(ls, **kwargs)


def test_training_curves_grouped() -> None:
    history = {
        "epoch": [1, 2, 3],
        "train_loss": [1.0, 0.6, 0.4],
        "test_loss": [1.1, 0.8, np.nan],
        "train_acc": [0.5, 0.7, 0.8],
        "lr": [0.1, 0.05, 0.01],
    }
    fig = plot_training_curves(history, logy=True)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear", "linear"]
    for ax in fig.axes:
        for line in ax.lines:
            np.testing.assert_array_equal(line.get_xdata(), history["epoch"])
            np.testing.assert_array_equal(line.get_ydata(), history[line.get_label()])
    assert [line.get_label() for line in fig.axes[0].lines] == ["train_loss", "test_loss"]
    plain = plot_training_curves({"loss": [3.0, 2.0]})
    np.testing.assert_array_equal(plain.axes[0].lines[0].get_xdata(), [1, 2])


@pytest.mark.parametrize(
    ("history", "kwargs", "match"),
    [
        ({"epoch": [1, 2], "loss": [1.0]}, {}, r"history\['loss'\] has 1 values but 'epoch' has 2"),
        ({"loss": [1.0]}, {"x": "time"}, "x='time' is not a key of history"),
        ({"epoch": [1]}, {}, "no series"),
    ],
)
def test_training_curves_errors(history: dict, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plot_training_curves(history, **kwargs)


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF")])
def test_every_plot_saves(tmp_path: Path, spectrum: Spectrum, suffix: str, magic: bytes) -> None:
    ls = _landscape(True, True, plane=True)
    calls = {
        "spectrum": lambda p: plot_spectrum(spectrum, exact=[0.0, 1.0], path=p),
        "density": lambda p: plot_density([0, 1], [1, 1], path=p),
        "landscape": lambda p: plot_landscape(ls, path=p),
        "landscape2d": lambda p: plot_landscape_2d(ls, path=p),
        "training": lambda p: plot_training_curves({"loss": [1, 0.5]}, path=p),
    }
    for name, call in calls.items():
        assert isinstance(call(tmp_path / f"{name}{suffix}"), Figure)
        assert (tmp_path / f"{name}{suffix}").read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}{suffix}" for n in calls)
    assert plt.get_fignums() == []  # pyplot's global state untouched


def test_save_errors_leave_existing_file(
    tmp_path: Path, spectrum: Spectrum, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "s.png"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"path must end with \.png or \.pdf; got .*s\.jpg"):
        plot_spectrum(spectrum, path=tmp_path / "s.jpg")
    with pytest.raises(FileNotFoundError, match="not found"):
        plot_spectrum(spectrum, path=tmp_path / "missing" / "s.png")

    def fail(self: Figure, handle: object, **kwargs: object) -> None:
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", fail)
    with pytest.raises(OSError, match="disk full"):
        plot_spectrum(spectrum, path=target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


@pytest.mark.parametrize(
    ("arg", "error", "match"),
    [
        (([0.0, 1.0], [0.5]), ValueError, "2 nodes but 1 weights"),
        (([0.0, 1.0], [0.5, -0.1]), ValueError, "non-negative"),
        (([0.0, np.nan], [0.5, 0.5]), ValueError, "finite"),
        (([], []), ValueError, "non-empty"),
        ("spectrum", TypeError, "got str"),
    ],
)
def test_spectrum_bad_input(arg: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        plot_spectrum(arg)


# Issue 11, item 7: what the figures show by default.


def _spectrum_with_meta(curvature: str) -> Spectrum:
    a = torch.diag(torch.tensor([-1.0, 0.0, 0.5, 2.0, 9.0], dtype=torch.float64))
    run = lanczos(a, 5, generator=torch.Generator().manual_seed(0))
    prov = {"model": "mlp", "dataset": "digits", "checkpoint": "runs/a/checkpoint-00005.pt"}
    return Spectrum.from_lanczos(
        [run],
        num_params=5,
        curvature=curvature,
        lanczos_steps=5,
        num_samples=96,
        provenance=prov,
    )


def test_spectrum_plot_is_log_scaled_and_titled_by_default() -> None:
    fig = plot_spectrum(_spectrum_with_meta("ggn"))
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_title() == (
        "GGN spectrum\nmlp on digits (96 samples), 5 Lanczos steps, checkpoint-00005.pt"
    )
    assert plot_spectrum(_spectrum_with_meta("ggn"), log=False).axes[0].get_yscale() == "linear"
    assert plot_spectrum(_spectrum_with_meta("ggn"), title="mine").axes[0].get_title() == "mine"
    assert plot_spectrum(_spectrum_with_meta("ggn"), title="").axes[0].get_title() == ""


def test_hessian_and_ggn_stems_differ_in_colour_and_label() -> None:
    hess, ggn = (_stems(plot_spectrum(_spectrum_with_meta(c))) for c in ("hessian", "ggn"))
    assert hess.markerline.get_color() != ggn.markerline.get_color()
    assert "Hessian" in hess.get_label()
    assert "GGN" in ggn.get_label()


def test_spectrum_without_metadata_still_gets_a_title(spectrum: Spectrum) -> None:
    assert plot_spectrum(spectrum).axes[0].get_title().startswith("Lanczos spectrum\n5 parameters")


def test_diagonal_plot_names_the_diagonal() -> None:
    diag = RNG.uniform(-1, 9, size=5)
    fig = plot_spectrum(_spectrum_with_meta("ggn"), diagonal=diag, diagonal_label="diag_ggn_mc")
    assert "Monte-Carlo GGN diagonal" in fig.axes[0].get_title()
    assert _bars(fig)[0].patches[0].get_label() == "Monte-Carlo GGN diagonal (histogram)"


def test_training_curves_have_integer_epoch_ticks_and_a_title() -> None:
    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.4], "test_acc": [0.5, 0.6, 0.7]}
    fig = plot_training_curves(history, title="SGD on digits")
    assert fig.get_suptitle() == "SGD on digits"
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
        assert ticks == [1, 2, 3]


def test_runs_overlay_with_a_wall_clock_panel() -> None:
    from diagnostics.plots.figures import plot_runs

    rows_a = [{"epoch": e, "train_loss": 1 / e, "test_loss": 1.1 / e, "time": 2.0} for e in (1, 2)]
    rows_b = [{"epoch": e, "train_loss": 0.5 / e, "time": 10.0} for e in (1, 2)]
    fig = plot_runs({"SGD": rows_a, "LanczosNewton": rows_b}, title="SGD vs LanczosNewton")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["train loss", "test loss", "train loss vs wall-clock time"]
    clock = {line.get_label(): line.get_xdata() for line in fig.axes[-1].lines}
    np.testing.assert_allclose(clock["SGD"], [2.0, 4.0])
    np.testing.assert_allclose(clock["LanczosNewton"], [10.0, 20.0])
    assert [line.get_label() for line in fig.axes[0].lines] == ["SGD", "LanczosNewton"]
    assert fig.get_suptitle() == "SGD vs LanczosNewton"


def test_statistics_plot_shows_mean_and_variance_per_quantity() -> None:
    from diagnostics.plots.figures import plot_statistics

    stats = {"loss_mean": 2.0, "loss_var": 0.5, "grad_mean_sq_norm": 0.3, "grad_var": 3.0}
    fig = plot_statistics(stats)
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [4.0, 0.3, 0.5, 3.0]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["loss", "gradient"]
    with pytest.raises(ValueError, match="none of the statistics"):
        plot_statistics({"format": "lanczos-optim/stats"})


def test_landscape_plot_is_titled_by_curvature_model_and_checkpoint() -> None:
    ls = _landscape(True, True, False)
    assert plot_landscape(ls).get_suptitle() == "Loss along directions"
    ls.meta["spectrum"] = {"curvature": "ggn"}
    ls.meta["provenance"] = {"model": "mlp", "dataset": "digits", "checkpoint": "r/c-3.pt"}
    assert plot_landscape(ls).get_suptitle() == "Loss along GGN Ritz vectors: mlp on digits, c-3.pt"
    assert plot_landscape(ls, title="mine").get_suptitle() == "mine"


# Issue 14: figures a researcher reads at a glance.


def _network_like(curvature: str, steps: int = 45) -> Spectrum:
    """Lanczos on a diagonal matrix shaped like a network's: a spike at 0, a bulk, outliers."""
    gen = torch.Generator().manual_seed(0)
    low = -0.05 if curvature == "hessian" else 0.0
    bulk = low + (0.1 - low) * torch.rand(400, generator=gen, dtype=torch.float64)
    eig = torch.cat([torch.zeros(600, dtype=torch.float64), bulk,
                     torch.tensor([0.6, 1.1, 2.0, 3.5], dtype=torch.float64)])  # fmt: skip
    run = lanczos(torch.diag(eig), steps, generator=gen)
    return Spectrum.from_lanczos([run], num_params=eig.numel(), curvature=curvature)


def _texts(ax: object) -> list[str]:
    legend = ax.get_legend()  # type: ignore[attr-defined]
    return [t.get_text() for t in legend.get_texts()] if legend else []


def _shaded(ax: object) -> list:
    return [p for p in ax.patches if p.get_label().startswith("_negative mass")]  # type: ignore[attr-defined]


def test_crowded_hessian_bulk_gets_a_companion_panel_with_its_own_linear_axis() -> None:
    s = _network_like("hessian")
    fig = plot_spectrum(s)
    main, zoom = fig.axes
    theta = s.ritz_values
    in_bulk = theta <= 0.1 + 1e-12
    assert in_bulk.sum() >= 10  # the test's premise: a crowded bulk and outliers
    assert (~in_bulk).sum() >= 3
    lo, hi = zoom.get_xlim()
    assert lo < theta[in_bulk].min()  # the whole bulk in, the outliers out
    assert theta[in_bulk].max() < hi < 0.6
    assert hi - lo <= (main.get_xlim()[1] - main.get_xlim()[0]) / 4
    (zoom_stems,) = [c for c in zoom.containers if isinstance(c, StemContainer)]
    np.testing.assert_array_equal(zoom_stems.markerline.get_xdata(), theta[in_bulk])
    np.testing.assert_allclose(zoom_stems.markerline.get_ydata(), s.weights[in_bulk], rtol=1e-12)
    np.testing.assert_allclose(_stems(fig).markerline.get_xdata(), theta)  # main panel unchanged
    assert main.get_yscale() == zoom.get_yscale() == "log"
    assert zoom.get_xscale() == "linear"
    assert zoom.get_title().startswith(f"bulk: {in_bulk.sum()} of {theta.size} Ritz values")
    summary = s.summary()  # the bulk is the one the summary reports
    assert (summary["bulk_min"], summary["bulk_max"]) == (
        theta[in_bulk].min(),
        theta[in_bulk].max(),
    )
    assert "bulk (zoomed below)" in _texts(main)


def test_negative_mass_is_shaded_and_named_in_both_panels() -> None:
    s = _network_like("hessian")
    fig = plot_spectrum(s)
    negative = float(s.weights[s.ritz_values < 0].sum())
    assert negative > 0.001
    assert f"$\\theta < 0$: negative mass {negative:.3f}" in " ".join(_texts(fig.axes[0]))
    for ax in fig.axes:
        (span,) = _shaded(ax)
        assert span.get_x() + span.get_width() == pytest.approx(0.0, abs=1e-15)
        assert span.get_x() <= ax.get_xlim()[0]


def test_ggn_has_a_bulk_panel_but_no_negative_mark() -> None:
    fig = plot_spectrum(_network_like("ggn"))
    assert len(fig.axes) == 2
    assert all(_shaded(ax) == [] for ax in fig.axes)
    assert not any("negative mass" in t for t in _texts(fig.axes[0]))


def test_negative_mass_without_the_ritz_value_nearest_zero_is_given_when_it_differs() -> None:
    a = torch.diag(torch.tensor([-2.0, -1e-4, 0.5, 3.0], dtype=torch.float64))
    s = Spectrum.from_lanczos(
        [lanczos(a, 4, generator=torch.Generator().manual_seed(0))], num_params=4
    )
    assert 0 < s.negative_mass(exclude_nearest_zero=True) < s.negative_mass() - 0.01
    label = " ".join(_texts(plot_spectrum(s).axes[0]))
    assert f"negative mass {s.negative_mass():.3f}" in label
    assert f"({s.negative_mass(exclude_nearest_zero=True):.3f} without the Ritz value" in label


def test_few_stems_need_no_zoom_and_zoom_can_be_forced_either_way(spectrum: Spectrum) -> None:
    assert len(plot_spectrum(spectrum).axes) == 1
    assert len(plot_spectrum(spectrum, zoom=True).axes) == 2
    assert len(plot_spectrum(_network_like("hessian"), zoom=False).axes) == 1
    nodes = np.linspace(0.0, 1.0, 40)  # many stems but no outliers: nothing to magnify
    assert len(plot_spectrum((nodes, np.ones(40))).axes) == 1
    with pytest.raises(ValueError, match="zoom must be True, False or None; got 'yes'"):
        plot_spectrum(spectrum, zoom="yes")  # type: ignore[arg-type]


def test_zoom_panel_holds_the_histograms_within_the_bulk() -> None:
    s = _network_like("ggn")
    exact = np.concatenate([np.zeros(50), np.linspace(0.0, 0.1, 50), [2.0, 3.5]])
    fig = plot_spectrum(s, exact=exact)
    lo, hi = fig.axes[1].get_xlim()
    (bars,) = [c for c in fig.axes[1].containers if isinstance(c, BarContainer)]
    heights = np.array([p.get_height() for p in bars.patches])
    inside = exact[(exact >= lo) & (exact <= hi)]
    assert heights.sum() == pytest.approx(inside.size / exact.size)  # fractions of all values


def test_landscape_directions_with_equal_curves_stay_distinguishable() -> None:
    ls = _landscape(True, True, plane=False)
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        values = getattr(ls, key)
        values[:] = values[0]  # every direction the same curve
    fig = plot_landscape(ls)
    for ax in fig.axes:
        lines = [line for line in ax.lines if line.get_label() in set(ls.labels)]
        assert [line.get_label() for line in lines] == list(ls.labels)  # each drawn, in order
        for line in lines:
            np.testing.assert_array_equal(line.get_ydata(), lines[0].get_ydata())
        styles = {(line.get_linestyle(), line.get_marker()) for line in lines}
        assert len(styles) == ls.num_directions
        assert len({line.get_color() for line in lines}) == ls.num_directions
        widths = [line.get_linewidth() for line in lines]
        assert widths == sorted(widths, reverse=True)  # later ones thinner, drawn on top
        assert widths[0] > widths[-1]
        assert [line.get_zorder() for line in lines] == sorted(line.get_zorder() for line in lines)
    handles = fig.axes[0].get_legend().legend_handles
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[: ls.num_directions] == list(ls.labels)
    assert len({(h.get_linestyle(), h.get_marker()) for h in handles[: ls.num_directions]}) == 3
