"""Session-wide test settings: offline W&B into a temporary folder, no network."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _wandb_offline(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ["WANDB_DIR"] = str(tmp_path_factory.mktemp("wandb"))
    os.environ.setdefault("WANDB_SILENT", "true")
