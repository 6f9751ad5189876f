"""Session-wide test settings: offline W&B into a temporary folder, no network."""

from __future__ import annotations

import os

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
