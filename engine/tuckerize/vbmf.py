"""Empirical variational Bayesian matrix factorization (EVBMF): rank and noise variance of a matrix.

Nakajima, Sugiyama, Babacan, Tomioka, "Global analytic solution of fully-observed variational Bayesian
matrix factorization", JMLR 2013 (docs/evbmf.md states the formulas used here).

Model: Y = B Aᵀ + E with E i.i.d. N(0, σ²). Everything depends only on the singular values γ_h of Y,
so `evbmf` computes a spectrum and `evbmf_spectrum` does the statistics; rank rules reuse spectra.

Choices made here (documented because the literature's ports differ):
- τ̄ is solved exactly: the positive root of Φ(τ) + Φ(τ/α) = 0, Φ(z) = ln(1+z)/z − 1/2, with Brent's
  method (not the 2.5129·√α approximation, which is exact only at α = 1).
- σ² is the global minimiser of the free energy Ω over the bracket of docs/evbmf.md, found by a log-spaced
  grid over the bracket (Ω can have several local minima; a single Brent run over the whole bracket
  may stop in the wrong one), then refined around the best grid point as the root of dΩ/dσ², which
  has the closed form of `_free_energy_slope` (Brent on Ω itself where the minimum sits on a kink).
- Ω is evaluated in a form shifted by a σ²-independent constant (Σ_h ln γ_h² − L ln M) which removes
  every ln γ_h: exactly zero singular values (exactly low-rank matrices) need no special casing:
      Ω'(σ²) = (Σ γ_h² + residual)/(Mσ²) + L ln σ² + Σ_{x_h > x̄} [ln(τ_h + 1) + α ln(τ_h/α + 1) − τ_h].
- When the bracket collapses towards 0 (no noise at all), σ² is floored at the value whose threshold
  is 1e-10·γ₁ (below the float64 rounding of any spectrum used here, above none of the signal that
  matters), and the true rank is then answered.

Top-H form (large matrices): only γ₁..γ_H are computed and residual = ‖Y‖²_F − Σ γ_h². The shifted Ω
above is *exactly* the full Ω (up to a constant) for every σ² at which the uncomputed components are
below the threshold, i.e. σ² ≥ γ_H²/(M x̄). The search is restricted to that region, so whenever the
full computation's rank is below H the top-H form returns the same rank and σ² (given accurate γ's).
Only the separation of the components near the threshold from the noise bulk limits how accurate
computed top-H values are (see `top_singular_values`). `evbmf(Y)` without H picks H itself.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import brentq, minimize_scalar

from .errors import EngineInputError

# Threshold at the σ² floor, relative to γ₁ (see module docstring).
_RELATIVE_RESOLUTION = 1e-10
_GRID_POINTS = 241
# Full spectra come from a dense SVD up to L·L·M = 2²⁴ (256×256) and from the Gram matrix above.
_SVD_MAX_WORK = 1 << 24
# evbmf(Y) computes the full spectrum when L·L·M is at most this (1024×4096: ~0.1 s); above it, see `evbmf`.
_FULL_SPECTRUM_MAX_WORK = 1 << 32
_INITIAL_TOP_H = 128
_POWER_ITERATIONS = 2


class EVBMFResult(NamedTuple):
    """rank: components kept; sigma2: noise variance (estimated or given); threshold: γ_EVB, the
    singular value a component must exceed to be kept; singular_values: the γ's used, descending
    (all min(L, M) of them, or the top H when only those were computed)."""

    rank: int
    sigma2: float
    threshold: float
    singular_values: np.ndarray


def _phi(z: float) -> float:
    return math.log1p(z) / z - 0.5


def tau_bar(alpha: float) -> float:
    """Exact τ̄(α): the positive root of Φ(τ) + Φ(τ/α) = 0, for 0 < α ≤ 1."""
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"tau_bar needs 0 < alpha <= 1 (alpha = L/M with L <= M), got {alpha}")

    def xi(tau: float) -> float:
        return _phi(tau) + _phi(tau / alpha)

    # Ξ is decreasing, Ξ(0+) = 1 and Ξ(τ₀) ≤ 0 at τ₀ ≈ 2.5129 where Φ(τ₀) = 0, so the root is in (0, τ₀].
    upper = 2.6
    if alpha == 1.0:
        return brentq(_phi, 1.0, upper, xtol=1e-15, rtol=1e-15)
    lower = min(1e-3, alpha) * 1e-6
    return brentq(xi, lower, upper, xtol=1e-300, rtol=4 * np.finfo(float).eps)


def x_bar(alpha: float) -> float:
    """x̄ = (1 + τ̄)(1 + α/τ̄): components with γ²/(Mσ²) above it survive."""
    t = tau_bar(alpha)
    return (1.0 + t) * (1.0 + alpha / t)


def evb_shrinkage(singular_values, L: int, M: int, sigma2: float) -> np.ndarray:
    """EVB estimates γ̂_h of the components above the threshold (others are 0), same order as given."""
    L, M = min(L, M), max(L, M)
    gamma = np.asarray(singular_values, dtype=np.float64)
    threshold = math.sqrt(M * sigma2 * x_bar(L / M))
    shrunk = np.zeros_like(gamma)
    keep = gamma > threshold
    g2 = gamma[keep] ** 2
    a = 1.0 - (L + M) * sigma2 / g2
    shrunk[keep] = gamma[keep] / 2.0 * (a + np.sqrt(np.maximum(a * a - 4.0 * L * M * sigma2**2 / (g2 * g2), 0.0)))
    return shrunk


def _tau_above(sigma2: np.ndarray, gamma2: np.ndarray, M: int, alpha: float, xbar: float):
    """τ(x_h) where x_h = γ_h²/(Mσ²) > x̄ (0 elsewhere) and the mask, shape (H, G) for G values of σ²."""
    x = gamma2[:, None] / (M * sigma2[None, :])          # (H, G)
    above = x > xbar
    d = np.where(above, x, xbar) - (1.0 + alpha)         # x̄ keeps the sqrt real where unused
    tau = 0.5 * (d + np.sqrt(np.maximum(d * d - 4.0 * alpha, 0.0)))
    return np.where(above, tau, 0.0), above


def _free_energy(sigma2: np.ndarray, gamma2: np.ndarray, energy: float, L: int, M: int,
                 alpha: float, xbar: float) -> np.ndarray:
    """Ω' (module docstring) at each σ² of a 1-D array; gamma2 holds the computed γ_h²."""
    tau, above = _tau_above(sigma2, gamma2, M, alpha, xbar)
    gain = np.where(above, np.log1p(tau) + alpha * np.log1p(tau / alpha) - tau, 0.0)
    return energy / (M * sigma2) + L * np.log(sigma2) + gain.sum(axis=0)


def _free_energy_slope(sigma2: np.ndarray, gamma2: np.ndarray, energy: float, L: int, M: int,
                       alpha: float, xbar: float) -> np.ndarray:
    """σ² · dΩ'/dσ² = L + Σ_{x_h > x̄} τ_h − E/(Mσ²), away from the kinks at x_h = x̄.

    Differentiating the gain through x = (1 + τ)(1 + α/τ) collapses each survivor's term to τ_h, so the
    stationary σ² is the fixed point σ² = E / (M (L + Σ τ_h)): the mean square with the survivors'
    degrees of freedom removed. A root of this is accurate to rounding, unlike a minimum of Ω.
    """
    tau, _ = _tau_above(sigma2, gamma2, M, alpha, xbar)
    return L + tau.sum(axis=0) - energy / (M * sigma2)


def _validate_spectrum(gamma: np.ndarray, L: int, M: int, residual: float, name: str) -> None:
    if L < 1 or M < 1:
        raise EngineInputError(f"{name}: EVBMF needs a matrix with at least one row and column, got {L}x{M}")
    if gamma.ndim != 1 or gamma.size == 0:
        raise EngineInputError(f"{name}: singular_values must be a non-empty 1-D array, got shape {gamma.shape}")
    if gamma.size > min(L, M):
        raise EngineInputError(
            f"{name}: {gamma.size} singular values given for a {L}x{M} matrix (at most {min(L, M)})")
    if not np.all(np.isfinite(gamma)) or not math.isfinite(residual):
        raise EngineInputError(f"{name}: singular values or residual are NaN/Inf; check the weights")
    if np.any(gamma < 0):
        raise EngineInputError(f"{name}: singular values must be >= 0, got min {gamma.min()}")


def evbmf_spectrum(singular_values, L: int, M: int, residual: float = 0.0, sigma2: float | None = None,
                   *, name: str = "matrix") -> EVBMFResult:
    """EVBMF from the singular values of an L×M matrix (either orientation).

    singular_values: all min(L, M) of them, or the top H (then pass residual = ‖Y‖²_F − Σ γ_h²).
    sigma2: known noise variance, or None to estimate it. With only the top H given, the search assumes
    the uncomputed components are noise, so it resolves ranks up to H − 1; rank H means "at least H"
    (even the all-noise σ², the mean square, leaves γ_H above the threshold): compute more values.
    """
    L, M = int(L), int(M)
    if L > M:
        L, M = M, L
    gamma = np.sort(np.asarray(singular_values, dtype=np.float64).ravel())[::-1].copy()
    _validate_spectrum(gamma, L, M, float(residual), name)
    H = gamma.size
    gamma2 = gamma**2
    computed = float(gamma2.sum())
    # A top-H residual from ‖Y‖² − Σγ² can come out slightly negative by rounding.
    if residual < 0:
        if residual < -1e-9 * max(computed, 1e-300):
            raise EngineInputError(f"{name}: residual must be >= 0 (‖Y‖² − Σγ²), got {residual}")
        residual = 0.0
    if H == L and residual > 1e-9 * max(computed, 1e-300):
        raise EngineInputError(f"{name}: residual {residual} given although all {L} singular values are present")
    energy = computed + float(residual)
    alpha = L / M
    xbar = x_bar(alpha)

    def result(s2: float) -> EVBMFResult:
        threshold = math.sqrt(M * s2 * xbar)
        return EVBMFResult(int(np.count_nonzero(gamma > threshold)), float(s2), threshold, gamma)

    if sigma2 is not None:
        if not (math.isfinite(sigma2) and sigma2 >= 0):
            raise EngineInputError(f"{name}: sigma2 must be a finite number >= 0, got {sigma2}")
        return result(float(sigma2))
    if energy == 0.0:
        return EVBMFResult(0, 0.0, 0.0, gamma)

    upper = energy / (L * M)
    h_bar = min(math.ceil(L / (1.0 + alpha)) - 1, H)     # 1-based H̄ of docs/evbmf.md
    lower = 0.0
    if h_bar < H:                                        # γ_{H̄+1} and the tail mean are known exactly
        tail = float(gamma2[h_bar:].sum()) + float(residual)
        lower = max(gamma2[h_bar] / (M * xbar), tail / ((L - h_bar) * M))
    if H < L:                                            # keep the uncomputed components below threshold
        lower = max(lower, gamma2[H - 1] / (M * xbar))
    lower = max(lower, (_RELATIVE_RESOLUTION * gamma[0]) ** 2 / (M * xbar))
    if lower >= upper:
        return result(upper)

    # Search in units of the mean square (σ²/upper ∈ (0, 1]) so that Ω, its rounding and hence the
    # answer do not depend on the scale of Y: evbmf(c·Y).sigma2 == c²·evbmf(Y).sigma2.
    g2, e = gamma2 / upper, energy / upper
    grid = np.geomspace(lower / upper, 1.0, _GRID_POINTS)
    values = _free_energy(grid, g2, e, L, M, alpha, xbar)
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]

    def omega(u: float) -> float:
        return float(_free_energy(np.array([math.exp(u)]), g2, e, L, M, alpha, xbar)[0])

    def slope(u: float) -> float:
        return float(_free_energy_slope(np.array([math.exp(u)]), g2, e, L, M, alpha, xbar)[0])

    # Ω' falls then rises across an interior minimum: the slope's sign change pins it to rounding.
    # A minimum on a kink or at the bracket's edge has no such sign change; Brent on Ω' handles it.
    u_lo, u_hi = math.log(lo), math.log(hi)
    if slope(u_lo) < 0.0 < slope(u_hi):
        u = brentq(slope, u_lo, u_hi, xtol=1e-14, rtol=4 * np.finfo(float).eps)
    else:
        u = minimize_scalar(omega, bounds=(u_lo, u_hi), method="bounded", options={"xatol": 1e-12}).x
    s2 = math.exp(u) if omega(u) <= values[best] else float(grid[best])
    return result(min(max(s2 * upper, lower), upper))


_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)


def _as_matrix(Y, name: str) -> torch.Tensor:
    """Y as a CPU tensor: float32 stays float32 (only the large-matrix sketch uses it), else float64."""
    if isinstance(Y, torch.Tensor):
        t = Y.detach().cpu()
    else:
        try:
            t = torch.from_numpy(np.asarray(Y))
        except (TypeError, ValueError) as exc:
            raise EngineInputError(f"{name}: EVBMF needs a numeric 2-D matrix: {exc}") from exc
    if t.dtype not in (torch.float32, torch.float64):
        if t.dtype.is_complex or not (t.dtype.is_floating_point or t.dtype in _INTEGER_DTYPES):
            raise EngineInputError(f"{name}: EVBMF needs a numeric 2-D matrix, got dtype {t.dtype}")
        t = t.to(torch.float64)
    if t.dim() != 2:
        raise EngineInputError(f"{name}: EVBMF needs a 2-D matrix, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise EngineInputError(f"{name}: EVBMF needs a non-empty matrix, got shape {tuple(t.shape)}")
    return t


def _refuse_non_finite(t: torch.Tensor, name: str) -> None:
    """Called when ‖t‖² is not finite: name what is wrong."""
    bad = ~torch.isfinite(t)
    n_bad = int(bad.sum())
    if n_bad:
        n_nan = int(torch.isnan(t).sum())
        raise EngineInputError(
            f"{name}: {n_nan} NaN and {n_bad - n_nan} Inf entries in a {t.shape[0]}x{t.shape[1]} "
            "matrix; fix or retrain the model's weights")
    raise EngineInputError(
        f"{name}: entries up to {float(t.abs().max()):.3g} overflow the sum of squares in float64; "
        "rescale the weights")


def squared_norm(t: torch.Tensor) -> float:
    """‖t‖²_F, blocks of ~4M entries summed in float64.

    Each block's sum of squares is taken in t's own dtype: torch's blocked reduction keeps a float32
    block's sum within ~1e-8 of the float64 one (measured on 100M-entry matrices, offset and
    log-scaled ones too), and it is ~50× faster than squaring a float64 copy (fc6: 0.03 vs 1.8 s).
    A block whose float32 squares overflow (entries beyond ~1e19) is redone in float64, so an
    infinite result still means a NaN/Inf entry or a true float64 overflow.
    """
    rows = max(1, (1 << 22) // max(1, t.shape[1]))
    total = 0.0
    for block in torch.split(t, rows):
        part = float(torch.sum(block * block))
        if not math.isfinite(part) and block.dtype != torch.float64:
            part = float(torch.sum(block.to(torch.float64) ** 2))
        total += part
    return total


def block_krylov(Y: torch.Tensor, k: int, power_iterations: int = _POWER_ITERATIONS,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomised block Krylov basis of an L×M matrix's column space (Musco & Musco, NeurIPS 2015).

    Returns (basis, C): basis (L, (q+1)k) float64 with orthonormal columns spanning
    [YΩ, (YYᵀ)YΩ, …, (YYᵀ)^q YΩ], and C = Yᵀ·basis (M, (q+1)k) float64, so Y ≈ basis·Cᵀ. The
    blocks of C fall out of the iteration itself: 2q + 2 passes of L·M·k multiply-adds over Y, in Y's
    dtype (float32 weights stay float32: 100M-entry FC layers are memory-bound and carry float32
    precision anyway). Needs (q+1)·k < L. Deterministic for a given seed.
    """
    L, M = Y.shape
    gen = torch.Generator().manual_seed(seed)
    omega = torch.randn(M, k, generator=gen, dtype=torch.float64).to(Y.dtype)   # (M, k)
    basis, _ = torch.linalg.qr((Y @ omega).to(torch.float64))                  # (L, k)
    block = basis
    c_blocks = []
    for _ in range(power_iterations):
        C = Y.T @ block.to(Y.dtype)                                             # (M, k)
        c_blocks.append(C.to(torch.float64))
        Z = (Y @ C).to(torch.float64)                                           # (L, k)
        # Orthogonalise twice against the basis ("twice is enough"), before and after QR, so the
        # basis stays orthonormal even when Z lies nearly inside it (exactly low-rank Y).
        for _ in range(2):
            Z = Z - basis @ (basis.T @ Z)
        block, _ = torch.linalg.qr(Z)
        block, _ = torch.linalg.qr(block - basis @ (basis.T @ block))
        basis = torch.cat([basis, block], dim=1)                                # (L, k·(i+2))
    c_blocks.append((Y.T @ block.to(Y.dtype)).to(torch.float64))
    return basis, torch.cat(c_blocks, dim=1)


def top_singular_values(Y: torch.Tensor, H: int, *, power_iterations: int = _POWER_ITERATIONS,
                        seed: int = 0) -> torch.Tensor:
    """Approximate top-H singular values of an L×M matrix (L ≤ M), float64, descending.

    Rayleigh–Ritz on a `block_krylov` basis with block size H: γ = √eig(CᵀC). For the same passes
    this is markedly more accurate than subspace iteration. Ritz values never exceed the true ones;
    components separated from the noise bulk come out accurate, values inside the bulk a few % low,
    which does not move EVBMF's σ² (Ω sees below-threshold components only through the total
    energy). Exact values when the basis would fill R^L anyway.
    """
    L, M = Y.shape
    k = min(L, H)
    if (power_iterations + 1) * k >= L:
        return torch.from_numpy(_full_singular_values(Y)[:H].copy())
    _, C = block_krylov(Y, k, power_iterations, seed)                           # (M, (q+1)k)
    return _singular_values_from_gram(torch.linalg.eigvalsh(C.T @ C), L, M)[:H]


def _singular_values_from_gram(eigenvalues: torch.Tensor, L: int, M: int) -> torch.Tensor:
    """√λ, descending, with eigenvalues below the Gram matrix's rounding level set to exactly 0.

    A Gram matrix resolves λ only down to about max(L, M)·ε·λ₁: below that the eigenvalues are
    rounding noise with structure (not Marchenko–Pastur), which EVBMF would mistake for signal in an
    exactly low-rank matrix. Exact zeros are what the statistics handle (module docstring); the price
    is that γ < √(max(L, M)·ε)·γ₁ (2e-6·γ₁ for 4096×25088) reads as 0.
    """
    lam = eigenvalues.flip(0)
    resolution = max(L, M) * torch.finfo(lam.dtype).eps * float(lam[0].clamp_min(0.0))
    return torch.where(lam > resolution, lam, torch.zeros_like(lam)).sqrt()


def _full_singular_values(t: torch.Tensor) -> np.ndarray:
    """All min(L, M) singular values of an L×M matrix (L ≤ M), float64, descending.

    Small matrices: a dense SVD. Larger: square roots of the eigenvalues of the L×L Gram matrix,
    accumulated in float64 column blocks. A conv unfolding of 512×4608 is ~10× faster this way and a
    4096×25088 one avoids a ~100 s SVD. The error of γ_h is about ε·γ₁²/γ_h: values down to ~1e-5·γ₁
    keep 4+ digits, and those below the Gram's resolution read as exact zeros.
    """
    L, M = t.shape
    if L * L * M <= _SVD_MAX_WORK:
        return torch.linalg.svdvals(t.to(torch.float64)).numpy()
    gram = gram_matrix(t, torch.float64)
    return _singular_values_from_gram(torch.linalg.eigvalsh(gram), L, M).numpy()


# Row blocks of `gram_matrix`: b blocks compute (b + 1)/2b of the full product (8: 56 %) in GEMMs
# that stay large enough to run at full speed; rows below this many use one product.
_GRAM_ROW_BLOCKS = 8
_GRAM_MIN_BLOCK_ROWS = 128


def gram_matrix(A: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A Aᵀ (m×m) of an m×n matrix in `dtype` (default A's), exactly symmetric.

    Only the block lower triangle is multiplied, about half of `A @ A.T`'s multiply-adds: for
    VGG-16's fc6 (4096×25088) the Gram matrix is most of a rank-r SVD's time. Converting to a wider
    dtype goes column block by column block, so a float32 matrix is never copied whole to float64.
    """
    m, n = A.shape
    dtype = A.dtype if dtype is None else dtype
    gram = torch.zeros(m, m, dtype=dtype)
    rows = max(_GRAM_MIN_BLOCK_ROWS, -(-m // _GRAM_ROW_BLOCKS))
    cols = n if dtype == A.dtype else max(1, (1 << 23) // m)
    for chunk in torch.split(A, cols, dim=1):
        B = chunk.to(dtype)                                                     # (m, cols)
        for start in range(0, m, rows):
            stop = min(start + rows, m)
            gram[start:stop, :stop] += B[start:stop] @ B[:stop].T
    # The strictly upper blocks are still zero; the diagonal blocks are mirrored too, so that BLAS
    # rounding cannot leave G[i, j] != G[j, i].
    gram.tril_()
    gram += torch.tril(gram, -1).T
    return gram


def evbmf(Y, sigma2: float | None = None, H: int | None = None, *, name: str = "matrix") -> EVBMFResult:
    """EVBMF rank and noise variance of a matrix Y (numpy or torch, any orientation).

    The statistics run in float64; the passes over a large float32 matrix stay in float32 (see
    `top_singular_values`).
    H: number of top singular values to compute. H >= min(L, M) means the full spectrum; H < min(L, M)
    the top H by randomised block Krylov iteration plus the residual energy.
    H = None picks by cost, in units of one pass over Y (L·M multiply-adds):
      - L·L·M ≤ 2³² (up to ~1024×4096): the full spectrum (cheap at that size);
      - larger: top H = 128, 256, … (each costs 6·H passes) while that is at most half the L passes
        of the full route (a float64 Gram matrix + symmetric eigensolver), accepting the first result
        whose rank is at most H/2; else the full spectrum. Rank ≤ H/2 is "well below H": the top-H
        search then covers the full optimum (module docstring), so the rank matches the full
        computation up to the Ritz values' accuracy for components within a few % of the threshold.
      For VGG-16's fc6 (4096×25088) with rank ≤ 64 that is 768 passes instead of 4096 (Gram) or an SVD.
    name: used in error messages (e.g. the layer name).
    """
    t = _as_matrix(Y, name)
    if t.shape[0] > t.shape[1]:
        t = t.T
    L, M = t.shape
    energy = squared_norm(t)                # one pass that also detects NaN/Inf
    if not math.isfinite(energy):
        _refuse_non_finite(t, name)

    def full() -> EVBMFResult:
        return evbmf_spectrum(_full_singular_values(t), L, M, 0.0, sigma2, name=name)

    def top(h: int) -> EVBMFResult:
        gamma = top_singular_values(t, h).numpy()
        residual = max(energy - float((gamma**2).sum()), 0.0)
        return evbmf_spectrum(gamma, L, M, residual, sigma2, name=name)

    if H is not None:
        if int(H) < 1:
            raise EngineInputError(f"{name}: H (singular values to compute) must be >= 1, got {H}")
        return full() if H >= L else top(int(H))
    if energy == 0.0 or L * L * M <= _FULL_SPECTRUM_MAX_WORK:
        return full()
    h = _INITIAL_TOP_H
    while (2 * _POWER_ITERATIONS + 2) * h <= L // 2:
        res = top(h)
        if 2 * res.rank <= h:
            return res
        h *= 2
    return full()
