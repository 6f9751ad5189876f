"""Rebuild a model and its data for the analysis commands (from a checkpoint or from names)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from diagnostics.checkpoint import load_checkpoint, read_checkpoint
from diagnostics.datasets import dataset_info, load_dataset, subset_indices
from diagnostics.models import build_model

__all__ = ["AnalysisSetup", "analysis_setup", "batches"]


@dataclass
class AnalysisSetup:
    """A model ready for analysis with its train and test batches."""

    model: nn.Module
    loss_fn: nn.Module
    train: list[tuple[Tensor, Tensor]]
    test: list[tuple[Tensor, Tensor]]
    meta: dict[str, Any]


def batches(dataset: Dataset, batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Materialise a data set as a list of ``(inputs, targets)`` batches in a fixed order."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
    return [(x, y) for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False)]


def analysis_setup(
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    model: str | None = None,
    dataset: str | None = None,
    data_path: str | os.PathLike[str] | None = None,
    subset: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> AnalysisSetup:
    """Build the model (trained weights from ``checkpoint``, else a seeded initialisation).

    Args:
        checkpoint: A training checkpoint; its ``meta`` names the model and data set.
        model: Model name when there is no checkpoint (default ``"mlp"``).
        dataset: Data set name (default: the checkpoint's, else ``"digits"``).
        data_path: Folder of the data files.
        subset: Use this many samples of each split (seeded).
        batch_size: Batch size of the returned batches.
        seed: Seed of the initialisation and of the subset.
        dtype: Floating dtype of model and inputs.

    Returns:
        The :class:`AnalysisSetup`.

    Raises:
        FileNotFoundError: A missing checkpoint or data.
        ValueError: Unknown names, or a checkpoint that does not fit the rebuilt model.
    """
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        meta = dict(read_checkpoint(checkpoint).get("meta") or {})
        if "model" not in meta:
            raise ValueError(f"Checkpoint {str(checkpoint)!r} does not record its model name.")
        model = model or meta["model"]
        dataset = dataset or meta.get("dataset")
    model, dataset = model or "mlp", dataset or "digits"
    input_shape, num_classes = dataset_info(dataset)
    if meta and (list(input_shape), num_classes) != (meta["input_shape"], meta["num_classes"]):
        raise ValueError(
            f"Checkpoint {str(checkpoint)!r} was trained on inputs {meta['input_shape']} with "
            f"{meta['num_classes']} classes; dataset {dataset!r} has {list(input_shape)} and "
            f"{num_classes}."
        )
    torch.manual_seed(seed)
    net = build_model(
        model, input_shape=input_shape, num_classes=num_classes, **meta.get("model_kwargs", {})
    )
    if checkpoint is not None:
        load_checkpoint(checkpoint, model=net)
    net = net.to(dtype)
    splits = []
    for train in (True, False):
        x, y = load_dataset(dataset, train=train, root=data_path, seed=seed).tensors
        if subset is not None:  # at most ``subset`` samples of each split
            if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
                raise ValueError(f"subset must be an int >= 1; got {subset!r}.")
            keep = torch.from_numpy(subset_indices(len(y), min(subset, len(y)), seed))
            x, y = x[keep], y[keep]
        splits.append(batches(torch.utils.data.TensorDataset(x.to(dtype), y), batch_size))
    info = {
        "model": model,
        "dataset": dataset,
        "checkpoint": str(checkpoint) if checkpoint else None,
    }
    return AnalysisSetup(net, nn.CrossEntropyLoss(), splits[0], splits[1], {**meta, **info})
