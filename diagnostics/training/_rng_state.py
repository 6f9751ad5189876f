"""Capture and restore every random number generator a training run touches, as plain data."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng_state", "restore_rng_state"]


def capture_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture torch (CPU and CUDA), numpy and Python RNG states as tensors and plain values.

    Args:
        generator: Also capture this generator (e.g. the data loader's shuffling generator).

    Returns:
        A dict that :func:`restore_rng_state` takes and ``weights_only`` loading accepts.
    """
    # The legacy global numpy state is what third-party code draws from.
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    version, state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {
            "version": int(version),
            "state": torch.tensor(state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "generator": generator.get_state() if generator is not None else None,
    }


def restore_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`capture_rng_state` captured.

    CUDA states are restored only when CUDA is available with the same number of devices.

    Args:
        state: The captured states.
        generator: Restore this generator from the captured ``generator`` state (if any).
    """
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    legacy = (npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002 - the legacy global state
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])
