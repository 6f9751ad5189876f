"""The result of :func:`~diagnostics.build_loss_landscape` and its file format."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from diagnostics.results import load_npz, save_npz

__all__ = ["Landscape"]

_KIND = "landscape"
_VERSION = 1
_LINES = ("train_loss", "train_acc", "test_loss", "test_acc", "quadratic")
_PER_DIRECTION = ("slope", "curvature", "ritz_value", "direction_index", "direction_norm")
_PLANE = tuple(f"plane_{k}" for k in _LINES)


class Landscape:
    r"""Loss and accuracy at :math:`w + t v` for several directions :math:`v`.

    :meth:`save` writes every attribute below as a key of one ``.npz`` file, next to
    ``format``, ``format_version`` and ``meta`` (JSON).

    Attributes:
        t: float64 ``[n]``, the step sizes ``linspace(-dist, dist, n_points)``.
        train_loss, train_acc, test_loss, test_acc: float64 ``[k, n]`` per direction and step
            (NaN without test data; accuracy NaN unless targets are class indices).
        quadratic: float64 ``[k, n]``, the quadratic model
            :math:`L_0 + t\, g^\top v + \tfrac12 t^2\, v^\top C v`.
        slope: :math:`g^\top v` ``[k]``; curvature: :math:`v^\top C v` ``[k]``.
        ritz_value: ``[k]`` the direction's Ritz value (NaN for given tensors).
        direction_index: ``[k]`` its column in the spectrum's Ritz vectors (-1 for tensors).
        direction_norm: ``[k]`` :math:`\|v\|` (1 for Ritz vectors without filter normalisation).
        labels: str ``[k]``, a legend label per direction.
        loss0: float64 scalar, the training loss :math:`L_0` at :math:`w`.
        plane_train_loss, plane_train_acc, plane_test_loss, plane_test_acc, plane_quadratic:
            float64 ``[n, n]`` at :math:`w + a v_i + b v_j` (rows: ``a``, columns: ``b``), when
            a plane was asked for.
        meta: ``dist``, ``n_points``, ``bn_mode``, ``curvature_source`` (``"ritz"``,
            ``"hessian"`` or ``"ggn"``), ``filter_normalize``, ``plane`` (``[i, j]`` or None),
            ``num_params``, ``num_train_samples``, ``num_test_samples``, ``spectrum``
            (the spectrum's metadata, if any), ``wall_time_s``, ``versions``.

    Example:
        >>> import torch
        >>> from diagnostics.analysis import build_loss_landscape
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(2, 1).double()
        >>> x, y = torch.randn(16, 2).double(), torch.randn(16, 1).double()
        >>> v = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        >>> ls = build_loss_landscape(model, torch.nn.MSELoss(), (x, y), directions=[v], n_points=5)
        >>> ls.train_loss.shape, float(ls.t[2])
        ((1, 5), 0.0)
        >>> bool(abs(ls.train_loss[0, 2] - ls.loss0) < 1e-12)  # t = 0 is the model itself
        True
    """

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.t = np.asarray(arrays["t"], dtype=np.float64)
        for key in (*_LINES, *_PER_DIRECTION):
            setattr(self, key, np.asarray(arrays[key], dtype=np.float64))
        self.labels = [str(s) for s in arrays["labels"]]
        self.loss0 = float(arrays["loss0"])
        self.meta = meta
        for key in _PLANE:
            setattr(self, key, np.asarray(arrays[key]) if key in arrays else None)
        k, n = len(self.labels), self.t.shape[0]
        if any(getattr(self, key).shape != (k, n) for key in _LINES) or any(
            getattr(self, key).shape != (k,) for key in _PER_DIRECTION
        ):
            raise ValueError(f"Inconsistent landscape arrays for {k} directions and {n} steps.")

    train_loss: np.ndarray
    train_acc: np.ndarray
    test_loss: np.ndarray
    test_acc: np.ndarray
    quadratic: np.ndarray
    slope: np.ndarray
    curvature: np.ndarray
    ritz_value: np.ndarray
    direction_index: np.ndarray
    direction_norm: np.ndarray
    plane_train_loss: np.ndarray | None
    plane_train_acc: np.ndarray | None
    plane_test_loss: np.ndarray | None
    plane_test_acc: np.ndarray | None
    plane_quadratic: np.ndarray | None

    def __repr__(self) -> str:
        return (
            f"Landscape(directions={self.num_directions}, n_points={self.t.size}, "
            f"dist={self.meta.get('dist')}, test={self.has_test}, plane={self.has_plane})"
        )

    @property
    def num_directions(self) -> int:
        """Number of directions :math:`k`."""
        return len(self.labels)

    @property
    def has_test(self) -> bool:
        """Whether test data were evaluated."""
        return bool(self.meta.get("num_test_samples"))

    @property
    def has_plane(self) -> bool:
        """Whether a 2-D plane was evaluated."""
        return self.plane_train_loss is not None

    @property
    def is_classification(self) -> bool:
        """Whether accuracies were recorded (integer class targets)."""
        return bool(np.isfinite(self.train_acc).any())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the landscape to one ``.npz`` file atomically (keys: see the class docstring)."""
        arrays: dict[str, Any] = {"t": self.t, "labels": np.array(self.labels, dtype=str)}
        arrays |= {k: getattr(self, k) for k in (*_LINES, *_PER_DIRECTION)}
        arrays |= {k: getattr(self, k) for k in _PLANE if getattr(self, k) is not None}
        arrays["loss0"] = np.float64(self.loss0)
        save_npz(path, _KIND, arrays, self.meta, version=_VERSION)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Landscape:
        """Read a landscape written by :meth:`save`.

        Raises:
            ValueError: If the file is corrupt, not a landscape file, of another version or
                inconsistent.
        """
        arrays, meta = load_npz(path, _KIND, version=_VERSION)
        missing = [k for k in ("t", "labels", "loss0", *_LINES, *_PER_DIRECTION) if k not in arrays]
        if missing:
            raise ValueError(f"{str(path)!r} is a landscape file without {missing}.")
        try:
            return cls(arrays, meta)
        except ValueError as exc:
            raise ValueError(f"{str(path)!r}: {exc}") from exc
