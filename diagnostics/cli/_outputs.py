"""Where the analysis commands write, what they refuse to overwrite, and how runs are named."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from diagnostics.cli._setup import resolve_checkpoint
from diagnostics.training.checkpoint import latest_checkpoint, read_checkpoint

__all__ = ["claim_outputs", "default_output", "read_rows", "recorded_provenance", "run_label"]

RESULTS = Path("results")


def default_output(args: argparse.Namespace, command: str, suffix: str, tag: str = "") -> Path:
    """``--out``, or beside the checkpoint, or a new time-stamped file under ``results/``.

    Beside a checkpoint the name is ``<checkpoint stem>-<command><tag><suffix>`` (e.g.
    ``checkpoint-00005-spectrum-ggn.npz``); without one it is
    ``results/<command><tag>-<model>-<dataset>-<YYYYmmdd-HHMMSS><suffix>``, numbered if taken.
    """
    if args.out:
        return Path(args.out)
    if args.checkpoint:
        ckpt = resolve_checkpoint(args.checkpoint)
        return ckpt.parent / f"{ckpt.stem}-{command}{tag}{suffix}"
    RESULTS.mkdir(exist_ok=True)
    model, data = args.model or "mlp", args.dataset or "digits"
    stem = f"{command}{tag}-{model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = RESULTS / f"{stem}{suffix}", 1
    while path.exists() or path.with_suffix(".png").exists():
        n += 1
        path = RESULTS / f"{stem}-{n}{suffix}"
    return path


def claim_outputs(*paths: Path, overwrite: bool) -> None:
    """Refuse, before any work, to replace an existing result unless ``overwrite``.

    Raises:
        FileExistsError: One line naming the file and the two ways out.
    """
    if overwrite:
        return
    for path in paths:
        if path.exists():
            raise FileExistsError(
                f"{str(path)!r} exists; pass --overwrite to replace it, or --out for another file."
            )


def recorded_provenance(meta: dict[str, Any]) -> dict[str, Any]:
    """The provenance a result file records (older or library-written files: what they have)."""
    found = {k: meta[k] for k in ("num_params", "param_hash") if meta.get(k) is not None}
    return {**found, **(meta.get("provenance") or {})}


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a training ``stats.jsonl``.

    Raises:
        ValueError: If a line is not a JSON object.
    """
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            raise ValueError(
                f"{str(path)!r} line {n} is not a JSON object; a training stats.jsonl has one "
                "per epoch."
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"{str(path)!r} holds no rows; a training stats.jsonl has one per epoch.")
    return rows


def run_label(stats: Path) -> tuple[str, dict[str, Any]]:
    """A legend label for a training run from its folder's latest checkpoint, and its meta.

    ``"<optimizer> (lr <lr>)"`` when the folder holds a readable checkpoint, else the folder
    name.
    """
    folder = stats.parent
    try:
        ckpt = latest_checkpoint(folder)
        meta = dict(read_checkpoint(ckpt).get("meta") or {}) if ckpt else {}
    except (OSError, ValueError):
        meta = {}
    if meta.get("optimizer"):
        lr = meta.get("lr")
        return f"{meta['optimizer']}" + (f" (lr {lr:g})" if lr is not None else ""), meta
    return folder.resolve().name or str(stats), meta
