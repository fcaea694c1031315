"""EVBMF: the facts of docs/evbmf.md over several shapes, the top-H form, and edge cases."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tuckerize import EVBMFResult, evbmf
from tuckerize.errors import EngineInputError
from tuckerize.vbmf import evb_shrinkage, evbmf_spectrum, tau_bar, top_singular_values, x_bar

SHAPES = [(40, 300), (300, 40), (120, 120), (8, 4000), (64, 576)]


def noise(shape, sigma, seed):
    return np.random.default_rng(seed).normal(scale=sigma, size=shape)


def planted(shape, gammas, sigma, seed):
    """Y = U diag(gammas) Vᵀ + N(0, σ²) noise, U and V with orthonormal columns."""
    rng = np.random.default_rng(seed)
    L, M = shape
    R = len(gammas)
    U, _ = np.linalg.qr(rng.normal(size=(L, R)))
    V, _ = np.linalg.qr(rng.normal(size=(M, R)))
    return U @ np.diag(gammas) @ V.T + rng.normal(scale=sigma, size=shape)


def evb_threshold(shape, sigma):
    L, M = min(shape), max(shape)
    return math.sqrt(M * sigma**2 * x_bar(L / M))


def reference_free_energy(sigma2, gamma, L, M, residual, H):
    """Ω(σ²) exactly as written in docs/evbmf.md (with its ln x_h terms)."""
    alpha = L / M
    xb = x_bar(alpha)
    total = residual / (M * sigma2) + (L - H) * math.log(sigma2)
    for g in gamma:
        x = g * g / (M * sigma2)
        if x <= xb:
            total += x - math.log(x)
        else:
            tau = 0.5 * (x - (1 + alpha) + math.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))
            total += x - tau + math.log((tau + 1) / x) + alpha * math.log(tau / alpha + 1)
    return total


# --- τ̄ and x̄ -------------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.1, 1e-2, 1e-4])
def test_tau_bar_is_the_root_of_xi(alpha):
    def phi(z):
        return math.log1p(z) / z - 0.5

    t = tau_bar(alpha)
    assert t > 0
    assert abs(phi(t) + phi(t / alpha)) < 1e-12


def test_tau_bar_known_value_and_monotone():
    assert tau_bar(1.0) == pytest.approx(2.5129, abs=1e-4)
    alphas = [1e-4, 1e-3, 0.01, 0.1, 0.3, 0.7, 1.0]
    taus = [tau_bar(a) for a in alphas]
    assert taus == sorted(taus)
    # The popular approximation 2.5129·√α is exact at α = 1 and low below it (docs/evbmf.md).
    assert all(t > 2.5129 * math.sqrt(a) for a, t in zip(alphas[:-1], taus[:-1]))


@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.01])
def test_threshold_is_above_the_noise_edge(alpha):
    # Marchenko–Pastur: pure-noise γ²/(Mσ²) stays below (1 + √α)²; x̄ must exceed it for rank 0.
    assert x_bar(alpha) > (1 + math.sqrt(alpha)) ** 2


# --- free energy ---------------------------------------------------------------------------------

@pytest.mark.parametrize("H", [50, 20])
def test_shifted_free_energy_matches_evbmf_md_up_to_a_constant(H):
    from tuckerize.vbmf import _free_energy

    Y = planted((50, 90), [60.0, 40.0, 25.0], 1.0, seed=3)
    s = np.linalg.svd(Y, compute_uv=False)
    L, M = Y.shape
    gamma = s[:H]
    residual = float((s[H:] ** 2).sum())
    sig = np.geomspace(0.2, 3.0, 25)
    ours = _free_energy(sig, gamma**2, float((s**2).sum()), L, M, L / M, x_bar(L / M))
    ref = np.array([reference_free_energy(v, gamma, L, M, residual, H) for v in sig])
    shift = ref - ours
    # The shift is Σ_h ln γ_h² − H ln M, plus the (L − H) ln σ² bookkeeping of the uncomputed tail.
    np.testing.assert_allclose(shift, shift[0], rtol=0, atol=1e-8 * np.abs(ref).max())


def test_slope_is_the_derivative_of_the_free_energy():
    from tuckerize.vbmf import _free_energy, _free_energy_slope

    Y = planted((40, 70), [50.0, 30.0, 22.0], 1.0, seed=16)
    s = np.linalg.svd(Y, compute_uv=False)
    L, M = Y.shape
    args = (s**2, float((s**2).sum()), L, M, L / M, x_bar(L / M))
    for sigma2 in [0.5, 0.9, 1.3, 2.0]:
        h = 1e-6 * sigma2
        numeric = (_free_energy(np.array([sigma2 + h]), *args) - _free_energy(np.array([sigma2 - h]), *args)) / (2 * h)
        assert sigma2 * numeric[0] == pytest.approx(_free_energy_slope(np.array([sigma2]), *args)[0], rel=1e-5, abs=1e-6)


def test_estimate_is_the_degrees_of_freedom_fixed_point():
    # At an interior optimum σ² = E / (M (L + Σ_{survivors} τ_h)).
    Y = planted((50, 120), [80.0, 60.0, 45.0, 40.0], 1.0, seed=17)
    r = evbmf(Y)
    L, M = Y.shape
    alpha = L / M
    x = r.singular_values[: r.rank] ** 2 / (M * r.sigma2)
    tau = 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))
    assert r.rank == 4
    assert r.sigma2 == pytest.approx(float((Y**2).sum()) / (M * (L + tau.sum())), rel=1e-12)


# --- the facts of docs/evbmf.md ------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_pure_noise_gives_rank_zero_and_the_noise_variance(shape):
    sigma = 0.37
    r = evbmf(noise(shape, sigma, seed=1))
    assert isinstance(r, EVBMFResult)
    assert r.rank == 0
    assert r.sigma2 == pytest.approx(sigma**2, rel=0.03)
    assert r.threshold == pytest.approx(evb_threshold(shape, math.sqrt(r.sigma2)), rel=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("R", [1, 3, 7])
def test_planted_rank_is_recovered_exactly(shape, R):
    sigma = 0.5
    thr = evb_threshold(shape, sigma)
    gammas = thr * np.linspace(4.0, 2.0, R)
    r = evbmf(planted(shape, gammas, sigma, seed=R))
    assert r.rank == R
    assert r.sigma2 == pytest.approx(sigma**2, rel=0.05)
    assert r.singular_values[R - 1] > r.threshold > r.singular_values[R]


@pytest.mark.parametrize("shape", SHAPES)
def test_signal_below_threshold_gives_rank_zero(shape):
    # Below the BBP transition σ(LM)^¼ a spike does not even lift the top singular value out of the
    # noise bulk; EVBMF's threshold lies above that, so such signals must be missed.
    sigma = 0.5
    bbp = sigma * (shape[0] * shape[1]) ** 0.25
    assert bbp < evb_threshold(shape, sigma)
    r = evbmf(planted(shape, [0.8 * bbp, 0.6 * bbp], sigma, seed=2))
    assert r.rank == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_transpose_gives_same_rank_and_sigma2(shape):
    thr = evb_threshold(shape, 1.0)
    Y = planted(shape, [3 * thr, 2.5 * thr], 1.0, seed=4)
    a, b = evbmf(Y), evbmf(Y.T)
    assert a.rank == b.rank == 2
    assert a.sigma2 == pytest.approx(b.sigma2, rel=1e-7)
    assert a.threshold == pytest.approx(b.threshold, rel=1e-7)


@pytest.mark.parametrize("shape", SHAPES[:3])
@pytest.mark.parametrize("c", [1e-4, 7.0, 3e5])
def test_scaling_scales_sigma2_by_c_squared(shape, c):
    thr = evb_threshold(shape, 1.0)
    Y = planted(shape, [2.5 * thr], 1.0, seed=5)
    a, b = evbmf(Y), evbmf(c * Y)
    assert b.rank == a.rank == 1
    assert b.sigma2 == pytest.approx(a.sigma2 * c * c, rel=1e-7)


@settings(max_examples=15, deadline=None)
@given(L=st.integers(2, 40), M=st.integers(2, 40), R=st.integers(0, 2), seed=st.integers(0, 10_000),
       c=st.sampled_from([1e-3, 0.37, 2.0, 950.0]))
def test_property_transpose_and_scale_invariance(L, M, R, seed, c):
    shape = (L, M)
    thr = evb_threshold(shape, 1.0)
    Y = planted(shape, [4 * thr] * R, 1.0, seed) if R else noise(shape, 1.0, seed)
    a, b, s = evbmf(Y), evbmf(Y.T), evbmf(c * Y)
    assert a.rank == b.rank == s.rank
    assert b.sigma2 == pytest.approx(a.sigma2, rel=1e-8)
    assert s.sigma2 == pytest.approx(a.sigma2 * c * c, rel=1e-6)
    # Whatever the data, the kept components are exactly those above the threshold.
    assert a.rank == int(np.sum(a.singular_values > a.threshold))


def test_given_sigma2_sets_the_threshold():
    Y = planted((30, 60), [50.0, 20.0, 6.0], 1.0, seed=6)
    r = evbmf(Y, sigma2=1.0)
    assert r.sigma2 == 1.0
    assert r.threshold == pytest.approx(math.sqrt(60 * x_bar(0.5)), rel=1e-12)
    assert r.rank == int(np.sum(r.singular_values > r.threshold)) == 2


def test_shrinkage_of_survivors():
    Y = planted((40, 80), [60.0, 35.0, 20.0], 1.0, seed=7)
    r = evbmf(Y)
    shrunk = evb_shrinkage(r.singular_values, 40, 80, r.sigma2)
    assert np.count_nonzero(shrunk) == r.rank == 3
    assert np.all(shrunk[:3] < r.singular_values[:3])
    # Strong components are shrunk relatively less: γ̂/γ increases with γ.
    ratio = shrunk[:3] / r.singular_values[:3]
    assert ratio[0] > ratio[1] > ratio[2] > 0
    # The shrunk value is close to the planted one (the bias EVB corrects is the noise's push up).
    assert shrunk[0] == pytest.approx(60.0, rel=0.02)


# --- the top-H form ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,H", [((60, 400), 20), ((400, 60), 10), ((100, 100), 30), ((80, 5000), 16)])
def test_top_h_spectrum_equals_full_when_rank_is_below_h(shape, H):
    thr = evb_threshold(shape, 1.0)
    Y = planted(shape, thr * np.array([5.0, 3.0, 2.0, 1.6]), 1.0, seed=8)
    s = np.linalg.svd(Y, compute_uv=False)
    L, M = Y.shape
    full = evbmf_spectrum(s, L, M)
    top = evbmf_spectrum(s[:H], L, M, residual=float((s[H:] ** 2).sum()))
    assert full.rank == top.rank == 4
    assert top.sigma2 == pytest.approx(full.sigma2, rel=1e-7)
    assert top.singular_values.size == H


def test_top_h_rank_h_means_at_least_h():
    Y = planted((50, 200), [400.0] * 6, 1.0, seed=9)
    s = np.linalg.svd(Y, compute_uv=False)
    assert evbmf_spectrum(s, 50, 200).rank == 6
    for H, expected in [(4, 4), (6, 6), (8, 6)]:
        assert evbmf_spectrum(s[:H], 50, 200, residual=float((s[H:] ** 2).sum())).rank == expected


def test_top_h_search_stays_where_the_tail_is_noise():
    # A strong tail beyond H must not be claimed as signal: the result's threshold is >= γ_H unless
    # the rank is reported as H ("at least H").
    Y = planted((60, 300), [300.0, 200.0] + [60.0] * 20, 1.0, seed=15)
    s = np.linalg.svd(Y, compute_uv=False)
    r = evbmf_spectrum(s[:10], 60, 300, residual=float((s[10:] ** 2).sum()))
    assert r.rank == 10 or r.threshold >= s[9]


def test_randomised_top_values_match_svd_for_separated_components():
    Y = torch.from_numpy(planted((200, 900), [300.0, 200.0, 150.0, 120.0], 1.0, seed=10))
    exact = torch.linalg.svdvals(Y)[:8]
    approx = top_singular_values(Y, 8)
    assert torch.all(approx <= exact * (1 + 1e-12))          # Ritz values never exceed the truth
    torch.testing.assert_close(approx[:4], exact[:4], rtol=1e-4, atol=0)
    # Values inside the noise bulk come out a few % low; Ω sees them only through the total energy.
    assert torch.all(approx >= 0.9 * exact)


def test_top_values_are_exact_when_the_krylov_basis_would_fill_the_space():
    Y = torch.from_numpy(noise((20, 50), 1.0, seed=19))
    torch.testing.assert_close(top_singular_values(Y, 8), torch.linalg.svdvals(Y)[:8], rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(120, 700), (700, 120)])
def test_evbmf_with_h_agrees_with_full(shape):
    thr = evb_threshold(shape, 0.5)
    Y = planted(shape, thr * np.array([4.0, 3.0, 2.5, 2.0, 1.8]), 0.5, seed=11)
    full = evbmf(Y, H=min(shape))
    top = evbmf(Y, H=32)
    assert full.rank == top.rank == 5
    assert top.sigma2 == pytest.approx(full.sigma2, rel=0.01)


@pytest.fixture
def small_limits(monkeypatch):
    """Shrink the size policy of evbmf(Y) so its large-matrix paths run on 600×2000 matrices:
    top H = 16, 32 may be tried (6·H passes ≤ L/2 = 300), then the full spectrum."""
    import tuckerize.vbmf as vbmf

    monkeypatch.setattr(vbmf, "_FULL_SPECTRUM_MAX_WORK", 1000)
    monkeypatch.setattr(vbmf, "_INITIAL_TOP_H", 16)


@pytest.mark.parametrize("R,n_values", [(5, 16), (12, 32), (40, 600)])
def test_default_h_policy_agrees_with_the_full_svd(small_limits, R, n_values):
    shape = (600, 2000)
    thr = evb_threshold(shape, 0.1)
    Y = planted(shape, thr * np.linspace(3.0, 1.5, R), 0.1, seed=R)
    auto = evbmf(Y)
    s = np.linalg.svd(Y, compute_uv=False)
    full = evbmf_spectrum(s, *shape)
    assert auto.singular_values.size == n_values             # which path was taken
    assert auto.rank == full.rank == R
    assert auto.sigma2 == pytest.approx(full.sigma2, rel=0.01)


def test_gram_route_matches_the_svd():
    from tuckerize.vbmf import _SVD_MAX_WORK, _full_singular_values

    Y = torch.from_numpy(planted((300, 700), [90.0, 50.0, 30.0], 1.0, seed=18))
    assert 300 * 300 * 700 > _SVD_MAX_WORK
    torch.testing.assert_close(torch.from_numpy(_full_singular_values(Y)), torch.linalg.svdvals(Y),
                               rtol=1e-10, atol=0)
    Y32 = Y.to(torch.float32)
    torch.testing.assert_close(torch.from_numpy(_full_singular_values(Y32)),
                               torch.linalg.svdvals(Y32.to(torch.float64)), rtol=1e-10, atol=0)


@pytest.mark.parametrize("shape", [(5, 40), (128, 300), (300, 130), (1030, 50)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gram_matrix_is_the_exactly_symmetric_product(monkeypatch, shape, dtype):
    import tuckerize.vbmf as vbmf

    # Small blocks so that several row blocks and (for float64 accumulation) column chunks are used.
    monkeypatch.setattr(vbmf, "_GRAM_MIN_BLOCK_ROWS", 7)
    A = torch.from_numpy(noise(shape, 1.0, seed=31)).to(dtype)
    G = vbmf.gram_matrix(A)
    assert G.dtype == dtype and G.shape == (shape[0], shape[0])
    assert torch.equal(G, G.T)
    # Blocks sum in another order than one product: float32 rounding of sums of ~300 products.
    torch.testing.assert_close(G, A @ A.T, rtol=1e-5, atol=1e-4 if dtype == torch.float32 else 1e-10)
    G64 = vbmf.gram_matrix(A, torch.float64)
    assert G64.dtype == torch.float64 and torch.equal(G64, G64.T)
    A64 = A.to(torch.float64)
    torch.testing.assert_close(G64, A64 @ A64.T, rtol=1e-12, atol=1e-9)


# --- inputs and edge cases -----------------------------------------------------------------------

def test_torch_and_numpy_inputs_agree():
    Y = planted((30, 50), [40.0, 25.0], 0.5, seed=13).astype(np.float32)
    a, b = evbmf(Y), evbmf(torch.from_numpy(Y))
    assert a.rank == b.rank == 2
    assert a.sigma2 == b.sigma2
    assert b.singular_values.dtype == np.float64


@pytest.mark.parametrize("shape,R", [((20, 30), 3), ((30, 20), 5), ((16, 16), 1), ((2, 50), 1), ((300, 700), 5)])
def test_exactly_low_rank_answers_the_true_rank(shape, R):
    rng = np.random.default_rng(14)
    Y = rng.normal(size=(shape[0], R)) @ rng.normal(size=(R, shape[1]))
    r = evbmf(Y)
    assert r.rank == R
    assert np.isfinite(r.sigma2) and r.sigma2 >= 0


@pytest.mark.parametrize("H", [None, 32])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_exactly_low_rank_through_the_gram_and_krylov_routes(H, dtype):
    # 300×700 is past the dense-SVD size: squared spectra whose rounding noise must not read as signal.
    rng = np.random.default_rng(20)
    Y = (rng.normal(size=(300, 5)) @ rng.normal(size=(5, 700))).astype(dtype)
    assert evbmf(Y, H=H).rank == 5


def test_exact_zero_singular_values_in_a_spectrum():
    r = evbmf_spectrum(np.array([9.0, 4.0, 0.0, 0.0, 0.0]), 5, 12)
    assert r.rank == 2
    assert np.isfinite(r.sigma2) and r.sigma2 > 0


def test_all_zero_matrix():
    r = evbmf(np.zeros((6, 9)))
    assert (r.rank, r.sigma2, r.threshold) == (0, 0.0, 0.0)


@pytest.mark.parametrize("shape", [(5, 8), (8, 5), (3, 3)])
def test_constant_matrix_is_rank_one(shape):
    assert evbmf(np.full(shape, -2.5)).rank == 1


@pytest.mark.parametrize("shape", [(1, 9), (9, 1)])
def test_vectors_have_rank_zero_and_mean_square_noise(shape):
    # One row cannot separate signal from noise: EVBMF's bracket collapses to the mean square.
    y = np.arange(1.0, 10.0).reshape(shape)
    r = evbmf(y)
    assert r.rank == 0
    assert r.sigma2 == pytest.approx(float(np.mean(y**2)))


def test_one_by_one():
    r = evbmf(np.array([[3.0]]))
    assert r.rank == 0 and r.sigma2 == pytest.approx(9.0)


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_entries_are_refused_with_the_name(bad, what):
    Y = np.ones((4, 6))
    Y[2, 3] = bad
    with pytest.raises(EngineInputError, match=rf"fc7\.weight.*1 {what}|fc7\.weight.*{what}"):
        evbmf(Y, name="fc7.weight")


def test_overflowing_entries_are_refused():
    with pytest.raises(EngineInputError, match=r"conv3: entries up to 1e\+200 overflow"):
        evbmf(np.full((3, 4), 1e200), name="conv3")


@pytest.mark.parametrize("Y,match", [
    (np.ones((2, 3, 4)), "2-D"),
    (np.ones((0, 5)), "non-empty"),
    ([["a", "b"]], "numeric"),
])
def test_malformed_matrices(Y, match):
    with pytest.raises(EngineInputError, match=match):
        evbmf(Y)


def test_bad_sigma2_h_and_spectrum():
    with pytest.raises(EngineInputError, match="sigma2"):
        evbmf(np.ones((3, 4)), sigma2=-1.0)
    with pytest.raises(EngineInputError, match="H"):
        evbmf(np.ones((3, 4)), H=0)
    with pytest.raises(EngineInputError, match="at most 3"):
        evbmf_spectrum(np.ones(4), 3, 10)
    with pytest.raises(EngineInputError, match=">= 0"):
        evbmf_spectrum(np.array([1.0, -1.0]), 2, 10)
    with pytest.raises(EngineInputError, match="residual"):
        evbmf_spectrum(np.array([2.0, 1.0]), 3, 10, residual=-5.0)


def test_squared_norm_in_float32_blocks_matches_float64():
    """Blocks summed in float32 stay within 1e-6 of the float64 sum, also for offset and wide-ranging entries;
    entries whose float32 squares overflow are redone in float64, and NaN still shows as non-finite."""
    from tuckerize.vbmf import squared_norm

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(700, 3000, generator=generator)
    for matrix in (base, base + 100.0, base * torch.logspace(-3, 3, 3000)):
        exact = float((matrix.double() ** 2).sum())
        assert abs(squared_norm(matrix) - exact) <= 1e-6 * exact
    huge = torch.full((4, 5), 1e20, dtype=torch.float32)
    assert math.isclose(squared_norm(huge), 20 * float(torch.tensor(1e20, dtype=torch.float32).double()) ** 2,
                        rel_tol=1e-6)
    broken = base.clone()
    broken[3, 4] = float("nan")
    assert not math.isfinite(squared_norm(broken))
