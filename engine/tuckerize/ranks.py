"""Rank rules over per-layer rank candidates: MUSCO weakening, hardware rounding, budget solving.

Pure functions: a layer is described by its full and EVBMF ranks and a cost function; nothing here
looks at weights or graphs. plan.py builds `RankCandidate`s and turns the chosen ranks into a plan.

The budget family. One parameter t ∈ [0, 2] sets every layer's ranks:
  t ∈ [0, 1]: r = weakened_rank(r_full, r_evb, t)  — MUSCO's weakened EVBMF (Gusak et al. 2019);
              t = 0 is full rank, t = 1 the EVBMF rank;
  t ∈ (1, 2]: r = ⌈r_evb · (2 − t)⌉, at least 1     — ranks scaled below EVBMF proportionally, for
              targets that need more compression than EVBMF gives.
r_evb is floored at 1 in this family: EVBMF rank 0 (no detectable structure, e.g. random weights)
would otherwise make a layer jump from rank 1 at t < 1 back to "kept" at t = 1, breaking the
monotonicity the search relies on. Every rank is non-increasing in t, so (with costs increasing in
the ranks) the whole graph's cost is non-increasing in t and bisection finds the target.

Runtime-aligned ranks. ONNX Runtime's CPU kernels (MLAS) run convolutions in a blocked NCHWc layout
whose channel block is the SIMD width in floats: 16 with AVX-512, 8 with AVX2. A conv whose channel
counts are not multiples of the block stays in plain NCHW, with layout reorders around it, and loses
most of the blocked kernels' speed (measured on VGG-16: ranks rounded to 16 run 1.25-1.3× faster than
the same rule's unrounded ranks). `channel_block` resolves a deployment target (the host's CPU by
default, a named CPU class, or an explicit block) to the multiple every rule rounds its ranks to.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

from .errors import EngineInputError

# The NCHWc channel block of ONNX Runtime's MLAS per CPU class; "generic" (no AVX2: SSE or ARM NEON
# with 4-float vectors) gets the 4-lane multiple that plain GEMM kernels still prefer.
CPU_BLOCKS = {"avx512": 16, "avx2": 8, "generic": 4}
TARGET_HOST = "host"
_MAX_BLOCK = 64

Ranks = tuple[int, ...]
Cost = tuple[int, int]          # (params, macs)

_KINDS = ("params", "macs")
# The job option each budget kind comes from, named in the error event of an unreachable target.
_TARGET_FIELDS = {"params": "targetParams", "macs": "targetMacs"}
_BISECTION_STEPS = 60
_T_MAX = 2.0


def _is_integer(value) -> bool:
    """Python and numpy integers (not bools): ranks often come straight from tensor shapes."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def weakened_rank(r_full: int, r_evbmf: int, strength: float) -> int:
    """MUSCO's weakened EVBMF rank ⌈r_full − w·(r_full − r_evbmf)⌉, w = strength ∈ (0, 1].

    w = 1 gives the EVBMF rank, w → 0 the full rank; rounding up keeps at least the fraction of the
    rank gap the user asked to keep.
    """
    if not _is_integer(r_full) or r_full < 1:
        raise EngineInputError(f"weakened_rank: r_full must be an integer >= 1, got {r_full!r}")
    if not _is_integer(r_evbmf) or not 0 <= r_evbmf <= r_full:
        raise EngineInputError(
            f"weakened_rank: r_evbmf must be an integer with 0 <= r_evbmf <= {r_full}, got {r_evbmf!r}")
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not 0.0 < strength <= 1.0:
        raise EngineInputError(f"strength must satisfy 0 < strength <= 1, got {strength!r}")
    r_full, r_evbmf = int(r_full), int(r_evbmf)
    exact = r_full - strength * (r_full - r_evbmf)
    # 1e-9 absorbs rounding in w·gap so that e.g. w = 0.5 on a gap of 6 gives exactly r_full − 3.
    return min(r_full, max(r_evbmf, math.ceil(exact - 1e-9)))


def round_rank(r: int, multiple: int, r_max: int) -> int:
    """Round a rank up to a multiple of `multiple` (hardware-friendly channel counts), within [multiple, r_max].

    Rounding up never compresses more than the rule asked for; when that would exceed r_max the largest
    multiple not above r_max is used. When r_max < multiple no multiple fits and the rank stays as the
    rule chose it: a mode narrower than the runtime's channel block never ran on the blocked path, so
    its replacement has no alignment to lose (rounding it to r_max would only undo the compression).
    """
    if not _is_integer(multiple) or multiple < 1:
        raise EngineInputError(f"roundTo must be an integer >= 1, got {multiple!r}")
    if not _is_integer(r_max) or r_max < 1:
        raise EngineInputError(f"round_rank: r_max must be an integer >= 1, got {r_max!r}")
    if not _is_integer(r) or not 1 <= r <= r_max:
        raise EngineInputError(f"round_rank: r must be an integer with 1 <= r <= {r_max}, got {r!r}")
    r, multiple, r_max = int(r), int(multiple), int(r_max)
    if r_max < multiple:
        return r
    up = -(-r // multiple) * multiple
    return up if up <= r_max else (r_max // multiple) * multiple


def cpu_class(cpuinfo: str) -> str:
    """The CPU class of a /proc/cpuinfo text, from its first `flags` line (x86; other CPUs: generic)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            if "avx512f" in flags:
                return "avx512"
            if {"avx2", "fma"} <= flags:
                return "avx2"
            break
    return "generic"


def host_cpu_class(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            return cpu_class(handle.read())
    except OSError:
        return "generic"


@dataclass(frozen=True)
class ChannelBlock:
    """The rank multiple a target asks for, and where it came from (recorded in the plan)."""

    block: int
    source: str               # "host (avx512)", "avx2", "block 8", "roundTo 32"

    def to_dict(self) -> dict:
        return {"block": self.block, "source": self.source}


def channel_block(target=None, round_to: int | None = None, cpuinfo_path: str = "/proc/cpuinfo") -> ChannelBlock:
    """The multiple ranks are rounded to: an explicit roundTo wins; else the target's NCHWc block.

    target: None or "host" (this machine's CPU, from /proc/cpuinfo), a CPU class name
    ("avx512" | "avx2" | "generic") for another deployment CPU, or {"block": N} (N = 1 turns rounding off).
    """
    if round_to is not None:
        if not _is_integer(round_to) or round_to < 1:
            raise EngineInputError(f"roundTo must be an integer >= 1 (or absent), got {round_to!r}",
                               code="invalid_option", field="roundTo")
        return ChannelBlock(int(round_to), f"roundTo {int(round_to)}")
    if target is None or target == TARGET_HOST:
        name = host_cpu_class(cpuinfo_path)
        return ChannelBlock(CPU_BLOCKS[name], f"host ({name})")
    if isinstance(target, str):
        if target not in CPU_BLOCKS:
            raise EngineInputError(
                f"target {target!r} is not a known CPU class; use one of {[TARGET_HOST, *CPU_BLOCKS]} or "
                '{"block": N} with N the rank multiple (1 turns rounding off)', code="invalid_option", field="target")
        return ChannelBlock(CPU_BLOCKS[target], target)
    if isinstance(target, dict) and set(target) == {"block"}:
        block = target["block"]
        if _is_integer(block) and 1 <= block <= _MAX_BLOCK:
            return ChannelBlock(int(block), f"block {int(block)}")
        raise EngineInputError(f"target.block must be an integer in [1, {_MAX_BLOCK}], got {block!r}",
                               code="invalid_option", field="target.block")
    raise EngineInputError(
        f"target must be {TARGET_HOST!r}, a CPU class ({', '.join(CPU_BLOCKS)}) or {{\"block\": N}}; got "
        f"{str(target)[:80]}", code="invalid_option", field="target")


def parse_target(text: str):
    """The CLI's --target: a CPU class name, 'host', or a bare integer block."""
    text = text.strip()
    if text.isdigit():
        return {"block": int(text)}
    return text


@dataclass(frozen=True)
class RankCandidate:
    """One decomposable layer as the budget solver sees it.

    full_ranks / evbmf_ranks: per decomposed mode, e.g. (T, S) and (R4, R3) for Tucker-2, (T,) for
    Tucker-1, (min(out, in),) for an SVD. cost(ranks) -> (params, macs) of the rewrite at those ranks;
    original: (params, macs) of the layer as it is. may_keep: False forces the rewrite even when it
    does not pay (the `force` option).
    """

    name: str
    full_ranks: Ranks
    evbmf_ranks: Ranks
    cost: Callable[[Ranks], Cost]
    original: Cost
    may_keep: bool = True

    def __post_init__(self) -> None:
        if len(self.full_ranks) == 0 or len(self.full_ranks) != len(self.evbmf_ranks):
            raise EngineInputError(
                f"layer {self.name}: full_ranks {self.full_ranks} and evbmf_ranks {self.evbmf_ranks} "
                "must be non-empty and of the same length")
        for full, evb in zip(self.full_ranks, self.evbmf_ranks):
            if not (_is_integer(full) and _is_integer(evb) and full >= 1 and 0 <= evb <= full):
                raise EngineInputError(
                    f"layer {self.name}: ranks need 0 <= evbmf <= full and full >= 1, got full "
                    f"{self.full_ranks}, evbmf {self.evbmf_ranks}")


@dataclass(frozen=True)
class BudgetSolution:
    """ranks: chosen ranks per layer name, None where the layer is kept; strength: the family parameter
    t (≤ 1: weakened EVBMF with w = t; > 1: below EVBMF); ratio: achieved after/before of the budgeted
    kind; params and macs: (before, after) of the whole graph."""

    ranks: dict[str, Ranks | None]
    strength: float
    ratio: float
    params: tuple[int, int]
    macs: tuple[int, int]
    round_to: int | None = None       # the rank multiple used (relax_rounding may lower the one asked for)


def family_ranks(layer: RankCandidate, t: float, round_to: int | None = None) -> Ranks:
    """The layer's ranks at family parameter t ∈ [0, 2] (module docstring), optionally rounded."""
    if not 0.0 <= t <= _T_MAX:
        raise EngineInputError(f"family parameter t must satisfy 0 <= t <= {_T_MAX}, got {t}")
    _check_round_to(round_to)
    ranks = []
    for full, evb in zip(layer.full_ranks, layer.evbmf_ranks):
        evb = max(evb, 1)
        if t == 0.0:
            r = full
        elif t <= 1.0:
            r = weakened_rank(full, evb, t)
        else:
            r = max(1, math.ceil(evb * (_T_MAX - t) - 1e-9))
        ranks.append(round_rank(r, round_to, full) if round_to else r)
    return tuple(ranks)


def _check_round_to(round_to: int | None) -> None:
    if round_to is not None and (not _is_integer(round_to) or round_to < 1):
        raise EngineInputError(f"roundTo must be an integer >= 1 (or absent), got {round_to!r}")


def _layer_choice(layer: RankCandidate, ranks: Ranks) -> tuple[Ranks | None, Cost]:
    """(ranks, cost) if the rewrite pays in both params and MACs (or the layer may not be kept), else kept."""
    cost = layer.cost(ranks)
    if layer.may_keep and (cost[0] >= layer.original[0] or cost[1] >= layer.original[1]):
        return None, layer.original
    return ranks, cost


def _evaluate(layers: list[RankCandidate], chosen: list[Ranks], untouched: Cost, kind_index: int,
              before: Cost) -> tuple[float, list[Ranks | None], Cost]:
    total = list(untouched)
    decided = []
    for layer, ranks in zip(layers, chosen):
        ranks_or_kept, cost = _layer_choice(layer, ranks)
        decided.append(ranks_or_kept)
        total[0] += cost[0]
        total[1] += cost[1]
    return total[kind_index] / before[kind_index], decided, (total[0], total[1])


def solve_budget(layers: list[RankCandidate], target_ratio: float, kind: str = "macs",
                 untouched: Cost = (0, 0), tol: float = 0.02, round_to: int | None = None,
                 relax_rounding: bool = False) -> BudgetSolution:
    """`_solve_budget` at rank multiple round_to; with relax_rounding, a target that the multiple's coarse
    steps make unreachable (or impossible to hit within tol) is solved again at half the multiple, down
    to 1. Used for the runtime's channel block, a preference; an explicit roundTo is never relaxed."""
    while True:
        try:
            return _solve_budget(layers, target_ratio, kind, untouched, tol, round_to)
        except EngineInputError:
            if not relax_rounding or not round_to or round_to <= 1:
                raise
            round_to = round_to // 2 if round_to // 2 > 1 else None


def _solve_budget(layers: list[RankCandidate], target_ratio: float, kind: str,
                  untouched: Cost, tol: float, round_to: int | None) -> BudgetSolution:
    """Ranks whose whole-graph cost ratio (after/before of `kind`) lands within tol (relative) of target.

    untouched: (params, macs) of everything that is not a candidate (kept layers, other ops).
    Bisection over the single family parameter t (module docstring) to the step nearest the target;
    when that is not within tol (one layer's rank step jumps over the band), single layers are stepped
    up from the side below the target until the ratio is within tol. A layer is rewritten only where
    its rewrite shrinks both params and MACs (or it may not be kept). Raises EngineInputError when
    the target lies outside the reachable range (stated) or cannot be hit within tol at these
    layers' rank granularity.
    """
    if kind not in _KINDS:
        raise EngineInputError(f"budget kind must be one of {_KINDS}, got {kind!r}")
    if not (isinstance(target_ratio, (int, float)) and 0.0 < target_ratio <= 1.0):
        raise EngineInputError(f"target {kind} ratio (after/before) must satisfy 0 < ratio <= 1, got {target_ratio!r}")
    _check_round_to(round_to)
    if not 0.0 < tol < 1.0:
        raise EngineInputError(f"tol must satisfy 0 < tol < 1, got {tol}")
    if not layers:
        raise EngineInputError(
            "budget: the model has no decomposable layers (Conv/Gemm/MatMul with weight initializers)")
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise EngineInputError(f"budget: layer names must be unique, got {names}")
    k = _KINDS.index(kind)
    before = (untouched[0] + sum(layer.original[0] for layer in layers),
              untouched[1] + sum(layer.original[1] for layer in layers))
    if before[k] <= 0:
        raise EngineInputError(f"budget: the model's total {kind} is {before[k]}; nothing to compress")

    def at(t: float) -> tuple[float, list[Ranks], list[Ranks | None], Cost]:
        chosen = [family_ranks(layer, t, round_to) for layer in layers]
        ratio, decided, total = _evaluate(layers, chosen, untouched, k, before)
        return ratio, chosen, decided, total

    def solution(t: float, ratio: float, decided: list[Ranks | None], total: Cost) -> BudgetSolution:
        return BudgetSolution(dict(zip(names, decided)), t, ratio, (before[0], total[0]), (before[1], total[1]),
                              round_to)

    def within(ratio: float) -> bool:
        return abs(ratio - target_ratio) <= tol * target_ratio

    hi_t, lo_t = 0.0, _T_MAX
    hi = at(hi_t)                       # least compression: ratio is largest here
    lo = at(lo_t)                       # most compression
    if lo[0] > target_ratio * (1 + tol) or hi[0] < target_ratio * (1 - tol):
        raise EngineInputError(
            f"target {kind} ratio {target_ratio:g} is unreachable: this model's reachable range is "
            f"[{lo[0]:.4g}, {hi[0]:.4g}] (all ranks 1 .. full ranks; {untouched[k] / before[k]:.1%} of its "
            f"{kind} is outside decomposable layers); choose a target in that range",
            code="target_unreachable", field=_TARGET_FIELDS[kind], data={"range": [float(lo[0]), float(hi[0])]})
    # Bisect to the step of the family that crosses the target (ratio(hi_t) > target >= ratio(lo_t)),
    # then take the closer side: the answer is as near the target as the family allows.
    if hi[0] > target_ratio >= lo[0]:
        for _ in range(_BISECTION_STEPS):
            mid_t = 0.5 * (hi_t + lo_t)
            mid = at(mid_t)
            if mid[0] > target_ratio:
                hi_t, hi = mid_t, mid
            else:
                lo_t, lo = mid_t, mid
    t, state = min(((hi_t, hi), (lo_t, lo)), key=lambda ts: abs(ts[1][0] - target_ratio))
    if within(state[0]):
        return solution(t, state[0], state[2], state[3])

    # No t lands in the band: from the ranks below the target, raise single layers by one rank step
    # (towards the ranks above it), each time taking the move that ends closest to the target
    # without passing the band's top.
    chosen = list(lo[1])
    ratio, decided, total = lo[0], lo[2], lo[3]
    step = round_to or 1
    while not within(ratio):
        best = None
        for i, layer in enumerate(layers):
            raised = tuple(min(r + step, h) for r, h in zip(chosen[i], hi[1][i]))
            if raised == chosen[i]:
                continue
            trial = chosen[:i] + [raised] + chosen[i + 1:]
            trial_ratio, trial_decided, trial_total = _evaluate(layers, trial, untouched, k, before)
            if ratio < trial_ratio <= target_ratio * (1 + tol) and (
                    best is None or abs(trial_ratio - target_ratio) < abs(best[1] - target_ratio)):
                best = (trial, trial_ratio, trial_decided, trial_total)
        if best is None:
            raise EngineInputError(
                f"target {kind} ratio {target_ratio:g} cannot be hit within {tol:.0%}: the nearest achievable "
                f"ratios are {lo[0]:.4g} and {hi[0]:.4g} (single layers' rank steps are too coarse); "
                "choose another target or a smaller roundTo",
                code="target_unreachable", field=_TARGET_FIELDS[kind], data={"nearest": [float(lo[0]), float(hi[0])]})
        chosen, ratio, decided, total = best
    return solution(lo_t, ratio, decided, total)
