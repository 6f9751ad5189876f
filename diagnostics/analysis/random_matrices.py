r"""Random matrices with known spectral densities (paper, section 6).

Three test beds for spectral estimation, each a dense symmetric ``[P, P]`` tensor, and the
laws their eigenvalues follow:

* :func:`wigner` -- a symmetric matrix with :math:`\mathcal{N}(0, 1)` entries. The eigenvalues
  of :math:`M / \sqrt{P}` follow the semicircle law on :math:`[-2, 2]`
  (:func:`semicircle_density`, :func:`semicircle_cdf`); those of :math:`M` itself follow the
  semicircle of radius :math:`2\sqrt{P}`.
* :func:`marchenko_pastur` -- the sample covariance :math:`X X^\top / T` of a ``[P, T]``
  Gaussian matrix. With :math:`q = P / T` its eigenvalues follow the Marchenko-Pastur law: a
  continuous part on :math:`[\sigma^2(1 - \sqrt{q})^2, \sigma^2(1 + \sqrt{q})^2]`
  (:func:`marchenko_pastur_density`, :func:`marchenko_pastur_support`) and, for :math:`q > 1`,
  an atom of mass :math:`1 - 1/q` at zero (:func:`marchenko_pastur_atom`).
  :func:`marchenko_pastur_cdf` is the cumulative distribution of the whole law, atom included.
* :func:`synthetic_spectrum` -- the section 6.4 matrix that mimics a network's Hessian: a spike
  at zero, a right-skewed bulk, positive and negative outliers, hidden by a Haar rotation.

All generators take a ``generator`` (for reproducible draws) and a ``dtype`` (float64 by
default), and return exactly symmetric matrices, so that they can be passed straight to
:func:`lanczos_optim.lanczos` or :func:`lanczos_optim.spectral_density`.

References:
    Granziol, Wan & Garipov, *Deep Curvature Suite*, section 6,
    https://arxiv.org/abs/1912.09656; Wigner, *Characteristic vectors of bordered matrices
    with infinite dimensions*, 1955; Marchenko & Pastur, *Distribution of eigenvalues for some
    sets of random matrices*, 1967.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "wigner",
    "semicircle_density",
    "semicircle_cdf",
    "marchenko_pastur",
    "marchenko_pastur_density",
    "marchenko_pastur_cdf",
    "marchenko_pastur_atom",
    "marchenko_pastur_support",
    "synthetic_spectrum",
]

# Section 6.4 of the paper, for P = 1000: (count, low, high) of each uniform group.
_SYNTHETIC_GROUPS = ((470, 0.0, 15.0), (20, 0.0, 60.0), (10, -10.0, 0.0))
_SYNTHETIC_MIN_DIM = 100


def _check_dim(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a positive int; got {value!r}.")
    if value < 1:
        raise ValueError(f"{name} must be a positive int; got {value}.")
    return value


def _check_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number; got {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive, finite number; got {value}.")
    return float(value)


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"dtype must be a real floating-point torch.dtype; got {dtype!r}.")
    return dtype


def _randn(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> Tensor:
    gen_device = generator.device if generator is not None else device
    x = torch.randn(*shape, generator=generator, dtype=dtype, device=gen_device)
    return x if device is None else x.to(device)


def _as_float64(x: Tensor | float | list[float]) -> Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def wigner(
    P: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Draw a real symmetric Wigner matrix with standard normal entries (paper, section 6.1).

    .. math::
        M_{ij} = M_{ji} \sim \mathcal{N}(0, 1) \ (i < j), \qquad M_{ii} \sim \mathcal{N}(0, 1),

    all independent. Scaling: the eigenvalues of :math:`M / \sqrt{P}` converge to the
    semicircle law on :math:`[-2, 2]` (see :func:`semicircle_density`), so the spectrum of the
    unscaled :math:`M` fills :math:`[-2\sqrt{P}, 2\sqrt{P}]`. Its second spectral moment is
    :math:`\mathrm{tr}(M^2) / P \approx P`.

    Args:
        P: Dimension, a positive int.
        generator: Random generator for reproducible draws (default: the global one).
        dtype: Real floating dtype of the result (default float64).
        device: Device of the result (default: the generator's device, else CPU).

    Returns:
        The unscaled ``[P, P]`` matrix :math:`M`, exactly symmetric.

    Raises:
        TypeError: If ``P`` is not an int or ``dtype`` is not a real floating dtype.
        ValueError: If ``P < 1``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> M = wigner(400, generator=g)
        >>> bool(torch.equal(M, M.T))
        True
        >>> lam = torch.linalg.eigvalsh(M / 400**0.5)
        >>> abs(float(lam.max()) - 2.0) < 0.2
        True
    """
    P = _check_dim("P", P)
    dtype = _check_dtype(dtype)
    a = _randn((P, P), generator, dtype, device)
    upper = torch.triu(a, diagonal=1)
    return upper + upper.T + torch.diag(torch.diagonal(a))


def semicircle_density(x: Tensor | float | list[float], radius: float = 2.0) -> Tensor:
    r"""Wigner's semicircle density of radius :math:`R`.

    .. math::
        \rho_R(x) = \frac{2}{\pi R^2} \sqrt{R^2 - x^2}\ \mathbf{1}_{|x| \le R}.

    :math:`R = 2` (the default) is the limit law of :math:`M / \sqrt{P}` for a :func:`wigner`
    matrix :math:`M`, i.e. :math:`\frac{1}{2\pi}\sqrt{4 - x^2}` (paper, Theorem 3); use
    :math:`R = 2\sqrt{P}` for the unscaled :math:`M`. The law has mean 0 and variance
    :math:`R^2/4`.

    Args:
        x: Points at which to evaluate the density.
        radius: Radius :math:`R > 0` of the support (default 2).

    Returns:
        Float64 tensor of densities, the shape of ``x``.

    Raises:
        ValueError: If ``radius`` is not positive.

    Example:
        >>> float(semicircle_density(0.0)) == 1 / math.pi
        True
        >>> float(semicircle_density([3.0])[0])
        0.0
    """
    r = _check_positive("radius", radius)
    x = _as_float64(x)
    return 2.0 / (math.pi * r * r) * torch.sqrt(torch.clamp(r * r - x * x, min=0.0))


def semicircle_cdf(x: Tensor | float | list[float], radius: float = 2.0) -> Tensor:
    r"""Cumulative distribution function of the semicircle law of radius :math:`R`.

    .. math::
        F_R(x) = \frac{1}{2} + \frac{x \sqrt{R^2 - x^2}}{\pi R^2}
        + \frac{1}{\pi} \arcsin\frac{x}{R}, \qquad |x| \le R,

    with :math:`F_R = 0` below :math:`-R` and :math:`1` above :math:`R`.

    Args:
        x: Points at which to evaluate the distribution function.
        radius: Radius :math:`R > 0` of the support (default 2).

    Returns:
        Float64 tensor of probabilities, the shape of ``x``.

    Raises:
        ValueError: If ``radius`` is not positive.

    Example:
        >>> float(semicircle_cdf(0.0))
        0.5
        >>> [float(p) for p in semicircle_cdf([-5.0, 5.0])]
        [0.0, 1.0]
    """
    r = _check_positive("radius", radius)
    u = torch.clamp(_as_float64(x) / r, -1.0, 1.0)
    return 0.5 + (u * torch.sqrt(1.0 - u * u) + torch.asin(u)) / math.pi


def marchenko_pastur(
    P: int,
    T: int,
    *,
    sigma: float = 1.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Draw a Marchenko-Pastur (Wishart) matrix, a sample covariance (paper, section 6.2).

    .. math::
        Y = \frac{1}{T} X X^\top, \qquad X \in \mathbb{R}^{P \times T},\
        X_{ij} \sim \mathcal{N}(0, \sigma^2) \text{ i.i.d.}

    With :math:`q = P / T`, the eigenvalues of :math:`Y` follow the Marchenko-Pastur law of
    :func:`marchenko_pastur_density` as :math:`P, T \to \infty`. For :math:`q > 1`, :math:`Y`
    has rank :math:`T`, so exactly :math:`P - T` eigenvalues are zero (up to rounding): the
    atom :func:`marchenko_pastur_atom` of mass :math:`1 - 1/q`.

    Args:
        P: Dimension of the matrix (number of variables), a positive int.
        T: Number of samples, a positive int; :math:`q = P / T`.
        sigma: Standard deviation :math:`\sigma > 0` of the entries of :math:`X` (default 1).
        generator: Random generator for reproducible draws (default: the global one).
        dtype: Real floating dtype of the result (default float64).
        device: Device of the result (default: the generator's device, else CPU).

    Returns:
        The ``[P, P]`` positive semi-definite matrix :math:`Y`, exactly symmetric.

    Raises:
        TypeError: If ``P`` or ``T`` is not an int or ``dtype`` is not a real floating dtype.
        ValueError: If ``P < 1``, ``T < 1`` or ``sigma <= 0``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> Y = marchenko_pastur(200, 100, generator=g)  # q = 2: half the spectrum at zero
        >>> lam = torch.linalg.eigvalsh(Y)
        >>> int((lam.abs() < 1e-8).sum())
        100
    """
    P = _check_dim("P", P)
    T = _check_dim("T", T)
    sigma = _check_positive("sigma", sigma)
    dtype = _check_dtype(dtype)
    x = _randn((P, T), generator, dtype, device) * sigma
    y = (x @ x.T) / T
    return 0.5 * (y + y.T)


def marchenko_pastur_support(q: float, sigma: float = 1.0) -> tuple[float, float]:
    r"""Edges of the continuous part of the Marchenko-Pastur law.

    .. math::
        \lambda_\pm = \sigma^2 (1 \pm \sqrt{q})^2.

    For :math:`q > 1` the law also has an atom at zero, below :math:`\lambda_-`
    (see :func:`marchenko_pastur_atom`).

    Args:
        q: Ratio :math:`P / T > 0`.
        sigma: Entry standard deviation :math:`\sigma > 0` (default 1).

    Returns:
        ``(lambda_minus, lambda_plus)``.

    Raises:
        ValueError: If ``q`` or ``sigma`` is not positive.

    Example:
        >>> marchenko_pastur_support(1.0)
        (0.0, 4.0)
    """
    q = _check_positive("q", q)
    s2 = _check_positive("sigma", sigma) ** 2
    return s2 * (1.0 - math.sqrt(q)) ** 2, s2 * (1.0 + math.sqrt(q)) ** 2


def marchenko_pastur_atom(q: float) -> float:
    r"""Mass of the Marchenko-Pastur law's atom at zero, :math:`\max(0, 1 - 1/q)`.

    For :math:`q = P/T > 1` the matrix :math:`X X^\top / T` has rank :math:`T < P`, so a
    fraction :math:`1 - 1/q` of its eigenvalues is exactly zero. :func:`marchenko_pastur_density`
    returns only the continuous part (which then integrates to :math:`1/q`); this atom is the
    rest of the law. :func:`marchenko_pastur_cdf` includes it.

    Args:
        q: Ratio :math:`P / T > 0`.

    Returns:
        The atom's mass, in :math:`[0, 1)`.

    Raises:
        ValueError: If ``q`` is not positive.

    Example:
        >>> marchenko_pastur_atom(2.0), marchenko_pastur_atom(0.5)
        (0.5, 0.0)
    """
    q = _check_positive("q", q)
    return max(0.0, 1.0 - 1.0 / q)


def marchenko_pastur_density(
    x: Tensor | float | list[float], q: float, sigma: float = 1.0
) -> Tensor:
    r"""Continuous part of the Marchenko-Pastur law (paper, Theorem 4).

    .. math::
        \rho_q(x) = \frac{\sqrt{(\lambda_+ - x)(x - \lambda_-)}}{2 \pi \sigma^2 q\, x}\
        \mathbf{1}_{\lambda_- \le x \le \lambda_+},
        \qquad \lambda_\pm = \sigma^2 (1 \pm \sqrt{q})^2,

    the limit law of the eigenvalues of :math:`X X^\top / T` (:func:`marchenko_pastur`) with
    :math:`q = P / T`. The whole law is

    .. math::
        \mu_q = \max(0, 1 - 1/q)\, \delta_0 + \rho_q(x)\, dx :

    :math:`\rho_q` integrates to :math:`\min(1, 1/q)`, and the atom at zero, reported
    separately by :func:`marchenko_pastur_atom`, is *not* included here (a density cannot
    hold it). The law has mean :math:`\sigma^2` and variance :math:`\sigma^4 q`.

    Args:
        x: Points at which to evaluate the density.
        q: Ratio :math:`P / T > 0`.
        sigma: Entry standard deviation :math:`\sigma > 0` (default 1).

    Returns:
        Float64 tensor of densities, the shape of ``x`` (0 outside
        :math:`[\lambda_-, \lambda_+]` and at :math:`x = 0`).

    Raises:
        ValueError: If ``q`` or ``sigma`` is not positive.

    Example:
        >>> round(float(marchenko_pastur_density(1.0, 0.5)), 6)  # sqrt(7) / (2 pi)
        0.421084
        >>> float(marchenko_pastur_density(0.0, 2.0))  # the atom is not in the density
        0.0
    """
    lo, hi = marchenko_pastur_support(q, sigma)
    s2 = sigma**2
    x = _as_float64(x)
    inside = (x >= lo) & (x <= hi) & (x > 0)
    safe_x = torch.where(inside, x, torch.ones_like(x))
    root = torch.sqrt(torch.clamp((hi - safe_x) * (safe_x - lo), min=0.0))
    return torch.where(inside, root / (2.0 * math.pi * s2 * q * safe_x), torch.zeros_like(x))


def marchenko_pastur_cdf(x: Tensor | float | list[float], q: float, sigma: float = 1.0) -> Tensor:
    r"""Cumulative distribution function of the whole Marchenko-Pastur law, atom included.

    With :math:`x = \sigma^2 (1 + q - 2\sqrt{q} \cos t)`, :math:`t \in [0, \pi]`, the
    continuous part integrates in closed form to

    .. math::
        G(x) = \frac{1}{2\pi q}\Big[\sqrt{(\lambda_+ - x)(x - \lambda_-)}/\sigma^2
        + (1 + q)\, t - 2 |1 - q| \arctan\Big(\frac{1 + \sqrt{q}}{|1 - \sqrt{q}|}
        \tan\frac{t}{2}\Big)\Big],

    and :math:`F(x) = \max(0, 1 - 1/q)\, \mathbf{1}_{x \ge 0} + G(x)`.

    Args:
        x: Points at which to evaluate the distribution function.
        q: Ratio :math:`P / T > 0`.
        sigma: Entry standard deviation :math:`\sigma > 0` (default 1).

    Returns:
        Float64 tensor of probabilities, the shape of ``x``.

    Raises:
        ValueError: If ``q`` or ``sigma`` is not positive.

    Example:
        >>> [round(float(p), 6) for p in marchenko_pastur_cdf([-1.0, 0.0, 100.0], 2.0)]
        [0.0, 0.5, 1.0]
    """
    lo, hi = marchenko_pastur_support(q, sigma)
    s2 = sigma**2
    x = _as_float64(x)
    # Angle t in [0, pi] with x = s2 * (c - h cos t), c = 1 + q, h = 2 sqrt(q).
    c, h = 1.0 + q, 2.0 * math.sqrt(q)
    cos_t = torch.clamp((c - x / s2) / h, -1.0, 1.0)
    t = torch.acos(cos_t)
    root = torch.sqrt(torch.clamp((hi - x) * (x - lo), min=0.0)) / s2
    # atan(sqrt(b / a) tan(t / 2)) written with atan2, finite also for q = 1 (a = 0).
    phi = torch.atan2(
        (1.0 + math.sqrt(q)) * torch.sin(t / 2), abs(1.0 - math.sqrt(q)) * torch.cos(t / 2)
    )
    g = (root + c * t - 2.0 * abs(1.0 - q) * phi) / (2.0 * math.pi * q)
    g = torch.clamp(g, 0.0, min(1.0, 1.0 / q))
    atom = marchenko_pastur_atom(q) * (x >= 0).to(torch.float64)
    return atom + g


def synthetic_spectrum(
    P: int = 1000,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The paper's synthetic network-like spectrum, hidden by a random rotation (section 6.4).

    For :math:`P = 1000` the eigenvalues are 470 draws from :math:`U[0, 15]` (a right-skewed
    bulk), 20 from :math:`U[0, 60]` (positive outliers), 10 from :math:`U[-10, 0]` (negative
    outliers) and 500 exact zeros (a spike at zero). Other :math:`P` keep these proportions
    (47 %, 2 %, 1 %, rounded; the rest zero). The matrix is

    .. math::
        H = U D U^\top, \qquad U = \mathrm{QR}(G)\ \text{(signs fixed)},\
        G_{ij} \sim \mathcal{N}(0, 1),

    so :math:`U` is Haar distributed (Gram-Schmidt orthogonalised Gaussian columns).

    Args:
        P: Dimension, an int of at least 100 (default 1000, as in the paper).
        generator: Random generator for reproducible draws (default: the global one).
        dtype: Real floating dtype of the matrix (default float64).
        device: Device of the matrix (default: the generator's device, else CPU).

    Returns:
        ``(matrix, eigenvalues)``: the exactly symmetric ``[P, P]`` matrix :math:`H`, and its
        exact eigenvalues :math:`D`, ascending, float64, shape ``[P]``.

    Raises:
        TypeError: If ``P`` is not an int or ``dtype`` is not a real floating dtype.
        ValueError: If ``P < 100``.

    Example:
        >>> import torch
        >>> H, lam = synthetic_spectrum(200, generator=torch.Generator().manual_seed(0))
        >>> int((lam == 0).sum()), int((lam < 0).sum())
        (100, 2)
        >>> bool(torch.allclose(torch.linalg.eigvalsh(H), lam, atol=1e-10))
        True
    """
    P = _check_dim("P", P)
    if P < _SYNTHETIC_MIN_DIM:
        raise ValueError(f"P must be at least {_SYNTHETIC_MIN_DIM}; got {P}.")
    dtype = _check_dtype(dtype)
    gen_device = generator.device if generator is not None else device
    parts = []
    for count, low, high in _SYNTHETIC_GROUPS:
        n = round(count * P / 1000)
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device)
        parts.append(low + (high - low) * u)
    nonzero = torch.cat(parts)
    zeros = torch.zeros(P - nonzero.numel(), dtype=torch.float64, device=nonzero.device)
    eigenvalues = torch.sort(torch.cat([nonzero, zeros])).values
    g = _randn((P, P), generator, torch.float64, None)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))  # Haar: make the QR factorisation unique
    h = (q * eigenvalues.to(q.device)) @ q.T
    h = 0.5 * (h + h.T)
    if device is not None:
        h = h.to(device)
    return h.to(dtype), eigenvalues.to(h.device)
