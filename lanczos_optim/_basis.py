"""Storage of a Lanczos basis, possibly on another device or in a lower precision."""

from __future__ import annotations

import torch
from torch import Tensor

_CHUNK = 16
_CHUNK_BYTES = 32 * 2**20
_DGKS = 2**-0.5
#: Entries of one block of converted columns (4 MiB in float32): no full converted row is live.
_BLOCK = 2**20


class LanczosBasis:
    """Orthonormal Lanczos vectors kept in ``storage_dtype`` on ``storage_device``.

    All arithmetic runs on the compute device in the compute dtype. When the storage differs,
    vectors move over in groups of at most 16 vectors and 32 MiB, each group in blocks of at
    most 2^20 converted entries (so no full converted row is live; a vector of at most
    2^20 / group-size entries gives the values of one product over the group, longer ones
    sum the float32 coordinates of their blocks, which can change the last bits); when it is
    the same, one matrix product gives the coordinates and the correction is subtracted
    block by block of columns.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        storage_dtype: torch.dtype | None = None,
        storage_device: torch.device | str | None = None,
    ) -> None:
        self.dtype, self.device = dtype, device
        sdtype = storage_dtype or dtype
        sdevice = torch.device(storage_device) if storage_device is not None else device
        self.data = torch.empty(capacity, dim, dtype=sdtype, device=sdevice)
        self.size = 0
        self._direct = sdtype == dtype and sdevice == device
        itemsize = dtype.itemsize
        self._chunk = max(1, min(_CHUNK, _CHUNK_BYTES // max(1, dim * itemsize)))

    @classmethod
    def of(cls, data: Tensor, *, dtype: torch.dtype, device: torch.device) -> LanczosBasis:
        """View a stored ``[m, P]`` basis (any storage) for arithmetic in ``dtype``/``device``."""
        basis = cls(0, data.shape[1], dtype=dtype, device=device)
        basis.data, basis.size = data, data.shape[0]
        basis._direct = data.dtype == dtype and data.device == torch.device(device)
        return basis

    def append(self, v: Tensor) -> Tensor:
        """Store ``v`` as the next basis vector; return the stored row (a view of the basis).

        When the storage is the compute dtype and device the row equals ``v`` exactly, so a
        caller may keep the row instead of its own copy of ``v``.
        """
        row = self.data[self.size]
        row.copy_(v)
        self.size += 1
        return row

    @property
    def exact_rows(self) -> bool:
        """Whether a stored row equals the appended vector exactly (same dtype and device)."""
        return self._direct

    def get(self, j: int) -> Tensor:
        """Basis vector ``j`` in the compute dtype on the compute device."""
        return self.data[j].to(self.device, self.dtype)

    def _groups(self):
        """Row groups ``(start, stop)`` of at most ``self._chunk`` stored vectors."""
        for start in range(0, self.size, self._chunk):
            yield start, min(start + self._chunk, self.size)

    def _columns(self, rows: int):
        """Column ranges whose converted block of ``rows`` rows has at most ``_BLOCK`` entries."""
        dim = self.data.shape[1]
        width = max(1, _BLOCK // max(1, rows))
        for start in range(0, dim, width):
            yield start, min(start + width, dim)

    def _converted(self, start: int, stop: int, lo: int, hi: int) -> Tensor:
        """Stored rows ``start:stop``, columns ``lo:hi``, in the compute dtype and device."""
        return self.data[start:stop, lo:hi].to(self.device, self.dtype)

    def _group_coordinates(self, start: int, stop: int, w: Tensor) -> Tensor:
        """``V[start:stop] w``, summed over column blocks (one block: one product, as before)."""
        blocks = iter(self._columns(stop - start))
        lo, hi = next(blocks)
        c = self._converted(start, stop, lo, hi) @ w[lo:hi]
        for lo, hi in blocks:
            c += self._converted(start, stop, lo, hi) @ w[lo:hi]
        return c

    def _sub_combination(self, w: Tensor, start: int, stop: int, c: Tensor) -> None:
        """``w -= V[start:stop]^T c`` column block by column block (no ``[P]`` temporary).

        Each entry gets the same products summed in the same order as one product over all
        columns, so the values are those of ``w -= V^T c`` to the bit.
        """
        for lo, hi in self._columns(stop - start):
            q = self.data[start:stop, lo:hi]
            q = q if self._direct else q.to(self.device, self.dtype)
            w[lo:hi].sub_(q.T @ c)

    def _project_once(self, w: Tensor) -> None:
        """``w -= V^T V w`` in place, converting and subtracting block by block of columns."""
        if self._direct:
            self._sub_combination(w, 0, self.size, self.data[: self.size] @ w)
            return
        for start, stop in self._groups():
            self._sub_combination(w, start, stop, self._group_coordinates(start, stop, w))

    def project_out(self, w: Tensor, *, overwrite: bool = False) -> Tensor:
        r"""Remove from ``w`` its components along the stored vectors.

        Classical Gram-Schmidt, repeated once when the first pass cancelled much of ``w``
        (Daniel, Gragg, Kaufman & Stewart, 1976): a second pass runs only if
        :math:`\|w'\| < \|w\| / \sqrt{2}`. In Lanczos the recurrence has already removed
        almost all of ``w``'s components, so the second pass (a full read of the basis) is
        rarely needed; with it "twice is enough" holds as before.

        With ``overwrite`` the projection is written into ``w`` itself (no copy); otherwise
        ``w`` is left unchanged and a new tensor is returned.
        """
        before = torch.linalg.vector_norm(w)
        if not overwrite:
            w = w.clone()
        self._project_once(w)
        if float(torch.linalg.vector_norm(w)) < _DGKS * float(before):
            self._project_once(w)
        return w

    def coordinates(self, w: Tensor) -> Tensor:
        """Return ``V w``, the ``[size]`` coordinates of ``w`` along the stored vectors."""
        if self._direct:
            return self.data[: self.size] @ w
        if self.size == 0:
            return w.new_zeros(0)
        return torch.cat([self._group_coordinates(a, b, w) for a, b in self._groups()])

    def combine(self, coefficients: Tensor) -> Tensor:
        """Return ``V^T C`` for a ``[size, k]`` coefficient matrix ``C``: shape ``[P, k]``."""
        c = coefficients.to(self.device, self.dtype)
        if self._direct:
            return self.data[: self.size].T @ c
        out = torch.zeros(self.data.shape[1], c.shape[1], dtype=self.dtype, device=self.device)
        for start, stop in self._groups():
            for lo, hi in self._columns(stop - start):
                out[lo:hi] += self._converted(start, stop, lo, hi).T @ c[start:stop]
        return out

    def add_combination(self, out: Tensor, coefficients: Tensor) -> None:
        """``out += V^T c`` for a ``[size]`` vector ``c``, block by block of columns.

        The values are those of ``out += self.combine(c[:, None])[:, 0]`` (each entry sums the
        same products in the same order) without its ``[P]`` result.
        """
        c = coefficients.to(self.device, self.dtype)
        rows = self.size if self._direct else self._chunk
        for lo, hi in self._columns(rows):
            if self._direct:
                out[lo:hi] += self.data[: self.size, lo:hi].T @ c
                continue
            part = torch.zeros(hi - lo, dtype=self.dtype, device=self.device)
            for start, stop in self._groups():
                part += self._converted(start, stop, lo, hi).T @ c[start:stop]
            out[lo:hi] += part

    def row_dot(self, j: int, w: Tensor) -> float:
        """``V[j] . w`` in the compute dtype, row ``j`` converted block by block of columns.

        A row stored in the compute dtype and device gives ``torch.dot(V[j], w)`` to the bit;
        otherwise the dots of the blocks are summed (no converted copy of the row is live).
        """
        if self._direct:
            return float(torch.dot(self.data[j], w))
        return sum(
            float(torch.dot(self._converted(j, j + 1, lo, hi)[0], w[lo:hi]))
            for lo, hi in self._columns(1)
        )

    def sub_row(self, w: Tensor, scale: float, j: int) -> None:
        """``w -= scale * V[j]`` in place, row ``j`` converted block by block of columns.

        Each entry is ``w - scale * V[j]`` computed in the compute dtype, as
        :func:`~lanczos_optim._slices.sub_scaled` on the converted row gives it.
        """
        for lo, hi in self._columns(1):
            w[lo:hi].sub_(scale * self._converted(j, j + 1, lo, hi)[0])

    def complement(self, v: Tensor, coefficients: Tensor) -> Tensor:
        """``v - V^T c`` for a ``[size]`` vector ``c``, in one new ``[P]`` buffer.

        Example:
            >>> basis = LanczosBasis(2, 3, dtype=torch.float64, device=torch.device("cpu"))
            >>> _ = basis.append(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
            >>> v = torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64)
            >>> basis.complement(v, basis.coordinates(v))
            tensor([0., 3., 4.], dtype=torch.float64)
        """
        return self.combine(coefficients[:, None])[:, 0].neg_().add_(v)

    def tensor(self) -> Tensor:
        """The stored ``[size, P]`` basis (in its storage dtype and device)."""
        return self.data[: self.size]
