"""What each ``lanczos-optim`` subcommand does (the parser lives in :mod:`diagnostics.cli.app`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from diagnostics.cli._setup import AnalysisSetup, analysis_setup
from diagnostics.results import FORMAT_PREFIX, atomic_write, save_npz

__all__: list[str] = []


def _setup(args: argparse.Namespace) -> AnalysisSetup:
    return analysis_setup(
        checkpoint=args.checkpoint,
        model=args.model,
        dataset=args.dataset,
        data_path=args.data_path,
        subset=args.subset,
        batch_size=args.batch_size,
        seed=args.seed,
        dtype=torch.float64 if args.float64 else torch.float32,
    )


def _png_beside(path: str | Path) -> Path:
    return Path(path).with_suffix(".png")


def _ranks(text: str, name: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers; got {text!r}.") from None


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write JSON atomically."""
    data = json.dumps(payload, indent=2, default=float).encode()
    return atomic_write(path, lambda f: f.write(data))


def run_train(args: argparse.Namespace) -> None:
    """Train a network; W&B logging unless ``--wandb disabled``; spectra saved under --out."""
    from diagnostics.cli._train_command import run_train as train

    train(args)


def _check_choices(args: argparse.Namespace) -> None:
    """Cheap argument checks, before anything is loaded or a file is claimed."""
    from lanczos_optim import check_bn_mode, check_curvature, check_lanczos_steps, check_num_probes

    check_curvature(getattr(args, "curvature", "hessian"))
    check_bn_mode(args.bn_mode)
    if getattr(args, "steps", None) is not None:
        check_lanczos_steps(args.steps, name="--steps")
    if getattr(args, "probes", None) is not None:
        try:
            check_num_probes(args.probes)
        except ValueError as err:
            raise ValueError(f"--probes: {err}") from None


def _check_source(meta: dict[str, Any], s: AnalysisSetup, what: str) -> None:
    from diagnostics.cli._outputs import recorded_provenance
    from diagnostics.results import check_same_source

    check_same_source(recorded_provenance(meta), s.meta["provenance"], what=what)


def run_spectrum(args: argparse.Namespace) -> None:
    """Compute, save and plot a spectrum."""
    from diagnostics.analysis import compute_eigenspectrum
    from diagnostics.cli._outputs import claim_outputs, default_output
    from diagnostics.plots import plot_spectrum, spectrum_title

    _check_choices(args)
    s = _setup(args)
    out = default_output(args, "spectrum", ".npz", f"-{args.curvature}")
    claim_outputs(out, _png_beside(out), overwrite=args.overwrite)
    spectrum = compute_eigenspectrum(
        s.model,
        s.loss_fn,
        s.train,
        curvature=args.curvature,
        lanczos_steps=args.steps,
        num_probes=args.probes,
        bn_mode=args.bn_mode,
        save_eigvec=args.save_eigvec,
        seed=args.seed,
        cache_graphs=args.cache_graphs or None,
        progress=not args.quiet,
    )
    spectrum.meta["provenance"] = s.meta["provenance"]
    spectrum.save(out)
    plot_spectrum(spectrum, log=args.log, title=args.title, path=_png_beside(out))
    headline, raw = spectrum.negative_mass_report()
    header = spectrum_title(spectrum).replace("\n", ": ")
    print(
        f"{header}\n"
        f"  {spectrum.num_params:,} parameters: lambda_max {spectrum.lambda_max:.4g}, "
        f"lambda_min {spectrum.lambda_min:.4g}\n"
        f"  {headline}\n  ({raw})\n"
        f"saved {out} and {_png_beside(out)}"
    )


def run_stats(args: argparse.Namespace) -> None:
    """Loss, gradient and curvature statistics as JSON."""
    from diagnostics.analysis import loss_statistics
    from diagnostics.cli._outputs import claim_outputs, default_output

    _check_choices(args)
    s = _setup(args)
    out = default_output(args, "stats", ".json")
    claim_outputs(out, overwrite=args.overwrite)
    stats = loss_statistics(
        s.model,
        s.loss_fn,
        s.train,
        bn_mode=args.bn_mode,
        num_probes=args.probes,
        seed=args.seed,
        progress=not args.quiet,
    )
    payload = {"format": FORMAT_PREFIX + "stats", **stats.as_dict()}
    write_json(out, payload | {"provenance": s.meta["provenance"]})
    print(
        f"loss mean {stats.loss_mean:.4g}, gradient variance {stats.grad_var:.4g}; saved {out} "
        f"(plot it with: lanczos-optim plot {out})"
    )


def run_landscape(args: argparse.Namespace) -> None:
    """Loss along the Ritz vectors of a saved spectrum."""
    from diagnostics.analysis import Spectrum, build_loss_landscape, select_directions
    from diagnostics.cli._outputs import claim_outputs, default_output
    from diagnostics.plots import plot_landscape

    _check_choices(args)
    spectrum = Spectrum.load(args.spectrum)
    s = _setup(args)
    _check_source(spectrum.meta, s, f"Spectrum {args.spectrum!r}")
    indices = select_directions(
        spectrum, top=_ranks(args.top, "top"), bottom=_ranks(args.bottom, "bottom")
    )
    out = default_output(args, "landscape", ".npz")
    claim_outputs(out, _png_beside(out), overwrite=args.overwrite)
    landscape = build_loss_landscape(
        s.model,
        s.loss_fn,
        s.train,
        s.test,
        directions=spectrum,
        indices=indices,
        dist=args.dist,
        n_points=args.n_points,
        bn_mode=args.bn_mode,
        progress=not args.quiet,
    )
    landscape.meta["provenance"] = s.meta["provenance"]
    landscape.meta["spectrum_file"] = str(args.spectrum)
    landscape.save(out)
    plot_landscape(landscape, title=args.title, path=_png_beside(out))
    print(f"landscape along {len(indices)} Ritz vectors; saved {out} and {_png_beside(out)}")


def run_diagonal(args: argparse.Namespace) -> None:
    """BackPACK diagonals, compared with a spectrum when one is given."""
    from diagnostics.analysis import KINDS, Spectrum, compare_to_spectrum, diagonal_approximations
    from diagnostics.cli._outputs import claim_outputs, default_output
    from diagnostics.plots import plot_spectrum

    _check_choices(args)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(
            f"--kinds must be a comma-separated subset of {KINDS}; got {args.kinds!r}."
        )
    spectrum = Spectrum.load(args.spectrum) if args.spectrum else None
    s = _setup(args)
    if spectrum is not None:
        _check_source(spectrum.meta, s, f"Spectrum {args.spectrum!r}")
    out = default_output(args, "diagonal", ".npz")
    png = _png_beside(out) if spectrum is not None else None
    claim_outputs(out, *([png] if png else []), overwrite=args.overwrite)
    diagonals = diagonal_approximations(
        s.model,
        s.loss_fn,
        s.train,
        kinds=kinds,
        bn_mode=args.bn_mode,
        fallback="hutchinson" if args.hutchinson_fallback else None,
        seed=args.seed,
        progress=not args.quiet,
    )
    meta: dict[str, Any] = {
        "kinds": kinds,
        "spectrum": args.spectrum,
        "provenance": s.meta["provenance"],
    }
    if spectrum is not None:
        meta["comparison"] = {k: compare_to_spectrum(d, spectrum) for k, d in diagonals.items()}
        first = kinds[0]
        plot_spectrum(spectrum, diagonal=diagonals[first].numpy(), diagonal_label=first,
                      log=args.log, title=args.title, path=png)  # fmt: skip
    save_npz(out, "diagonal", {k: v.double().numpy() for k, v in diagonals.items()}, meta)
    for kind, d in diagonals.items():
        line = f"{kind}: min {float(d.min()):.4g}, max {float(d.max()):.4g}"
        if spectrum is not None:
            line += f", W1 to Lanczos {meta['comparison'][kind]['wasserstein']:.4g}"
        print(line)
    print(f"saved {out}" + (f" and {png}" if png else ""))


def run_plot(args: argparse.Namespace) -> None:
    """Plot a result file, or overlay training runs."""
    from diagnostics.cli._plot_command import plot_inputs

    print(f"saved {plot_inputs(args)}")


def run_demo(args: argparse.Namespace) -> None:
    """The end-to-end offline demo."""
    from diagnostics.cli.demo import run_demo as demo

    demo(args.out, quick=args.quick, wandb_mode=args.wandb, quiet=args.quiet)
