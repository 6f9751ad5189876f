"""VGG16 on CIFAR-100: the paper's appendices C and D (train, GGN and Hessian spectra, landscape).

The steps of appendix C, with this package's API:

1. ``train_network``: VGG16 (P = 15,291,300 parameters for 100 classes, as in the paper), SGD
   with momentum 0.9 and weight decay 5e-4, the paper's linear schedule (its equation 11),
   checkpoints every 10 epochs (``--resume`` continues an interrupted run);
2. ``compute_eigenspectrum``: the GGN and the Hessian spectrum of the trained network by
   Lanczos (100 steps, one probe; appendix C.1 and figure 7), saved as ``.npz`` and stem plots;
   with ``--diagonal`` also BackPACK's Monte-Carlo GGN diagonal against the Lanczos GGN
   (figure 7);
3. ``build_loss_landscape``: train and test loss and accuracy along the top and bottom Ritz
   vectors of the GGN, dist 0.25, 21 points (appendix C.2, figures 9-10).

A GPU is strongly recommended for the real run (CUDA is used when available): one epoch of VGG16
on CIFAR-100 is about 10 s on a recent GPU, and every Lanczos step is one pass over the data.
CIFAR-100 comes through torchvision: put its files under ``--data-path`` or pass
``--download`` when you have network access; without them the script says so and exits with
code 2. ``--synthetic`` runs the same pipeline on CIFAR-shaped Gaussian images instead.

``--quick`` runs everything on the CPU in well under a minute: the real VGG16 on 64 synthetic
CIFAR-shaped images for one epoch, 5 Lanczos steps on 4 images, a 5-point landscape.

Run::

    .venv/bin/python examples/vgg16_cifar.py --download           # appendix C (300 epochs)
    .venv/bin/python examples/vgg16_cifar.py --epochs 100 --lr 0.03   # appendix D
    .venv/bin/python examples/vgg16_cifar.py --quick              # CPU smoke run

Prints the key numbers as ``name: key=value ...`` lines and writes into ``--out``:
``train/`` (``stats.jsonl``, checkpoints), ``training.png``, ``spectrum_{ggn,hessian}.npz/.png``,
``landscape.npz/.png`` and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from diagnostics import (
    VGG16,
    build_loss_landscape,
    compare_to_spectrum,
    compute_eigenspectrum,
    diagonal_approximations,
    load_dataset,
    plot_landscape,
    plot_spectrum,
    plot_training_curves,
    rows_to_history,
    select_directions,
    train_network,
)
from diagnostics.training.harness import STATS_FILENAME

NUM_CLASSES = 100


def _report(name: str, numbers: dict[str, float], summary: dict) -> None:
    summary[name] = numbers
    text = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in numbers.items()
    )
    print(f"{name}: {text}", flush=True)


def _subset(ds: TensorDataset, n: int | None) -> TensorDataset:
    if n is None or n >= len(ds):
        return ds
    return TensorDataset(*(t[:n] for t in ds.tensors))


def _load(args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset]:
    if args.synthetic:
        n = args.synthetic_size
        return (
            load_dataset("synthetic", train=True, synthetic_size=n, seed=args.seed),
            load_dataset("synthetic", train=False, synthetic_size=n, seed=args.seed),
        )
    kwargs = {"root": args.data_path, "download": args.download}
    return (
        load_dataset("cifar100", train=True, **kwargs),
        load_dataset("cifar100", train=False, **kwargs),
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="VGG16 on CIFAR-100: train, GGN/Hessian spectra, landscape (appendix C, D).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default="results/examples/vgg16_cifar", help="output folder")
    p.add_argument("--quick", action="store_true", help="CPU smoke run on synthetic data")
    data = p.add_argument_group("data")
    data.add_argument("--data-path", default=None, help="CIFAR-100 folder (torchvision layout)")
    data.add_argument("--download", action="store_true", help="let torchvision download")
    data.add_argument("--synthetic", action="store_true", help="CIFAR-shaped synthetic data")
    data.add_argument("--synthetic-size", type=int, default=1024, help="synthetic images")
    train = p.add_argument_group("training (appendix C)")
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--batch-norm", action="store_true", help="VGG16-BN instead of VGG16")
    train.add_argument("--resume", action="store_true", help="continue from out/train")
    curv = p.add_argument_group("spectra and landscape (appendix C.1, C.2)")
    curv.add_argument("--lanczos-steps", type=int, default=100)
    curv.add_argument(
        "--spectrum-samples", type=int, default=None, help="training images (default: all)"
    )
    curv.add_argument("--analysis-batch-size", type=int, default=256)
    curv.add_argument("--dist", type=float, default=0.25)
    curv.add_argument("--n-points", type=int, default=21)
    curv.add_argument("--landscape-samples", type=int, default=10000, help="train and test images")
    curv.add_argument("--diagonal", action="store_true", help="BackPACK DiagGGN-MC (figure 7)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--seed", type=int, default=0)
    return p


def _quick(args: argparse.Namespace) -> None:
    """The CPU smoke configuration: the real VGG16, a handful of synthetic images."""
    args.synthetic, args.synthetic_size = True, 64
    args.epochs, args.batch_size, args.lr = 1, 32, 0.01
    args.lanczos_steps, args.spectrum_samples, args.analysis_batch_size = 5, 4, 4
    args.n_points, args.landscape_samples = 5, 4
    args.device = "cpu"
    torch.set_num_threads(1)  # two cores shared with others: threads only add contention


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        _quick(args)
    # torch 2.14's forward-mode AD warns about torch.jit.script on every curvature product.
    warnings.filterwarnings("ignore", r".*torch\.jit\.script.* is deprecated", FutureWarning)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        train, test = _load(args)
    except FileNotFoundError as err:
        print(f"error: CIFAR-100 is not available: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"config": vars(args) | {"device": str(device)}}
    t0 = time.perf_counter()
    if device.type == "cpu" and not args.quick:
        print("warning: no GPU; the full run takes days on a CPU (try --quick).", flush=True)

    # 1. Training (appendix C): SGD, the linear schedule of equation 11.
    torch.manual_seed(args.seed)
    model = VGG16(num_classes=NUM_CLASSES, batch_norm=args.batch_norm)
    num_params = sum(p.numel() for p in model.parameters())
    print(
        f"VGG16{'-BN' if args.batch_norm else ''}: P = {num_params:,} parameters; "
        f"{'synthetic' if args.synthetic else 'CIFAR-100'} data, {len(train)} training and "
        f"{len(test)} test images; {args.epochs} epochs on {device}",
        flush=True,
    )
    train_dir = out / "train"
    resume = train_dir if args.resume and (train_dir / STATS_FILENAME).exists() else None
    t1 = time.perf_counter()
    result = train_network(
        model=model,
        dataset=train,
        test_dataset=test,
        epochs=args.epochs,
        optimizer="sgd",
        optimizer_kwargs={"momentum": args.momentum, "weight_decay": args.weight_decay},
        lr=args.lr,
        batch_size=args.batch_size,
        schedule="linear",
        checkpoint_dir=train_dir,
        checkpoint_every=10,
        resume=resume,
        overwrite=resume is None,
        seed=args.seed,
        device=device,
        progress=not args.quick,
    )
    plot_training_curves(rows_to_history(result.history), path=out / "training.png")
    first, last = result.history[0], result.history[-1]
    _report(
        "train",
        {
            "num_params": num_params,
            "epochs": int(last["epoch"]),
            "first_epoch_train_loss": first["train_loss"],
            "train_loss": last["train_loss"],
            "test_loss": last["test_loss"],
            "test_acc": last["test_acc"],
            "seconds": time.perf_counter() - t1,
        },
        summary,
    )

    # 2. Spectra (appendix C.1): GGN and Hessian, one probe, Ritz vectors of the GGN kept.
    model = result.model.eval()
    loss_fn = nn.CrossEntropyLoss()
    size = args.analysis_batch_size
    data = DataLoader(_subset(train, args.spectrum_samples), batch_size=size)
    spectra = {}
    for curvature in ("ggn", "hessian"):
        t1 = time.perf_counter()
        spectrum = compute_eigenspectrum(
            model,
            loss_fn,
            data,
            curvature=curvature,
            lanczos_steps=args.lanczos_steps,
            save_eigvec=curvature == "ggn",
            seed=args.seed,
        )
        vectors, spectrum.ritz_vectors = spectrum.ritz_vectors, None
        spectrum.save(out / f"spectrum_{curvature}.npz")  # P x m Ritz vectors: GBs, not saved
        spectrum.ritz_vectors = vectors
        name = "GGN" if curvature == "ggn" else "Hessian"
        plot_spectrum(
            spectrum,
            log=True,  # outliers next to the spike at zero
            title=f"VGG16 {name}, Lanczos m={spectrum.probe_num_steps[0]}",
            path=out / f"spectrum_{curvature}.png",
        )
        s = spectrum.summary()
        _report(
            f"spectrum_{curvature}",
            {
                "lambda_max": s["lambda_max"],
                "lambda_min": s["lambda_min"],
                "negative_mass": s["negative_mass"],
                "negative_mass_excl_zero": s["negative_mass_excl_zero"],
                "trace": s["trace"],
                "weights_sum": float(spectrum.weights.sum()),
                "num_samples": int(spectrum.meta["num_samples"]),
                "seconds": time.perf_counter() - t1,
            },
            summary,
        )
        spectra[curvature] = spectrum

    if args.diagonal:  # figure 7: the Monte-Carlo GGN diagonal against Lanczos
        diag = diagonal_approximations(model, loss_fn, data, ["diag_ggn_mc"], seed=args.seed)
        diag = diag["diag_ggn_mc"].detach().cpu()
        for curvature, spectrum in spectra.items():
            c = compare_to_spectrum(diag, spectrum)
            _report(
                f"diag_ggn_mc_vs_{curvature}",
                {k: c[k] for k in ("wasserstein", "diagonal_min", "diagonal_max")},
                summary,
            )
            plot_spectrum(
                spectrum,
                diagonal=diag.numpy(),
                log=True,
                title=f"Diag-GGN (MC) and Lanczos {curvature}",
                path=out / f"diagonal_vs_{curvature}.png",
            )

    # 3. Landscape along the Ritz vectors of the GGN (appendix C.2, figures 9-10).
    t1 = time.perf_counter()
    n = args.landscape_samples
    ggn = spectra["ggn"]
    quick_ranks = (0,) if args.quick else (0, 1, 2, 5)
    indices = select_directions(ggn, top=quick_ranks, bottom=quick_ranks)
    landscape = build_loss_landscape(
        model,
        loss_fn,
        DataLoader(_subset(train, n), batch_size=size),
        DataLoader(_subset(test, n), batch_size=size),
        directions=ggn,
        indices=indices,
        dist=args.dist,
        n_points=args.n_points,
    )
    landscape.save(out / "landscape.npz")
    plot_landscape(landscape, path=out / "landscape.png")
    mid = landscape.t.size // 2
    _report(
        "landscape",
        {
            "directions": len(indices),
            "loss_at_0": float(landscape.train_loss[0, mid]),
            "max_train_loss": float(landscape.train_loss.max()),
            "max_test_loss": float(landscape.test_loss.max()),
            "seconds": time.perf_counter() - t1,
        },
        summary,
    )
    summary["seconds"] = time.perf_counter() - t0
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"results in {out.resolve()} ({summary['seconds']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
