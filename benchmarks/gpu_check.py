"""GPU check: seconds per full-data Lanczos iteration for VGG16 on CIFAR-100-shaped data.

Measures, on one CUDA device, the Hessian and GGN curvature of VGG16 (P = 15,291,300, as in the
paper) over 50,000 samples of 3x32x32 (CIFAR-100 from torchvision when present, synthetic
otherwise): seconds per Lanczos iteration (one full-data product plus the reorthogonalisation)
and peak GPU memory for each ``precision`` policy of the operators (``"highest"``: float32
with TF32 off; ``"tf32"``; ``"bf16"``: the forward under bfloat16 autocast) and with
``torch.compile`` where it runs; the product's relative error against ``"highest"`` says
whether a variant stays correct. Prints the comparison with the paper's 26.5 s (GGN) and
27.9 s (Hessian) per iteration on a GTX 1080 Ti. Writes benchmarks/results/gpu.md.

Run through ``bash benchmarks/gpu_check.sh`` (at most ~8 minutes on an H100).
"""

from __future__ import annotations

import argparse
import time

import torch
from _report import write_report  # benchmarks/_report.py (this script's folder)
from torch import nn

from diagnostics.training.models import VGG16
from lanczos_optim import GGNOperator, HessianOperator, lanczos

PAPER = {"ggn": 26.5, "hessian": 27.9}


def _data(n: int, batch: int, device: torch.device) -> tuple[list, str]:
    try:
        from diagnostics.training.datasets import load_dataset

        x, y = load_dataset("cifar100").tensors
        x, y, source = x[:n], y[:n], "CIFAR-100"
    except (FileNotFoundError, ValueError):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, 32, 32, generator=gen)
        y = torch.randint(0, 100, (n,), generator=gen)
        source = "synthetic CIFAR-100-shaped"
    x, y = x.to(device), y.to(device)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)], source


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _iteration_seconds(op, steps: int) -> tuple[float, float, torch.Tensor]:
    cuda = op.device.type == "cuda"
    _sync(op.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator(device=op.device).manual_seed(0)
    v = torch.randn(op.shape[0], device=op.device, generator=gen)
    product = op @ v  # warm-up, and the product compared across variants
    _sync(op.device)
    t0 = time.perf_counter()
    lanczos(op, steps, generator=torch.Generator(device=op.device).manual_seed(1))
    _sync(op.device)
    seconds = (time.perf_counter() - t0) / steps
    memory = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    return seconds, memory, product.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=3, help="Lanczos iterations timed")
    parser.add_argument("--out", default="benchmarks/results/gpu.md")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run of the script")
    args = parser.parse_args()
    if args.cpu_smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        raise SystemExit("gpu_check: no CUDA device; this check needs a GPU (or --cpu-smoke).")
    torch.manual_seed(0)
    model = VGG16(num_classes=100).to(device)
    data, source = _data(args.samples, args.batch_size, device)
    num_params = sum(p.numel() for p in model.parameters())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU smoke run"

    # variant -> (operator precision, compiled model)
    variants = {
        "highest (float32)": ("highest", False),
        "tf32": ("tf32", False),
        "bf16": ("bf16", False),
        "torch.compile": ("highest", True),
    }
    lines = [
        f"{name}; VGG16 without BN, P = {num_params:,}; {args.samples:,} {source} samples in "
        f"batches of {args.batch_size}; {args.steps} Lanczos iterations timed after a warm-up.",
        "",
        "| curvature | variant | s / iteration | peak GPU GiB | rel. error of product vs highest "
        "| paper (GTX 1080 Ti) s / it | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for curvature, cls in (("ggn", GGNOperator), ("hessian", HessianOperator)):
        reference = None
        for variant, (precision, compiled) in variants.items():
            net = torch.compile(model) if compiled else model
            op = cls(net, nn.CrossEntropyLoss(), data, precision=precision)
            try:
                sec, mem, prod = _iteration_seconds(op, args.steps)
            except Exception as err:  # report, do not hide, what does not run
                first = str(err).strip().splitlines()[0][:90] if str(err).strip() else ""
                lines.append(
                    f"| {curvature} | {variant} | fails: {type(err).__name__} {first} | | | | |"
                )
                print(lines[-1], flush=True)
                continue
            if reference is None:
                reference = prod
            err = float((prod - reference).norm() / reference.norm())
            lines.append(
                f"| {curvature} | {variant} | {sec:.2f} | {mem:.1f} | {err:.1e} | "
                f"{PAPER[curvature]} | {PAPER[curvature] / sec:.1f}x |"
            )
            print(lines[-1], flush=True)
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
