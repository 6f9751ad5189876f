"""``lanczos-optim plot``: pick the figure by what the input files hold."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from diagnostics.results import FORMAT_PREFIX, load_npz

__all__ = ["ACCEPTS", "plot_inputs"]

ACCEPTS = (
    "plot accepts a spectrum, landscape or diagonal .npz, the .json of `lanczos-optim stats`, "
    "or one or more training stats.jsonl files"
)


def _format_of(path: Path) -> str:
    try:
        with np.load(path, allow_pickle=False) as f:
            fmt = str(f["format"]) if "format" in f.files else ""
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz result file ({err}).") from None
    if not fmt.startswith(FORMAT_PREFIX):
        raise ValueError(f"{str(path)!r} is not a lanczos-optim result file (no 'format' key).")
    return fmt[len(FORMAT_PREFIX) :]


def _kind(path: Path) -> str:
    """``"npz"``, ``"stats"`` (one JSON object of ``stats``) or ``"rows"`` (JSON lines)."""
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    with path.open("rb") as handle:
        head = handle.read(4)
    if head.startswith(b"PK"):
        return "npz"
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        raise ValueError(f"{str(path)!r} is neither a result file nor JSON; {ACCEPTS}.") from None
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict) and whole.get("format") == FORMAT_PREFIX + "stats":
        return "stats"
    if isinstance(whole, dict) and "epoch" not in whole:
        raise ValueError(
            f"{str(path)!r} is a JSON file that lanczos-optim did not write; {ACCEPTS}."
        )
    if text.lstrip().startswith("{"):
        return "rows"
    raise ValueError(f"{str(path)!r} is neither a result file nor JSON; {ACCEPTS}.")


def _plot_runs(paths: list[Path], args: argparse.Namespace, out: Path) -> None:
    from diagnostics.cli._outputs import read_rows, run_label
    from diagnostics.plots import plot_runs

    runs: dict[str, list[dict[str, Any]]] = {}
    metas = []
    for path in paths:
        label, meta = run_label(path)
        if label in runs:
            label = f"{label} [{path.parent.name or path}]"
        runs[label] = read_rows(path)
        metas.append(meta)
    title = args.title
    if title is None:
        title = " vs ".join(runs)
        same = {(m.get("model"), m.get("dataset")) for m in metas}
        if len(same) == 1 and None not in next(iter(same)):
            model, data = next(iter(same))
            title += f": {model} on {data}"
    plot_runs(runs, logy=bool(args.log), title=title, path=out)


def _spectrum_with_run(src: Path) -> Any:
    """The spectrum in ``src``; one saved during training names its run's model and data.

    Spectra that ``train --spectrum-every`` saved before they recorded model and data lie in
    ``<run>/spectra/``; the run's latest checkpoint names them, for the figure's title.
    """
    from diagnostics.analysis import Spectrum
    from diagnostics.cli._outputs import run_label
    from diagnostics.training.epoch_spectra import SPECTRA_FOLDER
    from diagnostics.training.harness import STATS_FILENAME

    spectrum = Spectrum.load(src)
    prov = spectrum.meta.get("provenance") or {}
    if spectrum.meta.get("epoch") is None or prov.get("model") or src.parent.name != SPECTRA_FOLDER:
        return spectrum
    run = run_label(src.parent.parent / STATS_FILENAME)[1]  # the run folder's checkpoint meta
    if run.get("model"):
        found = {"model": run["model"], "dataset": run.get("dataset"), "split": "held-out"}
        spectrum.meta["provenance"] = {**found, **prov}
    return spectrum


def _plot_npz(src: Path, args: argparse.Namespace, out: Path) -> None:
    from diagnostics import plots

    kind = _format_of(src)
    if kind == "spectrum":
        spectrum = _spectrum_with_run(src)
        plots.plot_spectrum(spectrum, log=args.log is not False, title=args.title, path=out)
    elif kind == "landscape":
        from diagnostics.analysis import Landscape

        plots.plot_landscape(Landscape.load(src), title=args.title, path=out)
    elif kind == "diagonal":
        arrays, meta = load_npz(src, "diagonal")
        first = meta["kinds"][0]
        if meta.get("spectrum"):
            from diagnostics.analysis import Spectrum

            spectrum: Any = Spectrum.load(meta["spectrum"])
            title = args.title
        else:
            spectrum = (arrays[first], np.full(arrays[first].size, 1 / arrays[first].size))
            title = args.title if args.title is not None else f"{first}: entries as equal stems"
        plots.plot_spectrum(spectrum, diagonal=arrays[first], diagonal_label=first,
                            log=args.log is not False, title=title, path=out)  # fmt: skip
    else:
        raise ValueError(f"{str(src)!r} holds a {kind!r} result; {ACCEPTS}.")


def plot_inputs(args: argparse.Namespace) -> Path:
    """Plot ``args.input`` (one result file, or training runs overlaid) and return the image.

    Raises:
        FileNotFoundError: A missing input.
        FileExistsError: An existing image without ``--overwrite``.
        ValueError: Inputs ``plot`` cannot read, or several that are not training runs.
    """
    from diagnostics.cli._outputs import claim_outputs
    from diagnostics.plots import plot_statistics

    paths = [Path(p) for p in args.input]
    kinds = [_kind(p) for p in paths]
    if len(paths) > 1 and set(kinds) != {"rows"}:
        raise ValueError(f"Only training stats.jsonl files can be overlaid; {ACCEPTS}.")
    if args.out:
        out = Path(args.out)
    elif len(paths) > 1:
        out = paths[0].parent / "runs-compared.png"
    else:
        out = paths[0].with_suffix(".png")
    claim_outputs(out, overwrite=args.overwrite)
    if kinds[0] == "rows":
        _plot_runs(paths, args, out)
    elif kinds[0] == "stats":
        try:
            plot_statistics(json.loads(paths[0].read_text()), title=args.title, path=out)
        except ValueError as err:
            raise ValueError(f"{str(paths[0])!r}: {err}") from None
    else:
        _plot_npz(paths[0], args, out)
    return out
