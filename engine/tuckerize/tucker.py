"""Tucker-2, Tucker-1 and truncated SVD of layer weights (pure torch, input dtype preserved).

Kernel layout is PyTorch/ONNX (T, S, kh, kw) = (out, in, height, width). Tucker-2 keeps the spatial
modes and factors the channel modes: W ≈ core ×₀ U_out ×₁ U_in, which runs as three convolutions
    x (S) → 1×1 conv `first` (S→r_in) → kh×kw conv `core` (r_in→r_out) → 1×1 conv `last` (r_out→T).
Factors are computed in float64 whatever the input dtype, then cast back: the rewrite must be exact
at full rank, and float32 SVDs of 512×4608 unfoldings lose digits that fine-tuning would have to win back.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .errors import EngineInputError


class Tucker2(NamedTuple):
    first: torch.Tensor       # (r_in, S, 1, 1)
    core: torch.Tensor        # (r_out, r_in, kh, kw)
    last: torch.Tensor        # (T, r_out, 1, 1)
    rel_error: float          # ‖W − Ŵ‖_F / ‖W‖_F


class Tucker1(NamedTuple):
    core: torch.Tensor        # (r_out, S, kh, kw)
    last: torch.Tensor        # (T, r_out, 1, 1)
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


def _check_kernel(W: torch.Tensor, fn: str) -> None:
    if not isinstance(W, torch.Tensor) or W.dim() != 4:
        shape = tuple(W.shape) if isinstance(W, torch.Tensor) else type(W).__name__
        raise EngineInputError(f"{fn}: needs a 4-D conv kernel (T, S, kh, kw), got {shape}")
    if not W.is_floating_point():
        raise EngineInputError(f"{fn}: needs a floating-point kernel, got {W.dtype}")
    if not bool(torch.isfinite(W).all()):
        raise EngineInputError(f"{fn}: kernel of shape {tuple(W.shape)} has NaN/Inf entries; fix the weights")


def _check_rank(fn: str, what: str, r: int, dim: int) -> int:
    if isinstance(r, bool) or int(r) != r:
        raise EngineInputError(f"{fn}: {what} must be an integer with 1 <= {what} <= {dim}, got {r!r}")
    r = int(r)
    if not 1 <= r <= dim:
        raise EngineInputError(f"{fn}: {what} must satisfy 1 <= {what} <= {dim}, got {r}")
    return r


def _leading_left_vectors(A: torch.Tensor, r: int) -> torch.Tensor:
    U, _, _ = torch.linalg.svd(A, full_matrices=False)
    return U[:, :r]


def tucker2(W: torch.Tensor, r_out: int, r_in: int, n_iter: int = 2) -> Tucker2:
    """Tucker-2 of a conv kernel at ranks (r_out, r_in): HOSVD initialisation, then `n_iter` HOOI sweeps.

    HOOI (De Lathauwer et al. 2000) alternately refits each factor to the leading subspace of the kernel
    projected on the other factor; each step cannot increase the error, so n_iter = 0 is plain HOSVD.
    """
    _check_kernel(W, "tucker2")
    T, S, kh, kw = W.shape
    r_out = _check_rank("tucker2", "r_out", r_out, T)
    r_in = _check_rank("tucker2", "r_in", r_in, S)
    if isinstance(n_iter, bool) or int(n_iter) != n_iter or n_iter < 0:
        raise EngineInputError(f"tucker2: n_iter must be an integer >= 0, got {n_iter!r}")
    X = W.detach().to(torch.float64)
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


def tucker1(W: torch.Tensor, r_out: int) -> Tucker1:
    """Tucker-1 on the output mode: kh×kw conv S→r_out, then 1×1 conv r_out→T.

    For the stem conv whose S (e.g. 3 RGB channels) is too small for a 1×1 input projection to pay.
    Truncated SVD of the mode-0 unfolding is optimal here (Eckart–Young), so no iteration is needed.
    """
    _check_kernel(W, "tucker1")
    T, S, kh, kw = W.shape
    r_out = _check_rank("tucker1", "r_out", r_out, T)
    X = W.detach().to(torch.float64)
    U_out = _leading_left_vectors(unfold(X, 0), r_out)                      # (T, r_out)
    core = torch.einsum("tshw,to->oshw", X, U_out)                          # (r_out, S, kh, kw)
    approx = torch.einsum("oshw,to->tshw", core, U_out)                     # (T, S, kh, kw)
    return Tucker1(
        core=core.to(W.dtype).contiguous(),
        last=U_out.reshape(T, r_out, 1, 1).to(W.dtype).contiguous(),
        rel_error=_relative_error(X, approx),
    )


def svd_factors(M: torch.Tensor, r: int) -> SVDFactors:
    """Rank-r truncated SVD of a weight matrix M (out, in): M ≈ second @ first.

    √σ goes to both factors (first = √Σ Vᵀ, second = U √Σ): the two layers then have equal spectral
    scale, so gradients and weight decay treat them alike during fine-tuning and neither factor's range
    blows up under float16/int8 quantization, unlike putting all of Σ on one side.
    """
    if not isinstance(M, torch.Tensor) or M.dim() != 2:
        shape = tuple(M.shape) if isinstance(M, torch.Tensor) else type(M).__name__
        raise EngineInputError(f"svd_factors: needs a 2-D weight matrix (out, in), got {shape}")
    if not M.is_floating_point():
        raise EngineInputError(f"svd_factors: needs a floating-point matrix, got {M.dtype}")
    if not bool(torch.isfinite(M).all()):
        raise EngineInputError(f"svd_factors: matrix of shape {tuple(M.shape)} has NaN/Inf entries; fix the weights")
    out_dim, in_dim = M.shape
    r = _check_rank("svd_factors", "r", r, min(out_dim, in_dim))
    X = M.detach().to(torch.float64)
    U, s, Vh = torch.linalg.svd(X, full_matrices=False)
    root = s[:r].sqrt()
    first = root[:, None] * Vh[:r]                                          # (r, in)
    second = U[:, :r] * root[None, :]                                       # (out, r)
    return SVDFactors(
        first=first.to(M.dtype).contiguous(),
        second=second.to(M.dtype).contiguous(),
        rel_error=_relative_error(X, second @ first),
    )
