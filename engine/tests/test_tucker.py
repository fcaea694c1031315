"""Tucker-2 / Tucker-1 / truncated SVD: exactness, recovery of planted ranks, optimality bounds."""
import math

import pytest
import torch
import torch.nn.functional as F

from tuckerize.errors import EngineInputError
from tuckerize.tucker import svd_factors, tucker1, tucker2, unfold

f64 = torch.float64


def kernel(shape, seed, dtype=f64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def planted_kernel(T, S, kh, kw, r_out, r_in, seed):
    """A kernel of exact multilinear rank (r_out, r_in) in the channel modes."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(r_out, r_in, kh, kw, generator=g, dtype=f64)
    A = torch.randn(T, r_out, generator=g, dtype=f64)
    B = torch.randn(S, r_in, generator=g, dtype=f64)
    return torch.einsum("oihw,to,si->tshw", core, A, B)                     # (T, S, kh, kw)


def rebuild2(f):
    return torch.einsum("oihw,to,is->tshw", f.core, f.last[:, :, 0, 0], f.first[:, :, 0, 0])


def tail_energy(A, r):
    s = torch.linalg.svdvals(A)
    return float((s[r:] ** 2).sum())


def test_unfold_rows_are_the_mode_fibres():
    W = kernel((4, 3, 2, 5), 0)
    assert unfold(W, 0).shape == (4, 30)
    assert unfold(W, 1).shape == (3, 40)
    torch.testing.assert_close(unfold(W, 0)[2], W[2].reshape(-1), rtol=0, atol=0)
    torch.testing.assert_close(unfold(W, 1)[1], W[:, 1].reshape(-1), rtol=0, atol=0)
    with pytest.raises(EngineInputError, match="mode"):
        unfold(W, 4)


KERNELS = [(7, 5, 3, 3), (9, 3, 5, 5), (6, 11, 1, 7), (13, 4, 7, 1), (8, 3, 11, 11), (5, 5, 1, 1)]


@pytest.mark.parametrize("shape", KERNELS)
def test_full_rank_tucker2_is_exact(shape):
    W = kernel(shape, 1)
    f = tucker2(W, shape[0], shape[1])
    assert f.first.shape == (shape[1], shape[1], 1, 1)
    assert f.core.shape == shape
    assert f.last.shape == (shape[0], shape[0], 1, 1)
    assert f.rel_error < 1e-12
    torch.testing.assert_close(rebuild2(f), W, rtol=0, atol=1e-10)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), (3, (0, 2), 1)])
@pytest.mark.parametrize("shape", [(7, 5, 3, 3), (6, 3, 1, 7), (5, 3, 7, 1)])
def test_full_rank_chain_of_convolutions_equals_the_conv(shape, stride, padding, dilation):
    W = kernel(shape, 2)
    bias = kernel((shape[0],), 3)
    x = kernel((2, shape[1], 17, 15), 4)
    f = tucker2(W, shape[0], shape[1])
    y = F.conv2d(x, W, bias, stride=stride, padding=padding, dilation=dilation)
    z = F.conv2d(x, f.first)
    z = F.conv2d(z, f.core, stride=stride, padding=padding, dilation=dilation)
    z = F.conv2d(z, f.last, bias)
    torch.testing.assert_close(z, y, rtol=0, atol=1e-10)


@pytest.mark.parametrize("T,S,kh,kw,r_out,r_in", [
    (16, 12, 3, 3, 5, 4), (9, 7, 1, 7, 3, 2), (11, 13, 7, 1, 4, 6), (12, 3, 11, 11, 5, 2), (10, 10, 3, 3, 1, 1),
])
@pytest.mark.parametrize("n_iter", [0, 2])
def test_planted_multilinear_rank_is_recovered(T, S, kh, kw, r_out, r_in, n_iter):
    W = planted_kernel(T, S, kh, kw, r_out, r_in, seed=T + S)
    f = tucker2(W, r_out, r_in, n_iter=n_iter)
    assert f.core.shape == (r_out, r_in, kh, kw)
    assert f.rel_error < 1e-10
    torch.testing.assert_close(rebuild2(f), W, rtol=0, atol=1e-10 * float(W.abs().max()))


@pytest.mark.parametrize("shape,r_out,r_in", [((24, 20, 3, 3), 8, 6), ((33, 17, 3, 3), 5, 9), ((16, 16, 5, 5), 3, 3)])
def test_hooi_never_increases_the_error_and_respects_the_bounds(shape, r_out, r_in):
    W = kernel(shape, 5)
    errors = [tucker2(W, r_out, r_in, n_iter=n).rel_error for n in range(5)]
    for before, after in zip(errors, errors[1:]):
        assert after <= before + 1e-12
    norm2 = float((W**2).sum())
    tail_out = tail_energy(unfold(W, 0), r_out)
    tail_in = tail_energy(unfold(W, 1), r_in)
    # No Tucker-2 can beat the best rank-r_out fit of one unfolding; HOSVD is within the sum of tails.
    assert errors[-1] ** 2 * norm2 >= max(tail_out, tail_in) * (1 - 1e-9)
    assert errors[0] ** 2 * norm2 <= (tail_out + tail_in) * (1 + 1e-9)


def test_factor_orthonormality():
    f = tucker2(kernel((20, 12, 3, 3), 6), 7, 5)
    U_in = f.first[:, :, 0, 0]                                              # (r_in, S)
    U_out = f.last[:, :, 0, 0]                                              # (T, r_out)
    torch.testing.assert_close(U_in @ U_in.T, torch.eye(5, dtype=f64), rtol=0, atol=1e-12)
    torch.testing.assert_close(U_out.T @ U_out, torch.eye(7, dtype=f64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape,r", [((16, 3, 11, 11), 6), ((9, 3, 3, 3), 9), ((7, 1, 7, 1), 2)])
def test_tucker1_is_the_best_output_mode_fit(shape, r):
    W = kernel(shape, 7)
    f = tucker1(W, r)
    assert f.core.shape == (r,) + shape[1:]
    assert f.last.shape == (shape[0], r, 1, 1)
    rebuilt = torch.einsum("oshw,to->tshw", f.core, f.last[:, :, 0, 0])
    err = math.sqrt(tail_energy(unfold(W, 0), r) / float((W**2).sum()))
    assert f.rel_error == pytest.approx(err, rel=1e-9, abs=1e-13)
    assert float(torch.linalg.norm(W - rebuilt) / torch.linalg.norm(W)) == pytest.approx(f.rel_error, rel=1e-9, abs=1e-13)


@pytest.mark.parametrize("shape,r", [((30, 50), 7), ((50, 30), 30), ((1, 9), 1), ((9, 1), 1), ((64, 64), 1)])
def test_svd_factors_meet_eckart_young(shape, r):
    M = kernel(shape, 8)
    f = svd_factors(M, r)
    assert f.first.shape == (r, shape[1])
    assert f.second.shape == (shape[0], r)
    s = torch.linalg.svdvals(M)
    err = math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))
    assert f.rel_error == pytest.approx(err, rel=1e-9, abs=1e-13)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    best = U[:, :r] @ torch.diag(s[:r]) @ Vh[:r]
    torch.testing.assert_close(f.second @ f.first, best, rtol=0, atol=1e-12)


def test_svd_factors_split_the_singular_values_evenly():
    M = kernel((20, 35), 10)
    f = svd_factors(M, 6)
    s = torch.linalg.svdvals(M)[:6]
    torch.testing.assert_close(torch.linalg.norm(f.first, dim=1), s.sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.linalg.norm(f.second, dim=0), s.sqrt(), rtol=1e-12, atol=0)


def test_svd_factors_full_rank_is_exact():
    M = kernel((12, 17), 11)
    f = svd_factors(M, 12)
    torch.testing.assert_close(f.second @ f.first, M, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_preserved(dtype):
    W = kernel((8, 6, 3, 3), 12, dtype)
    for t in tucker2(W, 4, 3)[:3] + tucker1(W, 4)[:2] + svd_factors(W.reshape(8, -1), 3)[:2]:
        assert t.dtype == dtype


def test_float32_full_rank_within_float32_rounding():
    W = kernel((32, 16, 3, 3), 13, torch.float32)
    f = tucker2(W, 32, 16)
    torch.testing.assert_close(rebuild2(f), W, rtol=0, atol=1e-5)


def test_zero_kernel_has_zero_error():
    f = tucker2(torch.zeros(4, 3, 3, 3, dtype=f64), 2, 2)
    assert f.rel_error == 0.0
    assert torch.count_nonzero(f.core) == 0


@pytest.mark.parametrize("call,match", [
    (lambda W: tucker2(W, 0, 2), r"1 <= r_out <= 7, got 0"),
    (lambda W: tucker2(W, 8, 2), r"1 <= r_out <= 7, got 8"),
    (lambda W: tucker2(W, 3, 6), r"1 <= r_in <= 5, got 6"),
    (lambda W: tucker2(W, 2.5, 2), r"r_out must be an integer"),
    (lambda W: tucker2(W, "3", 2), r"r_out must be an integer"),
    (lambda W: tucker1(W, True), r"r_out must be an integer"),
    (lambda W: tucker2(W, 2, 2, n_iter=-1), r"n_iter"),
    (lambda W: tucker1(W, 9), r"1 <= r_out <= 7, got 9"),
    (lambda W: svd_factors(W.reshape(7, -1), 8), r"1 <= r <= 7, got 8"),
    (lambda W: tucker2(W[0], 1, 1), r"4-D conv kernel"),
    (lambda W: svd_factors(W, 1), r"2-D weight matrix"),
    (lambda W: tucker2(W.to(torch.int64), 1, 1), r"floating-point"),
])
def test_invalid_arguments_state_the_rule_and_value(call, match):
    with pytest.raises(EngineInputError, match=match):
        call(kernel((7, 5, 3, 3), 14))


def test_non_finite_kernels_are_refused():
    W = kernel((4, 3, 3, 3), 15)
    W[1, 2, 0, 0] = float("nan")
    with pytest.raises(EngineInputError, match="NaN/Inf"):
        tucker2(W, 2, 2)
    with pytest.raises(EngineInputError, match="NaN/Inf"):
        svd_factors(W.reshape(4, -1), 2)


@pytest.mark.parametrize("shape,r", [((30, 50), 7), ((50, 30), 12), ((40, 40), 40)])
def test_gram_route_for_large_matrices_meets_eckart_young(monkeypatch, shape, r):
    import tuckerize.tucker as tucker

    monkeypatch.setattr(tucker, "_DIRECT_SVD_MAX_WORK", 0)
    monkeypatch.setattr(tucker, "_KRYLOV_MIN_WORK", 0)        # take the large-matrix route
    M = kernel(shape, 16)
    f = svd_factors(M, r)
    assert f.first.shape == (r, shape[1]) and f.second.shape == (shape[0], r)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    torch.testing.assert_close(f.second @ f.first, U[:, :r] @ torch.diag(s[:r]) @ Vh[:r], rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.linalg.norm(f.first, dim=1), s[:r].sqrt(), rtol=1e-9, atol=0)
    torch.testing.assert_close(torch.linalg.norm(f.second, dim=0), s[:r].sqrt(), rtol=1e-9, atol=0)


def test_gram_route_with_zero_singular_values(monkeypatch):
    import tuckerize.tucker as tucker

    monkeypatch.setattr(tucker, "_DIRECT_SVD_MAX_WORK", 0)
    monkeypatch.setattr(tucker, "_KRYLOV_MIN_WORK", 0)
    M = kernel((20, 3), 17) @ kernel((3, 45), 18)                 # rank 3
    f = svd_factors(M, 6)
    assert bool(torch.isfinite(f.first).all() and torch.isfinite(f.second).all())
    torch.testing.assert_close(f.second @ f.first, M, rtol=0, atol=1e-10)


def decaying_matrix(out_dim, in_dim, seed):
    """σ_i = 1/i plus a 1e-4 noise floor, like a trained FC layer's spectrum."""
    g = torch.Generator().manual_seed(seed)
    n = min(out_dim, in_dim)
    U, _ = torch.linalg.qr(torch.randn(out_dim, n, generator=g, dtype=f64))
    V, _ = torch.linalg.qr(torch.randn(in_dim, n, generator=g, dtype=f64))
    s = torch.arange(1, n + 1, dtype=f64) ** -1.0
    return (U * s) @ V.T + 1e-4 * torch.randn(out_dim, in_dim, generator=g, dtype=f64)


@pytest.mark.parametrize("shape", [(900, 200), (200, 900)])
def test_krylov_route_is_near_eckart_young(monkeypatch, shape):
    import tuckerize.tucker as tucker

    monkeypatch.setattr(tucker, "_DIRECT_SVD_MAX_WORK", 0)
    monkeypatch.setattr(tucker, "_KRYLOV_MIN_WORK", 0)
    r = 10
    assert tucker._KRYLOV_PASSES * (r + tucker._oversampling(r)) <= min(shape)    # the Krylov route
    M = decaying_matrix(*shape, seed=19)
    f = svd_factors(M, r)
    assert f.first.shape == (r, shape[1]) and f.second.shape == (shape[0], r)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    ey = math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))
    assert ey * (1 - 1e-12) <= f.rel_error <= ey * (1 + 1e-6)
    best = U[:, :r] @ torch.diag(s[:r]) @ Vh[:r]
    # σ₁₀ and σ₁₁ are 10 % apart, so the 10th direction is the least settled; still within 1e-3.
    assert float(torch.linalg.norm(f.second @ f.first - best) / torch.linalg.norm(best)) < 1e-3
    torch.testing.assert_close(torch.linalg.norm(f.first, dim=1), s[:r].sqrt(), rtol=1e-5, atol=0)
    torch.testing.assert_close(torch.linalg.norm(f.second, dim=0), s[:r].sqrt(), rtol=1e-5, atol=0)


def test_krylov_route_on_a_flat_spectrum_and_float32(monkeypatch):
    import tuckerize.tucker as tucker

    monkeypatch.setattr(tucker, "_DIRECT_SVD_MAX_WORK", 0)
    monkeypatch.setattr(tucker, "_KRYLOV_MIN_WORK", 0)
    M = kernel((200, 900), 20)
    s = torch.linalg.svdvals(M)
    ey = math.sqrt(float((s[10:] ** 2).sum() / (s**2).sum()))
    # Pure noise is the hardest case for a randomised range finder; the error stays within 1 %.
    assert ey <= svd_factors(M, 10).rel_error <= ey * 1.01
    f32 = svd_factors(M.to(torch.float32), 10)
    assert f32.first.dtype == f32.second.dtype == torch.float32
    assert f32.rel_error <= ey * 1.01


def test_large_float32_eigenproblems_do_not_hit_the_ssyevd_workspace_bug():
    # torch's float32 eigh fails from n = 2897 on (LAPACK's float32 workspace query rounds down);
    # fc6/fc7 Gram matrices are 4096×4096. The eigenpairs must still be right.
    import tuckerize.tucker as tucker

    n, r = 2900, 3
    g = torch.Generator().manual_seed(40)
    Q, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=f64))
    G = ((Q * torch.tensor([9.0, 5.0, 2.0], dtype=f64)) @ Q.T).to(torch.float32)
    values, vectors = tucker._top_eigenpairs(G, r)
    assert values.dtype == vectors.dtype == torch.float32 and vectors.shape == (n, r)
    torch.testing.assert_close(values, torch.tensor([9.0, 5.0, 2.0]), rtol=1e-5, atol=1e-5)
    overlap = (vectors.to(f64).T @ Q).abs()
    torch.testing.assert_close(overlap, torch.eye(r, dtype=f64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("r", [1, 7, 40])
def test_scipy_eigensolver_route_agrees_with_torch(monkeypatch, r):
    import tuckerize.tucker as tucker

    A = kernel((40, 90), 41).to(torch.float32)
    G = A @ A.T
    expected_values, expected_vectors = tucker._top_eigenpairs(G, r)
    monkeypatch.setattr(tucker, "_FLOAT32_EIGH_MAX_N", 10)
    values, vectors = tucker._top_eigenpairs(G, r)
    torch.testing.assert_close(values, expected_values, rtol=1e-5, atol=1e-3)
    # Eigenvectors are defined up to sign.
    torch.testing.assert_close((vectors * expected_vectors).sum(0).abs(), torch.ones(r), rtol=0, atol=1e-3)
    # The whole svd_factors Gram route through scipy still meets Eckart–Young.
    monkeypatch.setattr(tucker, "_DIRECT_SVD_MAX_WORK", 0)
    monkeypatch.setattr(tucker, "_KRYLOV_MIN_WORK", 0)
    f = svd_factors(A, r)
    s = torch.linalg.svdvals(A.to(f64))
    ey = math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum()))
    assert f.rel_error == pytest.approx(ey, rel=1e-4, abs=1e-5)         # r = 40: float32 rounding only


def explicit_error(M, f):
    M64 = M.to(f64)
    return float(torch.linalg.norm(M64 - f.second.to(f64) @ f.first.to(f64)) / torch.linalg.norm(M64))


@pytest.mark.parametrize("route", ["gram", "krylov"])
@pytest.mark.parametrize("dtype", [f64, torch.float32])
@pytest.mark.parametrize("noise_floor", [1e-4, 1.0])
def test_reported_error_is_the_factors_error(monkeypatch, route, dtype, noise_floor):
    # The large-matrix routes report the error from the projection's energy where cancellation cannot
    # matter (large errors) and form the residual otherwise (small errors, float32): both must agree
    # with the residual of the returned factors.
    import tuckerize.tucker as tucker

    monkeypatch.setattr(tucker, "_DIRECT_SVD_MAX_WORK", 0)
    monkeypatch.setattr(tucker, "_KRYLOV_MIN_WORK", 0)
    g = torch.Generator().manual_seed(42)
    U, _ = torch.linalg.qr(torch.randn(200, 8, generator=g, dtype=f64))
    V, _ = torch.linalg.qr(torch.randn(900, 8, generator=g, dtype=f64))
    M = (U * torch.linspace(10, 3, 8, dtype=f64)) @ V.T + noise_floor * 0.01 * torch.randn(200, 900, generator=g, dtype=f64)
    M = M.to(dtype)
    r = 8 if route == "krylov" else 150
    assert (tucker._KRYLOV_PASSES * (r + tucker._oversampling(r)) <= 200) == (route == "krylov")
    f = svd_factors(M, r)
    tolerance = 1e-9 if dtype == f64 else 2e-5
    assert f.rel_error == pytest.approx(explicit_error(M, f), rel=tolerance, abs=tolerance)


def test_finiteness_check_survives_float64_overflow_of_the_sum():
    import tuckerize.tucker as tucker

    huge = torch.full((6, 5), 1e307, dtype=f64)       # finite entries whose float64 sum overflows
    assert not math.isfinite(float(huge.sum())) and tucker._all_finite(huge)
    for bad in ([float("inf"), float("-inf")], [float("nan"), 1.0], [float("inf"), 1.0]):
        M = kernel((6, 5), 43)
        M[2, 1], M[4, 3] = bad
        assert not tucker._all_finite(M)
        with pytest.raises(EngineInputError, match="NaN/Inf"):
            svd_factors(M.to(torch.float32), 2)


@pytest.mark.parametrize("shape,r", [((300, 60), 5), ((60, 300), 60), ((120, 90), 60)])
def test_mid_sized_matrices_take_the_exact_gram_route(shape, r):
    # Above the dense-SVD size and below the Krylov size: the Gram route, Eckart–Young exact.
    import tuckerize.tucker as tucker

    assert tucker._DIRECT_SVD_MAX_WORK < shape[0] * shape[1] * min(shape) <= tucker._KRYLOV_MIN_WORK
    M = kernel(shape, 44)
    f = svd_factors(M, r)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    torch.testing.assert_close(f.second @ f.first, U[:, :r] @ torch.diag(s[:r]) @ Vh[:r], rtol=0, atol=1e-10)
    assert f.rel_error == pytest.approx(math.sqrt(float((s[r:] ** 2).sum() / (s**2).sum())), rel=1e-9, abs=1e-12)
