"""Read what an offline W&B run wrote (the run-*.wandb record log), for tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK = 32768
_HEADER = 7


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B run file")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def offline_runs(wandb_dir: str | Path) -> list[Path]:
    return sorted(Path(wandb_dir).glob("wandb/offline-run-*/run-*.wandb"))


def _kinds(run_file: str | Path) -> list[str]:
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for chunk in _chunks(Path(run_file).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        out.append(rec.WhichOneof("record_type"))
    return out


def history(run_file: str | Path, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The logged history rows, and the run's config under the key ``"__config__"``.

    W&B's service process may still be writing the file when ``finish()`` returns: wait for the
    run's ``exit`` record first.
    """
    import time

    from wandb.proto import wandb_internal_pb2 as pb

    deadline = time.monotonic() + timeout
    while "exit" not in _kinds(run_file) and time.monotonic() < deadline:
        time.sleep(0.1)

    rows: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    for chunk in _chunks(Path(run_file).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append(
                {
                    (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                    for i in rec.history.item
                }
            )
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in rec.config.update})
        elif kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in rec.run.config.update})
    if config:
        rows.append({"__config__": config})
    return rows
