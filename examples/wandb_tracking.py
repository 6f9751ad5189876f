"""Curvature on a Weights & Biases dashboard while a network trains.

Trains the same MLP on scikit-learn's digits (offline, always available) twice, once with
LanczosSaddleFreeNewton and once with SGD, each with a ``WandbLogger`` callback:

* every step: the batch loss and learning rate; for the Lanczos optimiser also its own per-step
  curvature record at no extra cost (top and bottom Ritz value, negative spectral mass, share of
  the gradient inside the Krylov space, damping, products per step) and the edge-of-stability
  indicator ``lr * lambda_max``;
* every ``--spectrum-every`` epochs, for both optimisers, a full Lanczos spectrum of the Hessian
  on held-out data (a weighted ``wandb.Histogram`` of the Ritz values, the stem plot as an image,
  lambda_max, lambda_min, negative mass, trace);
* at the end, a final spectrum of each network.

W&B mode: ``--wandb online`` (needs ``wandb login``), ``offline`` (the default when no API key
is configured: runs are written to ``<wandb-dir>/wandb/offline-run-*`` and uploaded later with
``wandb sync``) or ``disabled`` (nothing written). No network is used unless you ask for
``online``. The script prints where each run is and the ``wandb sync`` command.

Run::

    .venv/bin/python examples/wandb_tracking.py --quick        # a few seconds, offline
    .venv/bin/python examples/wandb_tracking.py --wandb online # to your dashboard

Also writes ``training.png``, ``spectrum_<optimizer>.png`` and ``summary.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from diagnostics import (
    WandbLogger,
    compute_eigenspectrum,
    load_dataset,
    plot_runs,
    plot_spectrum,
    resolve_wandb_mode,
    train_network,
)

RUNS = {
    "lanczos_saddle_free": {},  # the library's measured defaults (lr, damping, trust region)
    "sgd": {"lr": 0.1, "momentum": 0.9},
}


def _run(
    name: str,
    kwargs: dict,
    args: argparse.Namespace,
    mode: str,
    directory: Path,
    held_out: list,
    out: Path,
) -> dict:
    cfg = {"optimizer": name, **kwargs, "epochs": args.epochs, "subset": args.subset}
    if name != "sgd":
        kwargs = {**kwargs, "lanczos_steps": args.lanczos_steps}
    logger = WandbLogger(
        project=args.project,
        name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
        config=cfg,
        mode=mode,
        directory=directory,
        spectrum_every=args.spectrum_every,
        spectrum_data=held_out,
        curvature="hessian",
        lanczos_steps=args.spectrum_steps,
        finish_on_train_end=False,  # the final spectrum below goes into the same run
    )
    try:
        result = train_network(
            model="mlp",
            dataset="digits",
            subset=args.subset,
            epochs=args.epochs,
            optimizer=name,
            optimizer_kwargs=kwargs,
            batch_size=64,
            schedule="constant",
            seed=args.seed,
            device="cpu",
            callbacks=[logger],
            progress=not args.quick,
        )
        spectrum = compute_eigenspectrum(
            result.model,
            nn.CrossEntropyLoss(),
            held_out,
            lanczos_steps=args.spectrum_steps,
            seed=args.seed,
        )
        logger.log_spectrum(spectrum, prefix="final_spectrum")
        run_dir = Path(logger.run.dir).parent if mode != "disabled" else None
        url = getattr(logger.run, "url", None) if mode == "online" else None
    finally:
        logger.finish()
    plot_spectrum(
        spectrum,
        log=True,
        title=f"Hessian after training with {name} (held-out data)",
        path=out / f"spectrum_{name}.png",
    )
    last = result.history[-1]
    return {
        "history": result.history,
        "numbers": {
            "train_loss": last["train_loss"],
            "test_acc": last["test_acc"],
            "lambda_max": spectrum.lambda_max,
            "lambda_min": spectrum.lambda_min,
            "negative_mass": spectrum.negative_mass(),
            "lr_times_lambda_max": float(result.optimizer.param_groups[0]["lr"])
            * spectrum.lambda_max,
        },
        "run_dir": run_dir,
        "url": url,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Log curvature to Weights & Biases while training (digits, MLP).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default="results/examples/wandb_tracking", help="output folder")
    parser.add_argument("--quick", action="store_true", help="small subset, 2 epochs")
    parser.add_argument(
        "--wandb",
        choices=("online", "offline", "disabled"),
        default=None,
        help="W&B mode (default: $WANDB_MODE, else online with an API key, else offline)",
    )
    parser.add_argument(
        "--wandb-dir", default=None, help="where W&B writes its runs (default: $WANDB_DIR or --out)"
    )
    parser.add_argument("--project", default="lanczos-optim-examples", help="W&B project")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--subset", type=int, default=None, help="training samples (all: 1437)")
    parser.add_argument("--lanczos-steps", type=int, default=20, help="per optimiser step")
    parser.add_argument("--spectrum-every", type=int, default=2, help="epochs between spectra")
    parser.add_argument("--spectrum-steps", type=int, default=30, help="Lanczos steps per spectrum")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.subset, args.spectrum_every = 2, 512, 1
        args.lanczos_steps, args.spectrum_steps = 10, 15
        torch.set_num_threads(1)  # tiny models: extra threads only add contention
    warnings.filterwarnings("ignore", r".*torch\.jit\.script.* is deprecated", FutureWarning)

    mode = resolve_wandb_mode(args.wandb)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    directory = Path(args.wandb_dir or os.environ.get("WANDB_DIR") or out)
    directory.mkdir(parents=True, exist_ok=True)
    x, y = load_dataset("digits", train=False).tensors
    held_out = list(DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=256))
    print(f"W&B mode: {mode}; {len(x)} held-out digits for the spectra", flush=True)

    t0 = time.perf_counter()
    summary: dict = {"mode": mode, "runs": {}}
    histories = {}
    for name, kwargs in RUNS.items():
        res = _run(name, dict(kwargs), args, mode, directory, held_out, out)
        histories[name] = res["history"]
        numbers = {k: float(v) for k, v in res["numbers"].items()}
        summary["runs"][name] = {**numbers, "run_dir": str(res["run_dir"] or ""), "url": res["url"]}
        text = " ".join(f"{k}={v:.4g}" for k, v in numbers.items())
        print(f"run_{name}: {text}", flush=True)
    plot_runs(histories, path=out / "training.png")

    for name, run in summary["runs"].items():
        if mode == "offline":
            print(f"offline run ({name}): {run['run_dir']}")
        elif mode == "online":
            print(f"online run ({name}): {run['url']}")
    if mode == "offline":
        dirs = " ".join(run["run_dir"] for run in summary["runs"].values())
        print(f"upload later with: wandb sync {dirs}")
    elif mode == "disabled":
        print("W&B disabled: nothing was logged.")
    summary["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"plots and summary.json in {out.resolve()} ({summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
