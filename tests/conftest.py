"""Session-wide test settings: offline W&B into a temporary folder, no network."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _wandb_offline(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_DIR"] = str(tmp_path_factory.mktemp("wandb"))
    os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    # The tests use tiny models: on the shared 2-core machine, thread-pool overhead made dense
    # reference computations several times slower than a single thread.
    torch.set_num_threads(1)


@contextmanager
def _meta_default_device() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.fixture
def device_trap() -> Callable[[], AbstractContextManager[None]]:
    """A context in which tensors created without ``device=`` land on ``meta``.

    Mixing such a tensor with the CPU tensors of a model raises, as mixing CPU and CUDA tensors
    would on a GPU: the device-placement tests use it to catch device mixing without a GPU.
    """
    return _meta_default_device


_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run_benchmark(tmp_path: Path) -> Callable[..., str]:
    """Run ``benchmarks/<name>.py`` with ``args`` and ``--out`` in ``tmp_path``; its report's text.

    The script runs in a child process from the repository root, as a user runs it; a failure
    shows the end of its stderr.
    """

    def run(name: str, *args: str, timeout: float = 600) -> str:
        out = tmp_path / f"{name}.md"
        cmd = [sys.executable, str(_ROOT / "benchmarks" / f"{name}.py"), *args, "--out", str(out)]
        env = {**os.environ, "PYTHONPATH": str(_ROOT)}
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, cwd=_ROOT, timeout=timeout
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return out.read_text()

    return run
