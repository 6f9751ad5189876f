"""The ``lanczos-optim`` command line: train, spectrum, stats, landscape, diagonal, plot, demo.

Every command reads and writes the documented result files (``.npz`` with a ``format`` key,
``stats.jsonl``, checkpoints). A user mistake (unknown name, missing file, wrong kind of file)
prints one line on stderr and exits with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from diagnostics.cli import _commands as commands
from lanczos_optim.validation import CURVATURES, NUM_PROBES, SPECTRUM_LANCZOS_STEPS

__all__ = ["build_parser", "main"]

_USER_ERRORS = (
    ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError,
    ModuleNotFoundError,  # a peer optimiser whose package is missing: the install hint
)  # fmt: skip


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


class _Defaults(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default in the help only where there is one (not None, a False flag or [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lanczos-optim")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        import lanczos_optim

        return lanczos_optim.__version__


def _lr_help() -> str:
    from diagnostics.training.optimizers import OPTIMIZERS, default_hyperparameters

    shown = []
    for name in OPTIMIZERS:
        defaults = default_hyperparameters(name)
        extra = "".join(f" {k} {v:g}" for k, v in defaults.items() if k != "lr")
        shown.append(f"{name} {defaults['lr']:g}{' with' + extra if extra else ''}")
    return (
        "initial learning rate; default: the optimiser's own (" + ", ".join(shown) + "; other "
        "torch.optim classes their own), recorded in the checkpoint and the W&B config"
    )


def _default(field: str) -> str:
    """`` (default: X)`` of a :class:`TrainConfig` field whose option defaults to ``None``.

    ``None`` tells "not given" apart from a given default value, for ``--resume``.
    """
    from diagnostics.training.config import TrainConfig

    return f" (default: {getattr(TrainConfig, field)})"


def _train_args(p: argparse.ArgumentParser) -> None:
    """The options of ``train``: the fields of :class:`~diagnostics.training.TrainConfig`."""
    run = p.add_argument_group("the run (with --resume: taken from the checkpoint)")
    run.add_argument(
        "--model", help="mlp, small_cnn, vgg16, vgg16_bn, preresnet20.." + _default("model")
    )
    run.add_argument(
        "--dataset", help="digits, fashion-mnist, mnist, cifar10.." + _default("dataset")
    )
    run.add_argument("--subset", type=int, help="train and test on this many samples")
    run.add_argument(
        "--optimizer",
        help="sgd, adam, lanczos_newton, lanczos_saddle_free, any torch.optim class name, or a "
        "second-order peer (pip install 'lanczos-optim[bench]'): swats, adahessian, sophiah, "
        "shampoo, soap, kron, kfac" + _default("optimizer"),
    )
    run.add_argument(
        "--opt",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="optimiser keyword argument (repeatable), e.g. --opt momentum=0.9",
    )
    run.add_argument("--lr", type=float, help=_lr_help())
    run.add_argument("--batch-size", type=int, help="training batch size" + _default("batch_size"))
    run.add_argument(
        "--schedule", help="linear (paper eq. 11), cosine, constant" + _default("schedule")
    )
    run.add_argument("--swa", action="store_true", default=None, help="stochastic weight averaging")
    run.add_argument(
        "--swa-start", type=int, help="first averaged epoch; default: 75%% of --epochs"
    )
    run.add_argument(
        "--swa-lr", type=float, help="lr while averaging; default: 0.1 x the initial lr"
    )
    run.add_argument(
        "--seed", type=int, help="seed of weights, data order, subsets" + _default("seed")
    )
    _train_output_args(p.add_argument_group("data, output, progress (may change on --resume)"))


def _train_output_args(more: Any) -> None:
    """The options of ``train`` that a resumed run may change."""
    from diagnostics.training.config import TrainConfig
    from diagnostics.training.epoch_spectra import EPOCH_SPECTRUM_LANCZOS_STEPS

    more.add_argument(
        "--epochs", type=int, help=f"epoch budget (default: {TrainConfig.epochs}); with --resume: "
        "the checkpoint's, or more to extend the run"
    )  # fmt: skip
    more.add_argument(
        "--data-path", help="folder with the data files; with --resume: the checkpoint's"
    )
    more.add_argument(
        "--download", action="store_true", default=None, help="let torchvision download the data"
    )
    more.add_argument(
        "--out", help="folder for checkpoints, stats, spectra; default: the --resume folder, else "
        "results/train"
    )  # fmt: skip
    more.add_argument(
        "--checkpoint-every", type=int,
        help="checkpoint every N epochs (0: last only)" + _default("checkpoint_every")
        + "; with --resume: the checkpoint's",
    )  # fmt: skip
    more.add_argument(
        "--keep-checkpoints", type=int,
        help="keep the N newest checkpoints (0: all)" + _default("keep_checkpoints")
        + "; with --resume: the checkpoint's",
    )  # fmt: skip
    more.add_argument(
        "--resume", help="checkpoint (or its folder) to continue from, with its configuration"
    )
    more.add_argument(
        "--overwrite", action="store_true", default=None, help="reuse a non-empty --out folder"
    )
    more.add_argument(
        "--quiet", action="store_true", help="no progress bars (never shown off a terminal)"
    )
    more.add_argument(
        "--wandb",
        choices=("online", "offline", "disabled"),
        help="W&B mode; default: online with an API key, else offline",
    )
    more.add_argument(
        "--spectrum-every",
        type=int,
        help="every N epochs, a Hessian spectrum on held-out data, saved under OUT/spectra/",
    )
    more.add_argument(
        "--spectrum-steps", type=int, default=EPOCH_SPECTRUM_LANCZOS_STEPS,
        help="Lanczos steps of each --spectrum-every spectrum",
    )  # fmt: skip


def _analysis_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model and data")
    src.add_argument(
        "--checkpoint",
        help="training checkpoint, or a run folder (its latest checkpoint); its meta names "
        "model and data",
    )
    src.add_argument("--model", help="model name without a checkpoint (default: mlp)")
    src.add_argument("--dataset", help="data set (default: the checkpoint's, else digits)")
    src.add_argument("--data-path", help="folder with the data files")
    src.add_argument("--subset", type=int, default=1024, help="samples used")
    src.add_argument("--batch-size", type=int, default=256, help="batch size of the passes")
    src.add_argument("--seed", type=int, default=0, help="seed of subset, probes, initialisation")
    src.add_argument("--float64", action="store_true", help="analyse in float64")
    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        help="result file (default: beside the checkpoint, else a new file under results/)",
    )
    out.add_argument("--overwrite", action="store_true", help="replace existing result files")
    out.add_argument("--quiet", action="store_true", help="no progress bars")


def _plot_args(
    p: argparse.ArgumentParser,
    *,
    log: bool | None = True,
    log_help: str | None = "logarithmic spectral-mass axis",
) -> None:
    if log_help is not None:
        p.add_argument("--log", action=argparse.BooleanOptionalAction, default=log, help=log_help)
    p.add_argument("--title", help="figure title (default: curvature, model, data, steps)")


def _analysis_commands(sub: Any) -> None:
    """The subcommands spectrum, stats, landscape and diagonal."""
    analysis: dict[str, Any] = {"formatter_class": _Defaults}
    p = sub.add_parser(
        "spectrum", help="Lanczos spectrum (stem plot) of the Hessian or GGN", **analysis
    )
    _analysis_args(p)
    _plot_args(p)
    p.add_argument("--curvature", default="hessian", help=" or ".join(CURVATURES))
    p.add_argument(
        "--steps",
        type=int,
        default=SPECTRUM_LANCZOS_STEPS,
        help="Lanczos steps (capped at P)",
    )
    p.add_argument("--probes", type=int, default=NUM_PROBES, help="random probes")
    p.add_argument("--bn-mode", default="eval", help="BatchNorm statistics: eval or train")
    p.add_argument("--save-eigvec", action="store_true", help="keep Ritz vectors (landscape)")
    p.add_argument(
        "--cache-graphs",
        action="store_true",
        help="keep every batch's graph between Lanczos steps (faster; memory of all batches)",
    )

    p = sub.add_parser("stats", help="loss, gradient and curvature variance statistics", **analysis)
    _analysis_args(p)
    p.add_argument("--bn-mode", default="eval", help="BatchNorm statistics: eval or train")
    p.add_argument("--probes", type=int, default=NUM_PROBES, help="random unit probes")

    p = sub.add_parser("landscape", help="loss along Ritz vectors of a saved spectrum", **analysis)
    _analysis_args(p)
    _plot_args(p, log_help=None)
    p.add_argument(
        "--spectrum", required=True, help="spectrum .npz saved with --save-eigvec (same model)"
    )
    p.add_argument("--top", default="0,1,2,5", help="ranks from the top")
    p.add_argument("--bottom", default="0,1,2,5", help="ranks from the bottom")
    p.add_argument("--dist", type=float, default=1.0, help="largest step along a direction")
    p.add_argument("--n-points", type=int, default=21, help="steps per direction")
    p.add_argument("--bn-mode", default="eval", help="BatchNorm statistics: eval or train")

    p = sub.add_parser(
        "diagonal", help="BackPACK diagonals compared with a Lanczos spectrum", **analysis
    )
    _analysis_args(p)
    _plot_args(p)
    p.add_argument(
        "--kinds", default="diag_ggn_exact,diag_ggn_mc,diag_hessian", help="diagonals to compute"
    )
    p.add_argument("--spectrum", help="spectrum .npz to compare against")
    p.add_argument(
        "--hutchinson-fallback",
        action="store_true",
        help="estimate the diagonal by Hutchinson for models BackPACK refuses",
    )
    p.add_argument("--bn-mode", default="eval", help="BatchNorm statistics: eval or train")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``lanczos-optim`` command.

    Example:
        >>> args = build_parser().parse_args(["demo", "--quick"])
        >>> args.command, args.quick, args.out
        ('demo', True, 'results/demo')
    """
    parser = argparse.ArgumentParser(
        prog="lanczos-optim",
        description="Lanczos curvature of deep networks: train, spectra, statistics, "
        "landscapes, diagonal approximations, plots.",
        formatter_class=_Defaults,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train a network (any optimiser, SWA, checkpoints, W&B)",
        formatter_class=_Defaults,
    )
    _train_args(p)

    _analysis_commands(sub)
    p = sub.add_parser(
        "plot", help="plot result files (spectrum, landscape, diagonal, stats, training runs)",
        formatter_class=_Defaults,
    )  # fmt: skip
    p.add_argument(
        "input",
        nargs="+",
        help="a .npz result file, a stats .json of `stats`, or one or more training "
        "stats.jsonl files (overlaid, e.g. SGD vs LanczosNewton)",
    )
    p.add_argument("--out", help="image path (.png or .pdf; default: beside the first input)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing image")
    _plot_args(
        p, log=None, log_help="logarithmic y axis (default: spectra yes, training curves no)"
    )

    p = sub.add_parser(
        "demo",
        help="the offline end-to-end demo on digits (a few minutes)",
        formatter_class=_Defaults,
    )
    p.add_argument("--out", default="results/demo", help="folder for every output")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run")
    p.add_argument(
        "--wandb",
        choices=("online", "offline", "disabled"),
        help="W&B mode; default: online with an API key, else offline",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Example:
        >>> main(["plot", "no-such-result.npz"])  # a user error: one line on stderr, status 2
        2
    """
    args = build_parser().parse_args(argv)
    try:
        getattr(commands, f"run_{args.command}")(args)
    except _USER_ERRORS as err:
        print(f"lanczos-optim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        detail = f": {err}" if str(err) else ""
        print(f"lanczos-optim {args.command}: interrupted{detail}", file=sys.stderr)
        return 128 + getattr(err, "signum", 2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
