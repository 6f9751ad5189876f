"""Every script in ``examples/`` runs in its quick mode and produces sane outputs.

Each example runs in a subprocess (``sys.executable``), offline W&B into a temporary
``WANDB_DIR``, its ``--out`` in a temporary folder. Examples are found by a glob, so a new one is
covered at once by the generic checks (exit code 0, no traceback, files it wrote non-empty);
the known ones also get checks on the numbers they print as ``name: key=value ...`` lines.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith("_"))
TIMEOUT_S = 600
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

_LINE = re.compile(r"^([A-Za-z][\w.\-]*): ((?:[\w.\-]+=\S+ ?)+)$")


class Run:
    """A finished example run: exit code, output, output folder, W&B folder."""

    def __init__(self, proc: subprocess.CompletedProcess, out: Path, wandb_dir: Path) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.out = out
        self.wandb_dir = wandb_dir

    def numbers(self) -> dict[str, dict[str, float]]:
        """The ``name: key=value ...`` lines of stdout, values as floats."""
        found: dict[str, dict[str, float]] = {}
        for line in self.stdout.splitlines():
            match = _LINE.match(line.strip())
            if not match:
                continue
            values = {}
            for pair in match.group(2).split():
                key, _, value = pair.partition("=")
                try:
                    values[key] = float(value)
                except ValueError:
                    continue
            if values:
                found[match.group(1)] = values
        return found

    def files(self) -> set[str]:
        return {p.name for p in self.out.iterdir()} if self.out.is_dir() else set()


def _accepts_out(path: Path) -> bool:
    return '"--out"' in path.read_text()


def run_example(path: Path, tmp_path: Path, *extra: str) -> Run:
    out = tmp_path / "out"
    wandb_dir = tmp_path / "wandb"
    wandb_dir.mkdir(exist_ok=True)
    args = [sys.executable, str(path), "--quick", *extra]
    if _accepts_out(path):
        args += ["--out", str(out)]
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_SILENT": "true",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "MPLBACKEND": "Agg",
    }
    proc = subprocess.run(
        args,
        cwd=tmp_path,  # default output folders (results/...) land in tmp_path, not the repo
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return Run(proc, out, wandb_dir)


def _fashion_mnist_present() -> bool:
    from diagnostics.training.datasets import FASHION_MNIST_DIRS

    return any(
        (Path(d) / f"{stem}{ext}").is_file()
        for d in FASHION_MNIST_DIRS
        for stem in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
        for ext in ("", ".gz")
    )


# ----------------------------------------------------------------------------- per example
def check_random_matrices(run: Run) -> None:
    nums = run.numbers()
    names = set(nums)
    for prefix in ("fig2_wigner_P225", "fig3_marchenko_pastur_q2_P225", "fig5_wigner_P500"):
        assert prefix in names, f"missing {prefix!r} in {sorted(names)}"
    assert {"fig6_synthetic_m5", "fig6_synthetic_m15", "fig6_synthetic_m30"} <= names
    for name, n in nums.items():
        # The paper's point: Lanczos is far closer to the spectrum than the diagonal.
        assert 0 <= n["W1_lanczos"] < n["W1_diagonal"], (name, n)
        # Ritz values interlace: they lie inside [lambda_min, lambda_max].
        tol = 1e-8 * max(abs(n["lambda_min"]), abs(n["lambda_max"]))
        assert n["lambda_min"] - tol <= n["ritz_min"] <= n["ritz_max"] <= n["lambda_max"] + tol
        if "W1_exact_to_law" in n:
            assert (
                n["W1_exact_to_law"] < n["W1_lanczos"] < 0.1 * (n["lambda_max"] - n["lambda_min"])
            )
    # Figure 6: more steps, closer; the diagonal stays inside the bulk and misses the outliers.
    w1 = [nums[f"fig6_synthetic_m{m}"]["W1_lanczos"] for m in (5, 15, 30)]
    assert w1[0] > w1[1] > w1[2], w1
    m30 = nums["fig6_synthetic_m30"]
    assert m30["ritz_max"] == pytest.approx(m30["lambda_max"], rel=1e-6)
    assert m30["ritz_min"] == pytest.approx(m30["lambda_min"], rel=1e-6)
    assert 0 < m30["diag_min"] < m30["diag_max"] < 15 < m30["lambda_max"]
    assert m30["ritz_above_15"] > nums["fig6_synthetic_m5"]["ritz_above_15"]
    # Marchenko-Pastur with q = 2: half the spectrum is exactly zero, and Lanczos sees it.
    mp = nums["fig3_marchenko_pastur_q2_P225"]
    assert mp["exact_mass_at_zero"] == pytest.approx(0.5, abs=0.01)
    assert mp["lanczos_mass_near_zero"] == pytest.approx(0.5, abs=0.1)
    files = run.files()
    assert "summary.json" in files
    assert {
        "fig2_wigner_P225_lanczos.png",
        "fig2_wigner_P225_histogram.png",
        "fig5_wigner_diagonal_vs_lanczos.png",
        "fig5_marchenko_pastur_diagonal_vs_lanczos.png",
        "fig6a_synthetic_histogram.png",
        "fig6_synthetic_m5.png",
        "fig6_synthetic_m15.png",
        "fig6_synthetic_m30.png",
        "fig6c_synthetic_diagonal.png",
    } <= files
    summary = json.loads((run.out / "summary.json").read_text())
    assert set(summary) == names
    assert summary["fig6_synthetic_m30"]["W1_lanczos"] == pytest.approx(m30["W1_lanczos"], rel=1e-3)


def check_fashion_mnist(run: Run) -> None:
    from diagnostics import Landscape, Spectrum

    nums = run.numbers()
    sgd = nums["train_sgd"]
    assert sgd["train_loss"] < sgd["first_epoch_train_loss"], sgd
    assert 0.0 <= sgd["test_acc"] <= 1.0
    newton = nums["train_lanczos_newton"]
    assert math.isfinite(newton["train_loss"])
    assert newton["train_loss"] < math.log(10) + 0.5
    hess, ggn = nums["spectrum_hessian"], nums["spectrum_ggn"]
    for s in (hess, ggn):
        assert s["weights_sum"] == pytest.approx(1.0, abs=1e-9)
        assert 0 < s["lambda_max"] < 1e4
        assert s["lambda_min"] < s["lambda_max"]
    assert ggn["lambda_min"] > -1e-6 * ggn["lambda_max"]  # the GGN is positive semi-definite
    assert ggn["negative_mass"] == 0.0
    for kind, target in (
        ("diag_ggn_exact", "ggn"),
        ("diag_ggn_mc", "ggn"),
        ("diag_hessian", "hessian"),
    ):
        c = nums[f"{kind}_vs_{target}"]
        assert c["W1"] >= 0
        assert math.isfinite(c["W1"])
        # The diagonal misses the top of the spectrum (paper, section 7.1).
        assert c["diag_max"] < c["lambda_max"]
    assert nums["diag_ggn_exact_vs_ggn"]["diag_min"] >= 0
    top = nums["landscape_top0"]
    assert max(top["loss_at_plus_dist"], top["loss_at_minus_dist"]) > top["loss_at_0"]
    losses0 = {n["loss_at_0"] for name, n in nums.items() if name.startswith("landscape_")}
    assert len(losses0) == 1  # every direction starts from the same trained weights
    files = run.files()
    assert {
        "training.png",
        "spectrum_hessian.png",
        "spectrum_ggn.png",
        "diagonal_ggn.png",
        "diagonal_hessian.png",
        "landscape.png",
        "summary.json",
    } <= files
    spectrum = Spectrum.load(run.out / "spectrum_hessian.npz")
    assert spectrum.lambda_max == pytest.approx(hess["lambda_max"], rel=1e-3)
    landscape = Landscape.load(run.out / "landscape.npz")
    assert landscape.num_directions == 4
    assert np.isfinite(landscape.test_loss).all()
    assert (run.out / "train-sgd" / "stats.jsonl").is_file()


def check_vgg16_cifar(run: Run) -> None:
    nums = run.numbers()
    train = nums["train"]
    assert train["num_params"] == 15_291_300  # the paper's VGG16 on CIFAR-100
    assert math.isfinite(train["train_loss"])
    assert math.isfinite(train["test_loss"])
    for curvature in ("ggn", "hessian"):
        s = nums[f"spectrum_{curvature}"]
        assert s["weights_sum"] == pytest.approx(1.0, abs=1e-6)
        assert s["lambda_max"] > 0
        assert math.isfinite(s["lambda_min"])
    assert nums["spectrum_ggn"]["lambda_min"] > -1e-4 * nums["spectrum_ggn"]["lambda_max"]
    landscape = nums["landscape"]
    assert landscape["directions"] == 2
    assert math.isfinite(landscape["max_test_loss"])
    files = run.files()
    expected = {"training.png", "spectrum_ggn.png", "spectrum_hessian.png", "landscape.png"}
    assert expected | {"spectrum_ggn.npz", "landscape.npz", "summary.json"} <= files
    assert any((run.out / "train").glob("checkpoint-*.pt"))


def check_wandb_tracking(run: Run) -> None:
    nums = run.numbers()
    for name in ("run_lanczos_saddle_free", "run_sgd"):
        n = nums[name]
        assert 0.0 <= n["test_acc"] <= 1.0
        assert n["lambda_max"] > 0
        assert 0.0 <= n["negative_mass"] <= 1.0
    runs = sorted((run.wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2, runs
    for folder in runs:
        assert any(folder.glob("run-*.wandb")), list(folder.iterdir())
        assert str(folder) in run.stdout
    assert "wandb sync " in run.stdout
    assert {"training.png", "summary.json"} <= run.files()
    summary = json.loads((run.out / "summary.json").read_text())
    assert summary["mode"] == "offline"


def check_swap_optimizer(run: Run) -> None:
    losses = [float(x) for x in re.findall(r"training loss ([0-9.eE+-]+)", run.stdout)]
    assert losses
    assert all(math.isfinite(x) for x in losses)


def check_framework_example(prefix: str) -> Callable[[Run], None]:
    def check(run: Run) -> None:
        nums = {k: v for k, v in run.numbers().items() if k.startswith(prefix)}
        assert nums, run.stdout[-2000:]
        for name, n in nums.items():
            assert n["last_loss"] < n["first_loss"], (name, n)

    return check


CHECKS: dict[str, Callable[[Run], None]] = {
    "lightning_example": check_framework_example("lightning."),
    "huggingface_example": check_framework_example("huggingface."),
    "random_matrices": check_random_matrices,
    "fashion_mnist": check_fashion_mnist,
    "vgg16_cifar": check_vgg16_cifar,
    "wandb_tracking": check_wandb_tracking,
    "swap_optimizer": check_swap_optimizer,
}


# ----------------------------------------------------------------------------- tests
def test_examples_are_found() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"random_matrices", "fashion_mnist", "vgg16_cifar", "wandb_tracking"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_structure(path: Path) -> None:
    """A docstring saying how to run it, ``main(argv)``, ``--quick``, a ``__main__`` guard."""
    tree = ast.parse(path.read_text())
    doc = ast.get_docstring(tree)
    assert doc, f"{path.name}: no module docstring"
    assert "--quick" in doc, f"{path.name}: the module docstring must say how to run it"
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert mains, f"{path.name}: no main() function"
    assert [a.arg for a in mains[0].args.args] == ["argv"], f"{path.name}: main(argv=None)"
    assert '"--quick"' in path.read_text()
    assert "__main__" in path.read_text()


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S + 60)
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_quick_run(path: Path, tmp_path: Path) -> None:
    run = run_example(path, tmp_path)
    if path.stem == "fashion_mnist" and not _fashion_mnist_present():
        assert run.returncode == 2, run.stderr
        assert INSTALL_HINT in run.stderr
        pytest.skip(f"Fashion-MNIST not installed: `{INSTALL_HINT}`")
    assert run.returncode == 0, f"{path.name} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    if run.out.is_dir():
        written = [p for p in run.out.rglob("*") if p.is_file()]
        assert written, f"{path.name} wrote nothing into --out"
        empty = [str(p) for p in written if p.stat().st_size == 0]
        assert not empty, f"empty files: {empty}"
        assert any(p.suffix == ".png" for p in written), f"{path.name} wrote no figure"
    check = CHECKS.get(path.stem)
    if check is not None:
        check(run)


@pytest.mark.slow
def test_fashion_mnist_example_without_data(tmp_path: Path) -> None:
    """Missing data: one line on stderr saying how to install it, exit code 2, no traceback."""
    path = ROOT / "examples" / "fashion_mnist.py"
    run = run_example(path, tmp_path, "--data-path", str(tmp_path / "no-such-folder"))
    assert run.returncode == 2
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, run.stderr
    assert INSTALL_HINT in lines[0]
    assert not run.out.exists()


@pytest.mark.slow
def test_vgg16_example_without_cifar(tmp_path: Path) -> None:
    """No CIFAR-100 files and no --download: a clear error and exit code 2, no network."""
    path = ROOT / "examples" / "vgg16_cifar.py"
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(path), "--data-path", str(tmp_path), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "CIFAR-100" in lines[0]
    assert "download" in lines[0]
    assert not out.exists()
