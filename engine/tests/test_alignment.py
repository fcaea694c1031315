"""Runtime-aligned ranks (issue 11): the deployment CPU's channel block, rounding in every rule, the budget
solver relaxing only the target's block, and layers whose rewrite saves nothing being kept."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx_builders import make_model, tiny_cnn, value
from tuckerize.errors import EngineInputError
from tuckerize.options import plan_kwargs
from tuckerize.plan import make_plan
from tuckerize.ranks import RankCandidate, channel_block, cpu_class, parse_target, solve_budget

AVX512 = "processor\t: 0\nflags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512bw\n"
AVX2 = "flags\t\t: fpu sse sse2 avx avx2 fma\n"


@pytest.mark.parametrize("text,expected", [
    (AVX512, "avx512"), (AVX2, "avx2"), ("flags\t: fpu sse sse2 avx\n", "generic"),
    ("flags\t: avx2\n", "generic"),                     # AVX2 without FMA: MLAS's AVX2 kernels need FMA3
    ("Features\t: fp asimd evtstrm\n", "generic"), ("", "generic"),
])
def test_cpu_class_from_cpuinfo(text, expected):
    assert cpu_class(text) == expected


def test_channel_block_from_host_class_block_and_round_to(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2)
    assert channel_block(None, cpuinfo_path=str(cpuinfo)).to_dict() == {"block": 8, "source": "host (avx2)"}
    assert channel_block("host", cpuinfo_path=str(tmp_path / "missing")).block == 4
    assert channel_block("avx512").block == 16 and channel_block("generic").block == 4
    assert channel_block({"block": 1}).block == 1
    assert channel_block("avx2", round_to=32).to_dict() == {"block": 32, "source": "roundTo 32"}
    assert parse_target("8") == {"block": 8} and parse_target("avx2") == "avx2"


@pytest.mark.parametrize("target,field", [("sse", "target"), ({"block": 0}, "target.block"),
                                          ({"block": 65}, "target.block"), ({"cpu": "avx2"}, "target"), (16, "target")])
def test_bad_targets_name_the_field(target, field):
    with pytest.raises(EngineInputError) as info:
        channel_block(target)
    assert info.value.field == field and info.value.code == "invalid_option"


def test_options_default_to_the_host_target():
    assert plan_kwargs({"rule": "vbmf"})["target"] == "host"
    assert plan_kwargs({"rule": "vbmf", "target": {"block": 1}})["target"] == {"block": 1}


@pytest.mark.parametrize("rule,extra", [("vbmf", {}), ("ratio", {"ratio": 0.3}), ("budget", {"target_macs": 0.5})])
def test_every_rule_rounds_to_the_target_block(rule, extra):
    model = tiny_cnn(np.random.default_rng(3), channels=32, size=16)
    plan = make_plan(model, rule=rule, target="avx512", **extra)
    assert plan.options["target"] == {"block": 16, "source": "avx512"}
    # The multiple used: the target's block, or (budget only) a smaller one where 16 could not meet the target.
    multiple = plan.options.get("roundTo", 1)
    assert multiple == 16 or rule == "budget" and multiple < 16
    rewritten = plan.rewritten()
    assert rewritten, "something is rewritten"
    for entry in rewritten:
        T, S = entry.weight_shape[:2]
        taps = int(np.prod(entry.weight_shape[2:]))
        # The largest meaningful rank per mode (plan.rank_bounds): a mode below the block keeps its rank.
        dims = {"tucker2": [min(T, S * taps), min(S, T * taps)], "tucker1": [min(T, S * taps)]}.get(entry.kind, [min(T, S)])
        for rank, dim in zip(entry.ranks, dims):
            assert rank % multiple == 0 or rank == dim or dim < multiple, (entry.name, entry.ranks)
    unrounded = make_plan(model, rule=rule, target={"block": 1}, **extra)
    assert unrounded.options["target"] == {"block": 1, "source": "block 1"} and "roundTo" not in unrounded.options
    assert any(e.ranks != u.ranks for e, u in zip(plan.layers, unrounded.layers)), "rounding changed some rank"


def _layers():
    # Two 20-channel layers: a block of 16 leaves ranks 16 or 20 (full), too coarse for a 0.3 target.
    def cost(ranks):
        return 40 * ranks[0], 400 * ranks[0]
    return [RankCandidate(f"l{i}", (20,), (5,), cost, (400, 8000)) for i in range(2)]


def test_budget_relaxes_only_the_targets_block():
    with pytest.raises(EngineInputError):
        solve_budget(_layers(), 0.3, round_to=16)
    relaxed = solve_budget(_layers(), 0.3, round_to=16, relax_rounding=True)
    assert relaxed.round_to is not None and relaxed.round_to < 16
    assert all(r[0] % relaxed.round_to == 0 for r in relaxed.ranks.values() if r)
    assert abs(relaxed.ratio - 0.3) <= 0.02 * 0.3


def _square_pointwise_net(rng, channels: int = 64, size: int = 8):
    """RegNet-like: a square 1×1 conv (rank C/2 saves nothing) next to a wide one (it does)."""
    w_square = (rng.standard_normal((channels, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
    w_wide = (rng.standard_normal((channels // 4, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "sq.w"], ["a"], name="square"),
             helper.make_node("Relu", ["a"], ["a_relu"], name="relu"),
             helper.make_node("Conv", ["a_relu", "wide.w"], ["output"], name="narrowing")]
    inits = [numpy_helper.from_array(w_square, "sq.w"), numpy_helper.from_array(w_wide, "wide.w")]
    return make_model(nodes, [value("input", [1, channels, size, size], np.float32)],
                      [value("output", None, np.float32)], inits)


def test_a_rewrite_that_saves_no_macs_is_kept_with_the_reason():
    plan = make_plan(_square_pointwise_net(np.random.default_rng(0)), rule="ratio", ratio=0.5, target={"block": 1})
    square = plan.layer("square")
    assert square.kind == "keep" and "would not shrink" in square.reason
    assert square.macs_after == square.macs_before
    narrowing = plan.layer("narrowing")
    assert narrowing.kind == "svd" and narrowing.macs_after < narrowing.macs_before
    assert plan.totals["macs"]["after"] == plan.totals["macs"]["before"] - (narrowing.macs_before - narrowing.macs_after)


def _low_rank_chain(rng, channels=(64, 96, 96, 128), ranks=((21, 27), (40, 29), (43, 37)), size: int = 8):
    """Three 3×3 convs whose kernels have multilinear ranks between multiples of 16, as trained nets do."""
    from onnx_builders import low_rank_kernel
    nodes, inits, x = [], [], "input"
    for i, (S, T, (r_out, r_in)) in enumerate(zip(channels, channels[1:], ranks)):
        w = low_rank_kernel(rng, T, S, 3, 3, r_out, r_in) + 0.02 * rng.standard_normal((T, S, 3, 3))
        inits.append(numpy_helper.from_array((w / np.sqrt(9 * S)).astype(np.float32), f"w{i}"))
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    nodes[-1] = helper.make_node("Relu", [f"c{len(ranks) - 1}"], ["output"], name="relu_out")
    return make_model(nodes, [value("input", [1, channels[0], size, size], np.float32)],
                      [value("output", None, np.float32)], inits)


def test_vbmf_ranks_are_aligned_within_the_unrounded_plans_macs():
    model = _low_rank_chain(np.random.default_rng(5))
    unrounded = make_plan(model, rule="vbmf", method="improved", target={"block": 1})
    aligned = make_plan(model, rule="vbmf", method="improved", target="avx512")
    rounded_up = make_plan(model, rule="vbmf", method="paper", target="avx512")
    assert [e.ranks for e in unrounded.rewritten()] and all(
        r % 16 for e in unrounded.rewritten() for r in e.ranks), "EVBMF's ranks fall between multiples"
    assert aligned.options["alignment"] == "within EVBMF's MACs" and aligned.options["roundTo"] == 16
    for entry in aligned.rewritten():
        assert all(r % 16 == 0 for r in entry.ranks), (entry.name, entry.ranks)
    # Compression kept: no more MACs than EVBMF's own ranks, where rounding every rank up gives some back.
    assert aligned.totals["macs"]["after"] <= unrounded.totals["macs"]["after"]
    assert rounded_up.totals["macs"]["after"] > unrounded.totals["macs"]["after"]
    # Each mode lands on a multiple next to its EVBMF rank, never further.
    for a, u in zip(aligned.rewritten(), unrounded.rewritten()):
        assert all(abs(ra - ru) < 16 for ra, ru in zip(a.ranks, u.ranks)), (a.name, a.ranks, u.ranks)
