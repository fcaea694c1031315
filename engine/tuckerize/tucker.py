"""Tucker-2, Tucker-1 and truncated SVD of layer weights (pure torch, input dtype preserved).

Kernel layout is PyTorch/ONNX (T, S, kh, kw) = (out, in, height, width). Tucker-2 keeps the spatial
modes and factors the channel modes: W ≈ core ×₀ U_out ×₁ U_in, which runs as three convolutions
    x (S) → 1×1 conv `first` (S→r_in) → kh×kw conv `core` (r_in→r_out) → 1×1 conv `last` (r_out→T).
Factors are computed in float64 for float64 kernels (exactness tests: full rank reproduces W to
~1e-15) and in float32 otherwise: the factors are stored in float32 anyway, float32 halves the time
(VGG-16's twelve Tucker-2 layers are most of a compression's run time), and the reconstruction error
at a 512×512×3×3 layer agrees with float64's to 8 digits (full rank: 2e-6 instead of 1e-7).
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple

import scipy.linalg
import torch

from .errors import EngineInputError
from .vbmf import block_krylov, gram_matrix, squared_norm


# svd_factors uses a dense SVD up to this out·in·min(out, in) (64×64×64): above it the Gram route is
# exact as well and 2.5-4× faster (measured on 2048×512 to 1000×4096 float32: 0.03 vs 0.07 s, 0.13 vs
# 0.46 s), which matters for ResNet-50's 1×1 convs. Beyond _KRYLOV_MIN_WORK (~1024×4096), a block Krylov
# range finder when its 2q + 2 = 6 passes of width r + oversampling cost at most the Gram route's
# min(out, in) passes; below it the Gram matrix is cheap and the exact route is kept.
_DIRECT_SVD_MAX_WORK = 1 << 18
_KRYLOV_MIN_WORK = 1 << 32
_KRYLOV_POWER_ITERATIONS = 2
_KRYLOV_PASSES = 2 * _KRYLOV_POWER_ITERATIONS + 2


# float32 LAPACK ssyevd reports its workspace size as a float32, which rounds 1 + 6n + 2n² below the
# size it then demands once n > 2896: torch.linalg.eigh fails there ("Argument 8 has illegal value",
# VGG-16's fc6/fc7 Gram matrices are 4096×4096). Larger float32 problems go to scipy's ssyevr.
_FLOAT32_EIGH_MAX_N = 2896
# The relative error of a projection, ‖X‖² − ‖PX‖² over ‖X‖², loses digits to cancellation: its
# rounding is ~c·ε·‖X‖² (c ≲ 20). It is used where that is below 1e-5 of the result, else the
# residual is formed explicitly (one more product of the factors' size).
_ENERGY_ERROR_MIN_EPS = 2e6


def _oversampling(r: int) -> int:
    return max(16, r // 4)


class Tucker2(NamedTuple):
    first: torch.Tensor       # (r_in, S, 1, 1)
    core: torch.Tensor        # (r_out, r_in, kh, kw)
    last: torch.Tensor        # (T, r_out, 1, 1)
    rel_error: float          # ‖W − Ŵ‖_F / ‖W‖_F


class Tucker1(NamedTuple):
    core: torch.Tensor        # (r_out, S, kh, kw)
    last: torch.Tensor        # (T, r_out, 1, 1)
    rel_error: float


class Tucker1In(NamedTuple):
    first: torch.Tensor       # (r_in, S, 1, 1)
    core: torch.Tensor        # (T, r_in, kh, kw)
    rel_error: float


class SVDFactors(NamedTuple):
    first: torch.Tensor       # (r, in)
    second: torch.Tensor      # (out, r); y = second @ (first @ x)
    rel_error: float


def unfold(W: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-`mode` unfolding: (W.shape[mode], product of the other dims), other modes in order.

    The column order differs from Kolda & Bader's, which only permutes columns: the row space, the
    singular values and hence ranks and factors are the same.
    """
    if not 0 <= mode < W.dim():
        raise EngineInputError(f"unfold: mode must be in [0, {W.dim() - 1}] for a {W.dim()}-D tensor, got {mode}")
    return torch.movedim(W, mode, 0).reshape(W.shape[mode], -1)


def _relative_error(W: torch.Tensor, approx: torch.Tensor) -> float:
    norm = torch.linalg.norm(W)
    if norm == 0:
        return 0.0 if torch.linalg.norm(approx) == 0 else float("inf")
    return float(torch.linalg.norm(W - approx) / norm)


def _factored_relative_error(X: torch.Tensor, second: torch.Tensor, first: torch.Tensor) -> float:
    """‖X − second @ first‖ / ‖X‖, accumulated in float64 over row blocks (fc6's product is 400 MB)."""
    rows = max(1, (1 << 22) // X.shape[1])
    residual = norm2 = 0.0
    for start in range(0, X.shape[0], rows):
        block = X[start:start + rows]
        diff = block - second[start:start + rows] @ first
        residual += float(torch.sum(diff.to(torch.float64) ** 2))
        norm2 += float(torch.sum(block.to(torch.float64) ** 2))
    if norm2 == 0:
        return 0.0 if residual == 0 else float("inf")
    return math.sqrt(residual / norm2)


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf entry. A sum in the tensor's own dtype is finite only when every entry is (NaN and ±Inf
    propagate); a non-finite sum may also be an overflow of finite entries, so then check entrywise.
    One streaming pass (0.02 s on fc6's 100M entries) instead of a boolean tensor or a float64 sum,
    which torch computes through a converted copy (2.2-2.8 s on fc6 here)."""
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def _check_kernel(W: torch.Tensor, fn: str) -> None:
    if not isinstance(W, torch.Tensor) or W.dim() != 4:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise EngineInputError(f"{fn}: needs a 4-D conv kernel (T, S, kh, kw), got {shape}")
    if not W.is_floating_point():
        raise EngineInputError(f"{fn}: needs a floating-point kernel, got {W.dtype}")
    if not _all_finite(W):
        raise EngineInputError(f"{fn}: kernel of shape {tuple(W.shape)} has NaN/Inf entries; fix the weights")


def _is_integer(value) -> bool:
    """Python and numpy integers (not bools): ranks often come straight from tensor shapes."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_rank(fn: str, what: str, r: int, dim: int) -> int:
    if not _is_integer(r):
        raise EngineInputError(f"{fn}: {what} must be an integer with 1 <= {what} <= {dim}, got {r!r}")
    r = int(r)
    if not 1 <= r <= dim:
        raise EngineInputError(f"{fn}: {what} must satisfy 1 <= {what} <= {dim}, got {r}")
    return r


def _work_dtype(W: torch.Tensor) -> torch.dtype:
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def _top_eigenpairs(G: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The r largest eigenvalues (descending, (r,)) and their eigenvectors ((n, r)) of a symmetric G."""
    n = G.shape[0]
    if G.dtype == torch.float32 and n > _FLOAT32_EIGH_MAX_N:
        # ssyevr computes only the wanted eigenvectors; its workspace query is rounded up by scipy.
        values, vectors = scipy.linalg.eigh(G.numpy(), subset_by_index=[n - r, n - 1], driver="evr",
                                            check_finite=False)
        return torch.from_numpy(values[::-1].copy()), torch.from_numpy(vectors[:, ::-1].copy())
    values, vectors = torch.linalg.eigh(G)                                  # ascending
    return values.flip(0)[:r], vectors.flip(1)[:, :r]


def _leading_left_vectors(A: torch.Tensor, r: int) -> torch.Tensor:
    """Top-r left singular vectors of a matrix, from the eigenvectors of A Aᵀ.

    Only U is needed, and A is wide (rows = channels, columns = other channels × kernel taps): the
    rows×rows eigenproblem skips the columns an SVD would factor, ~10× faster for VGG-sized
    unfoldings. Subspace error is about ε·γ₁²/gap (~1e-14 for well-separated ranks in float64); at full
    rank the factor is a full orthogonal matrix and the rewrite stays exact.
    """
    return _top_eigenpairs(gram_matrix(A), r)[1]


def tucker2(W: torch.Tensor, r_out: int, r_in: int, n_iter: int = 2) -> Tucker2:
    """Tucker-2 of a conv kernel at ranks (r_out, r_in): HOSVD initialisation, then `n_iter` HOOI sweeps.

    HOOI (De Lathauwer et al. 2000) alternately refits each factor to the leading subspace of the kernel
    projected on the other factor; each step cannot increase the error, so n_iter = 0 is plain HOSVD.
    The default of 2 sweeps is measured (benchmarks/compress_speed_hooi.py, VGG-16's twelve Tucker-2
    layers at the budget rule's ranks, random weights: the hardest, flattest spectra): HOSVD alone ends
    3.4 % above the converged error, 1 sweep 0.67 %, 2 sweeps 0.31 %, 5 sweeps 0.11 %, each sweep costing
    about as much as the HOSVD; past 2 the time grows faster than the error falls.
    """
    _check_kernel(W, "tucker2")
    T, S, kh, kw = W.shape
    r_out = _check_rank("tucker2", "r_out", r_out, T)
    r_in = _check_rank("tucker2", "r_in", r_in, S)
    if not _is_integer(n_iter) or n_iter < 0:
        raise EngineInputError(f"tucker2: n_iter must be an integer >= 0, got {n_iter!r}")
    X = W.detach().to(_work_dtype(W))
    U_out = _leading_left_vectors(unfold(X, 0), r_out)                      # (T, r_out)
    U_in = _leading_left_vectors(unfold(X, 1), r_in)                        # (S, r_in)
    for _ in range(int(n_iter)):
        X_in = torch.einsum("tshw,si->tihw", X, U_in)                       # (T, r_in, kh, kw)
        U_out = _leading_left_vectors(unfold(X_in, 0), r_out)
        X_out = torch.einsum("tshw,to->oshw", X, U_out)                     # (r_out, S, kh, kw)
        U_in = _leading_left_vectors(unfold(X_out, 1), r_in)
    core = torch.einsum("tshw,to,si->oihw", X, U_out, U_in)                 # (r_out, r_in, kh, kw)
    approx = torch.einsum("oihw,to,si->tshw", core, U_out, U_in)            # (T, S, kh, kw)
    return Tucker2(
        first=U_in.T.reshape(r_in, S, 1, 1).to(W.dtype).contiguous(),
        core=core.to(W.dtype).contiguous(),
        last=U_out.reshape(T, r_out, 1, 1).to(W.dtype).contiguous(),
        rel_error=_relative_error(X, approx),
    )


def _single_mode(W: torch.Tensor, mode: int, rank: int, fn: str, name: str):
    """Truncated SVD of one mode's unfolding (optimal for a one-mode Tucker, Eckart–Young, no iteration):
    (U (dim, rank), core with that mode reduced to `rank`, relative error), core and error in the work dtype."""
    _check_kernel(W, fn)
    rank = _check_rank(fn, name, rank, W.shape[mode])
    X = W.detach().to(_work_dtype(W))
    U = _leading_left_vectors(unfold(X, mode), rank)
    spec = "tshw,to->oshw" if mode == 0 else "tshw,so->tohw"
    core = torch.einsum(spec, X, U)
    approx = torch.einsum("oshw,to->tshw" if mode == 0 else "tohw,so->tshw", core, U)
    return U, core, _relative_error(X, approx)


def tucker1(W: torch.Tensor, r_out: int) -> Tucker1:
    """Tucker-1 on the output mode: kh×kw conv S→r_out, then 1×1 conv r_out→T.

    For the stem conv whose S (e.g. 3 RGB channels) is too small for a 1×1 input projection to pay.
    """
    U_out, core, error = _single_mode(W, 0, r_out, "tucker1", "r_out")      # U (T, r_out), core (r_out, S, kh, kw)
    return Tucker1(
        core=core.to(W.dtype).contiguous(),
        last=U_out.reshape(*U_out.shape, 1, 1).to(W.dtype).contiguous(),
        rel_error=error,
    )


def tucker1_in(W: torch.Tensor, r_in: int) -> Tucker1In:
    """Tucker-1 on the input mode: 1×1 conv S→r_in, then kh×kw conv r_in→T (the layer's geometry and bias).

    One node fewer than Tucker-2, and no 1×1 conv writing the full output: the latency rule offers it
    where the clock prefers it.
    """
    U_in, core, error = _single_mode(W, 1, r_in, "tucker1in", "r_in")       # U (S, r_in), core (T, r_in, kh, kw)
    return Tucker1In(
        first=U_in.T.reshape(U_in.shape[1], U_in.shape[0], 1, 1).to(W.dtype).contiguous(),
        core=core.to(W.dtype).contiguous(),
        rel_error=error,
    )


def svd_factors(M: torch.Tensor, r: int) -> SVDFactors:
    """Rank-r truncated SVD of a weight matrix M (out, in): M ≈ second @ first.

    √σ goes to both factors (first = √Σ Vᵀ, second = U √Σ): the two layers then have equal spectral
    scale, so gradients and weight decay treat them alike during fine-tuning and neither factor's range
    blows up under float16/int8 quantization, unlike putting all of Σ on one side.
    Exact (Eckart–Young: dense SVD for tiny matrices, else the Gram route) up to ~1024×4096 and,
    above, for ranks beyond a sixth of min(out, in); large matrices at lower rank take the block Krylov
    route, within 1e-6 of the optimal error on decaying spectra and 1 % on pure noise (tests), at a
    fraction of the time.
    """
    if not isinstance(M, torch.Tensor) or M.dim() != 2:
        shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
        raise EngineInputError(f"svd_factors: needs a 2-D weight matrix (out, in), got {shape}")
    if not M.is_floating_point():
        raise EngineInputError(f"svd_factors: needs a floating-point matrix, got {M.dtype}")
    if not _all_finite(M):
        raise EngineInputError(f"svd_factors: matrix of shape {tuple(M.shape)} has NaN/Inf entries; fix the weights")
    out_dim, in_dim = M.shape
    r = _check_rank("svd_factors", "r", r, min(out_dim, in_dim))
    X = M.detach().to(_work_dtype(M))
    captured = None                                                         # ‖second @ first‖² when known
    work = out_dim * in_dim * min(out_dim, in_dim)
    if work <= _DIRECT_SVD_MAX_WORK:
        U, s, Vh = torch.linalg.svd(X, full_matrices=False)
        root = s[:r].sqrt()
        first = root[:, None] * Vh[:r]                                      # (r, in)
        second = U[:, :r] * root[None, :]                                   # (out, r)
    elif work > _KRYLOV_MIN_WORK and _KRYLOV_PASSES * (r + _oversampling(r)) <= min(out_dim, in_dim):
        first, second, captured = _svd_factors_by_krylov(X, r)
    else:
        first, second, captured = _svd_factors_by_gram(X, r)
    return SVDFactors(
        first=first.to(M.dtype).contiguous(),
        second=second.to(M.dtype).contiguous(),
        rel_error=_projection_relative_error(X, second, first, captured),
    )


def _projection_relative_error(X: torch.Tensor, second: torch.Tensor, first: torch.Tensor,
                               captured: float | None) -> float:
    """‖X − second @ first‖/‖X‖ where second @ first is an orthogonal projection of X with squared
    norm `captured` (Pythagoras: the residual's square is ‖X‖² − captured), else formed explicitly.

    For fc6 at rank 1388 the explicit residual is a 4096×1388×25088 product, as much as the
    factorisation's own Gram matrix; the shortcut is taken only where cancellation cannot matter.
    """
    if captured is not None:
        norm2 = squared_norm(X)
        if norm2 == 0:
            return 0.0
        rel2 = max(norm2 - captured, 0.0) / norm2
        if rel2 >= _ENERGY_ERROR_MIN_EPS * torch.finfo(X.dtype).eps:
            return math.sqrt(rel2)
    return _factored_relative_error(X, second, first)


def _svd_factors_by_gram(X: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-r factors of a large matrix from the eigenvectors of its smaller Gram matrix.

    A dense SVD of VGG-16's fc6 (4096×25088) with vectors takes minutes here; the Gram route costs one
    matrix product. With U_r from the Gram matrix, first = Σ^{-½} U_rᵀ X and second = U_r Σ^{½}, so
    second @ first = U_r U_rᵀ X, the projection on U_r: the product is as accurate as U_r even where
    Vᵀ computed as Σ⁻¹ U_rᵀ X would lose digits for small σ. Also returns ‖U_rᵀ X‖², the squared
    norm of that projection.
    """
    transpose = X.shape[0] > X.shape[1]
    A = X.T if transpose else X                                             # (m, n), m <= n
    eigvals, U = _top_eigenpairs(gram_matrix(A), r)                         # (r,), (m, r)
    sigma = eigvals.clamp_min(0.0).sqrt()                                   # (r,)
    # A zero σ has a zero row in U_rᵀ A as well; its factor rows are set to 0 instead of 0/0.
    inv_root = torch.where(sigma > 0, sigma.rsqrt(), torch.zeros_like(sigma))
    left = U * sigma.sqrt()[None, :]                                        # (m, r)
    projected = U.T @ A                                                     # (r, n)
    captured = squared_norm(projected)
    right = inv_root[:, None] * projected                                   # (r, n)
    if transpose:                                                           # X = Aᵀ ≈ rightᵀ leftᵀ
        return left.T, right.T, captured                                    # first (r, in=m), second (out=n, r)
    return right, left, captured                                            # first (r, in=n), second (out=m, r)


def _svd_factors_by_krylov(X: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Rank-r factors of a large matrix from a randomised block Krylov basis (see vbmf.block_krylov).

    For fc6-sized layers at moderate rank this costs 6 passes of width r + oversampling instead of a
    Gram matrix (min(out, in) passes) plus a dense eigensolver. The result is the best rank-r
    approximation within the Krylov space: near-optimal (block Krylov reaches (1 + ε) of the
    Eckart–Young error; the tests check the margin), not exactly optimal. Also returns the squared
    norm of that projection.
    """
    transpose = X.shape[0] > X.shape[1]
    A = X.T if transpose else X                                             # (m, n), m <= n
    basis, C = block_krylov(A, r + _oversampling(r), _KRYLOV_POWER_ITERATIONS)  # (m, K), (n, K): A ≈ basis Cᵀ
    # The SVD of Cᵀ from the K×K eigenproblem of CᵀC (an SVD of the n×K matrix C costs far more):
    # U_c = top-r eigenvectors, σ = √λ. As in the Gram route, second @ first = basis U_c U_cᵀ Cᵀ is
    # an orthogonal projection of A, exact however small σ gets.
    eigvals, U_c = _top_eigenpairs(C.T @ C, r)                              # (r,), (K, r)
    sigma = eigvals.clamp_min(0.0).sqrt()                                   # (r,)
    inv_root = torch.where(sigma > 0, sigma.rsqrt(), torch.zeros_like(sigma))
    left = (basis @ U_c) * sigma.sqrt()[None, :]                            # (m, r) = U √Σ
    projected = C @ U_c                                                     # (n, r); basis orthonormal: ‖·‖ = ‖projection‖
    right = (projected * inv_root[None, :]).T                               # (r, n) = Σ^{-½} U_cᵀ Cᵀ = √Σ Vᵀ
    left, right = left.to(X.dtype), right.to(X.dtype)
    captured = squared_norm(projected)
    if transpose:                                                           # X = Aᵀ ≈ rightᵀ leftᵀ
        return left.T, right.T, captured
    return right, left, captured
