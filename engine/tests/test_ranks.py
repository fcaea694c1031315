"""Rank rules: MUSCO weakening, roundTo, and the budget solver on synthetic layer sets."""
import pytest

from tuckerize.errors import EngineInputError
from tuckerize.ranks import (BudgetSolution, RankCandidate, family_ranks, round_rank, solve_budget,
                             weakened_rank)


# --- synthetic layers with the real cost formulas (params, MACs at batch 1) -------------------------

def conv_tucker2(name, T, S, k, hw_in, stride, evb, may_keep=True):
    hw_out = hw_in // stride

    def cost(ranks):
        r_out, r_in = ranks
        params = S * r_in + r_in * r_out * k * k + r_out * T + T
        macs = hw_in * hw_in * S * r_in + hw_out * hw_out * (r_in * r_out * k * k + r_out * T)
        return params, macs

    original = (T * S * k * k + T, hw_out * hw_out * T * S * k * k)
    return RankCandidate(name, (T, S), evb, cost, original, may_keep)


def conv_tucker1(name, T, S, k, hw_out, evb):
    def cost(ranks):
        (r,) = ranks
        return r * S * k * k + T * r + T, hw_out * hw_out * (r * S * k * k + T * r)

    return RankCandidate(name, (T,), evb, cost, (T * S * k * k + T, hw_out * hw_out * T * S * k * k))


def fc_svd(name, out_dim, in_dim, evb, may_keep=True):
    def cost(ranks):
        (r,) = ranks
        return r * (in_dim + out_dim) + out_dim, r * (in_dim + out_dim)

    return RankCandidate(name, (min(out_dim, in_dim),), evb, cost, (out_dim * in_dim + out_dim, out_dim * in_dim), may_keep)


def small_vgg():
    """A VGG-like stack: RGB stem (Tucker-1), Tucker-2 convs with varied EVBMF ranks, SVD'd FCs."""
    return [
        conv_tucker1("conv1", 64, 3, 3, 32, (20,)),
        conv_tucker2("conv2", 64, 64, 3, 32, 1, (30, 25)),
        conv_tucker2("conv3", 128, 64, 3, 32, 2, (60, 40)),
        conv_tucker2("conv4", 128, 128, 3, 16, 1, (50, 70)),
        conv_tucker2("conv5", 256, 128, 3, 16, 2, (0, 0)),          # EVBMF found nothing
        conv_tucker2("conv6", 256, 256, 3, 8, 1, (256, 200)),       # EVBMF keeps almost everything
        conv_tucker2("conv7", 256, 256, 5, 8, 1, (90, 110)),
        fc_svd("fc1", 512, 4096, (120,)),
        fc_svd("fc2", 10, 512, (10,)),
    ]


UNTOUCHED = (5_000, 2_000_000)      # BatchNorm etc.


def recompute(layers, solution, untouched):
    """Totals from the returned ranks, independently of the solver's bookkeeping."""
    params, macs = untouched
    for layer in layers:
        ranks = solution.ranks[layer.name]
        p, m = layer.original if ranks is None else layer.cost(ranks)
        params += p
        macs += m
    return params, macs


# --- weakened_rank -------------------------------------------------------------------------------

def test_weakened_rank_endpoints_and_rounding_up():
    assert weakened_rank(64, 20, 1.0) == 20
    assert weakened_rank(64, 20, 0.5) == 42
    assert weakened_rank(64, 21, 0.5) == 43          # 64 − 21.5 = 42.5 rounds up
    assert weakened_rank(64, 20, 1e-9) == 64
    assert weakened_rank(10, 0, 1.0) == 0
    assert weakened_rank(10, 10, 0.3) == 10


def test_numpy_integers_and_floats_are_accepted():
    import numpy as np

    assert weakened_rank(np.int64(64), np.int32(20), np.float32(0.5)) == 42
    assert round_rank(np.int64(9), np.int64(8), np.int64(64)) == 16
    assert isinstance(round_rank(np.int64(9), 8, 64), int)


def test_weakened_rank_is_monotone_in_strength():
    ranks = [weakened_rank(512, 37, w / 100) for w in range(1, 101)]
    assert all(a >= b for a, b in zip(ranks, ranks[1:]))
    assert ranks[0] == 508 and ranks[-1] == 37       # 512 − 0.01·475 = 507.25 rounds up


@pytest.mark.parametrize("args,match", [
    ((64, 20, 0.0), "0 < strength <= 1"), ((64, 20, 1.5), "0 < strength <= 1"),
    ((64, 70, 0.5), "r_evbmf"), ((0, 0, 0.5), "r_full"),
])
def test_weakened_rank_rejects_bad_values(args, match):
    with pytest.raises(EngineInputError, match=match):
        weakened_rank(*args)


# --- round_rank ----------------------------------------------------------------------------------

@pytest.mark.parametrize("r,m,r_max,expected", [
    (1, 8, 64, 8), (8, 8, 64, 8), (9, 8, 64, 16), (63, 8, 64, 64), (61, 8, 62, 56),
    (5, 8, 6, 5), (3, 16, 3, 3), (2, 16, 12, 2), (13, 1, 20, 13), (100, 32, 100, 96),
])
def test_round_rank(r, m, r_max, expected):
    assert round_rank(r, m, r_max) == expected


@pytest.mark.parametrize("m,r_max", [(8, 100), (16, 64), (8, 7), (3, 50)])
def test_round_rank_gives_multiples_in_range_monotonically(m, r_max):
    rounded = [round_rank(r, m, r_max) for r in range(1, r_max + 1)]
    assert all(a <= b for a, b in zip(rounded, rounded[1:]))
    for r, q in zip(range(1, r_max + 1), rounded):
        if r_max < m:
            assert q == r, "a mode narrower than the block keeps the rule's rank"
        else:
            assert q % m == 0 and m <= q <= r_max


def test_round_rank_rejects_bad_values():
    with pytest.raises(EngineInputError, match="roundTo"):
        round_rank(5, 0, 10)
    with pytest.raises(EngineInputError, match="1 <= r <= 10"):
        round_rank(11, 4, 10)
    with pytest.raises(EngineInputError, match="roundTo"):
        round_rank(5, 8.0, 10)
    with pytest.raises(EngineInputError, match="roundTo"):
        round_rank(5, True, 10)


# --- the family ----------------------------------------------------------------------------------

def test_family_endpoints_and_monotonicity():
    layer = conv_tucker2("c", 128, 96, 3, 16, 1, (40, 0))
    assert family_ranks(layer, 0.0) == (128, 96)
    assert family_ranks(layer, 1.0) == (40, 1)        # EVBMF rank 0 floored at 1
    assert family_ranks(layer, 2.0) == (1, 1)
    assert family_ranks(layer, 1.5) == (20, 1)
    ts = [i / 200 for i in range(401)]
    seq = [family_ranks(layer, t) for t in ts]
    for a, b in zip(seq, seq[1:]):
        assert a[0] >= b[0] and a[1] >= b[1]
    rounded = [family_ranks(layer, t, round_to=8) for t in ts]
    assert all(r % 8 == 0 for ranks in rounded for r in ranks)


def test_whole_graph_ratio_is_monotone_in_the_family_parameter():
    from tuckerize.ranks import _evaluate

    layers = small_vgg()
    before = (UNTOUCHED[0] + sum(layer.original[0] for layer in layers),
              UNTOUCHED[1] + sum(layer.original[1] for layer in layers))
    for k in (0, 1):
        ratios = [_evaluate(layers, [family_ranks(layer, t / 50) for layer in layers], UNTOUCHED, k, before)[0]
                  for t in range(101)]
        assert ratios[0] == 1.0                     # full ranks never pay: every layer kept
        assert all(a >= b for a, b in zip(ratios, ratios[1:]))
        assert ratios[-1] < 0.05


# --- solve_budget --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("target", [0.9, 0.6, 0.4, 0.25, 0.2, 0.12, 0.06])
def test_budget_hits_the_target_within_two_percent(kind, target):
    layers = small_vgg()
    sol = solve_budget(layers, target, kind=kind, untouched=UNTOUCHED)
    assert isinstance(sol, BudgetSolution)
    assert abs(sol.ratio - target) <= 0.02 * target
    params, macs = recompute(layers, sol, UNTOUCHED)
    assert (sol.params[1], sol.macs[1]) == (params, macs)
    achieved = (macs / sol.macs[0]) if kind == "macs" else (params / sol.params[0])
    assert achieved == pytest.approx(sol.ratio, rel=1e-12)
    for layer in layers:
        ranks = sol.ranks[layer.name]
        if ranks is not None:                       # rewritten only where it shrinks both costs
            p, m = layer.cost(ranks)
            assert p < layer.original[0] and m < layer.original[1]
            assert all(1 <= r <= full for r, full in zip(ranks, layer.full_ranks))


@pytest.mark.parametrize("kind", ["macs", "params"])
@pytest.mark.parametrize("target", [0.5, 0.3, 0.15])
def test_budget_with_round_to_gives_multiples(kind, target):
    layers = small_vgg()
    sol = solve_budget(layers, target, kind=kind, untouched=UNTOUCHED, round_to=8)
    assert abs(sol.ratio - target) <= 0.02 * target
    for layer in layers:
        ranks = sol.ranks[layer.name]
        if ranks is not None:
            for r, full in zip(ranks, layer.full_ranks):
                assert r % 8 == 0 or (full < 8 and r == full)


def test_more_compression_needs_more_strength():
    layers = small_vgg()
    sols = [solve_budget(layers, t, untouched=UNTOUCHED) for t in (0.8, 0.5, 0.3, 0.15, 0.08)]
    strengths = [s.strength for s in sols]
    assert strengths == sorted(strengths)
    ratios = [s.ratio for s in sols]
    assert ratios == sorted(ratios, reverse=True)
    # Targets beyond what EVBMF's own ranks give push the family below EVBMF (t > 1).
    assert sols[-1].strength > 1.0


def test_target_one_keeps_everything():
    layers = small_vgg()
    sol = solve_budget(layers, 1.0, untouched=UNTOUCHED)
    assert sol.ratio == 1.0 and all(r is None for r in sol.ranks.values())


def test_unreachable_target_states_the_range():
    with pytest.raises(EngineInputError, match=r"unreachable.*reachable range is \[0\.0\d+, 1\]"):
        solve_budget(small_vgg(), 0.001, untouched=UNTOUCHED)
    # A big untouched part bounds the reachable ratio from below.
    with pytest.raises(EngineInputError, match="outside decomposable layers"):
        solve_budget(small_vgg(), 0.2, kind="params", untouched=(10**8, 0))


def test_layers_that_may_not_be_kept_are_rewritten():
    layers = [fc_svd("fc_forced", 64, 64, (64,), may_keep=False), fc_svd("fc", 256, 1024, (40,))]
    sol = solve_budget(layers, 0.5, kind="params")
    assert sol.ranks["fc_forced"] is not None
    # At t = 0 the forced layer is rewritten at full rank and costs more than it did.
    assert solve_budget(layers, 1.0, kind="params", tol=0.05).ratio > 1.0 - 0.05


def test_single_layer_steps_fill_the_gap_the_family_jumps_over():
    # Two identical layers move together in the family: ratios 0.2, 0.4, ... only. Stepping one
    # layer alone reaches 0.3.
    layers = [fc_svd("a", 100, 100, (50,)), fc_svd("b", 100, 100, (50,))]
    sol = solve_budget(layers, 0.3, kind="macs", round_to=10)
    assert sol.ratio == pytest.approx(0.3, rel=0.02)
    assert sorted(sol.ranks.values()) == [(10,), (20,)]


def test_too_coarse_steps_are_reported():
    layers = [fc_svd("only", 100, 100, (50,))]
    with pytest.raises(EngineInputError, match="cannot be hit within 2%.*0.2 and 0.4"):
        solve_budget(layers, 0.3, kind="macs", round_to=10)


@pytest.mark.parametrize("kwargs,match", [
    (dict(target_ratio=0.0), "0 < ratio <= 1"), (dict(target_ratio=1.5), "0 < ratio <= 1"),
    (dict(target_ratio=0.5, kind="flops"), "kind"), (dict(target_ratio=0.5, round_to=0), "roundTo"),
])
def test_budget_rejects_bad_options(kwargs, match):
    with pytest.raises(EngineInputError, match=match):
        solve_budget(small_vgg(), **kwargs)


def test_budget_rejects_bad_layer_sets():
    with pytest.raises(EngineInputError, match="no decomposable layers"):
        solve_budget([], 0.5)
    with pytest.raises(EngineInputError, match="unique"):
        solve_budget([fc_svd("x", 8, 8, (2,)), fc_svd("x", 8, 8, (2,))], 0.5)
    with pytest.raises(EngineInputError, match="same length"):
        RankCandidate("bad", (8, 8), (2,), lambda r: (0, 0), (64, 64))
