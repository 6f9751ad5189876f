"""Rebuild a model and its data for the analysis commands (from a checkpoint or from names)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from diagnostics.results import data_hash, parameter_hash
from diagnostics.training import build_model
from diagnostics.training.checkpoint import latest_checkpoint, load_checkpoint, read_checkpoint
from diagnostics.training.datasets import dataset_info, load_dataset, subset_indices

__all__ = ["AnalysisSetup", "analysis_setup", "batches", "resolve_checkpoint"]

_EXPECTED = "expected a .pt checkpoint written by `lanczos-optim train`, or its run folder"
# torch.save writes a zip archive (PK..); the legacy format starts with a pickle protocol byte.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


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


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint file named by ``path``: the file itself, or a run folder's latest.

    Only the file's first bytes are read, so that a text file (``stats.jsonl``, a JSON) or any
    other non-checkpoint gets a clear message before torch tries to unpickle it.

    Raises:
        FileNotFoundError: No such file or folder, or a folder without ``checkpoint-*.pt``.
        ValueError: A file that is not a torch checkpoint.
    """
    p = Path(path)
    if p.is_dir():
        found = latest_checkpoint(p)
        if found is None:
            raise FileNotFoundError(
                f"Folder {str(p)!r} holds no checkpoint-*.pt file; {_EXPECTED}."
            )
        return found
    if not p.is_file():
        raise FileNotFoundError(f"Checkpoint {str(p)!r} does not exist; {_EXPECTED}.")
    with p.open("rb") as handle:
        head = handle.read(4)
    if not head.startswith(_TORCH_MAGIC):
        raise ValueError(f"{str(p)!r} is not a checkpoint (not a torch file); {_EXPECTED}.")
    return p


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return dict(read_checkpoint(path).get("meta") or {})
    except ValueError as err:
        if "weights_only" not in str(err) and "Weights only" not in str(err):
            raise
        raise ValueError(
            f"{str(path)!r} is not a lanczos-optim checkpoint: it holds Python objects that are "
            f"not loaded for safety; {_EXPECTED}."
        ) from None


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
        checkpoint: A training checkpoint, or a run folder (its latest checkpoint); its
            ``meta`` names the model and data set.
        model: Model name when there is no checkpoint (default ``"mlp"``).
        dataset: Data set name (default: the checkpoint's, else ``"digits"``).
        data_path: Folder of the data files.
        subset: Use this many samples of each split (seeded).
        batch_size: Batch size of the returned batches.
        seed: Seed of the initialisation and of the subset.
        dtype: Floating dtype of model and inputs.

    Returns:
        The :class:`AnalysisSetup`; ``meta["provenance"]`` identifies checkpoint, weights,
        model and data (see :mod:`diagnostics.results.provenance`).

    Raises:
        FileNotFoundError: A missing checkpoint or data, or a folder without checkpoints.
        ValueError: Unknown names, a file that is not a checkpoint, or a checkpoint that does
            not fit the rebuilt model.
    """
    meta: dict[str, Any] = {}
    if checkpoint is not None:
        checkpoint = resolve_checkpoint(checkpoint)
        meta = _read_meta(checkpoint)
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
    info["provenance"] = {
        **info,
        "param_hash": parameter_hash(net),
        "num_params": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "subset": subset,
        "data_hash": data_hash(splits[0]),
    }
    return AnalysisSetup(net, nn.CrossEntropyLoss(), splits[0], splits[1], {**meta, **info})
