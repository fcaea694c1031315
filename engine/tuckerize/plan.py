"""Per-layer compression plans: which decomposition, at which ranks, and what it saves.

A plan is pure data (JSON round-trip) computed from the model's weights and shapes; surgery.py
carries it out. Rank rules:
  vbmf   — the paper's: EVBMF rank of the mode-0 unfolding (→ r_out) and of the mode-1 unfolding
           (→ r_in) of a k×k conv; one EVBMF on the matrix of an FC layer or 1×1 conv;
  ratio  — every rank = ceil(ratio · dim);
  budget — one knob over all layers (ranks.py: weakened EVBMF, then below EVBMF) searched so the
           whole model's MACs (or params) land within 2 % of the target fraction of the original;
  strength (with vbmf) — the same weakening at a given w ∈ (0, 1] (MUSCO, Gusak et al. 2019);
  latency — the budget ranks (or EVBMF ranks without targetMacs), then every layer whose replacement
           ONNX Runtime measured as less than 5 % faster than the original node is kept, and the MACs
           target is re-balanced over the remaining layers. The measurements come from the worker
           (candidates.py writes the per-layer models, src/worker/latency.ts times them).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .errors import EngineInputError
from .latency_table import LATENCY_MIN_SPEEDUP, LatencyTable, predict_latency, slow_layer_reason
from .metrics import graph_metrics
from .onnx_graph import Layer, constant_tensors, find_layers, infer_shapes, read_only_tensor, resolve_input_shapes
from .ranks import RankCandidate, channel_block, family_ranks, round_rank, solve_budget, weakened_rank
from .vbmf import evbmf, evbmf_spectrum, squared_norm

RULES = ("vbmf", "ratio", "budget", "latency")
METHODS = ("improved", "paper")
# MUSCO's rank floor (Gusak et al. 2019): EVBMF can return rank 1 (fmnist-vgg's 1-channel stem, weight
# error 0.85), which no fine-tuning recovers; no rank goes below this (or below the layer's full rank).
RANK_FLOOR = 8
# Layer selection: a layer whose rewrite saves under this share of the model's MACs AND of its weights
# is kept when the rewrite's weight error ‖W − Ŵ‖/‖W‖ is at least SELECTION_MIN_ERROR, up to
# SELECTION_MAX_KEPT of the model's MACs kept this way (so the plan's MACs reduction moves little).
SELECTION_MAX_SHARE = 0.01
SELECTION_MIN_ERROR = 0.05
SELECTION_MAX_KEPT = 0.03
SELECTION_REASON = "layer selection"
# The latency rule's structure choice (choose_structures): the structures candidates.py times beside a
# k×k conv's Tucker-2 chain, and how much more weight error than Tucker-2's a faster one may have.
ALTERNATIVE_KINDS = ("tucker1in", "tucker1")
STRUCTURE_ERROR_SLACK = 1.25
STRUCTURE_REASON = "structure chosen by the clock"
KINDS = ("tucker2", "tucker1", "tucker1in", "svd", "keep")
# A k×k conv with at most this many input channels gets Tucker-1: an input rank below 4 saves
# almost nothing and the first 1×1 conv would run at full input resolution (the RGB/grey stem).
TUCKER1_MAX_IN_CHANNELS = 4
BUDGET_TOLERANCE = 0.02

ProgressFn = Callable[[int, int, str], None]


@dataclass
class LayerPlan:
    name: str
    op: str
    kind: str                         # tucker2 | tucker1 | tucker1in | svd | keep
    ranks: list[int]                  # tucker2: [r_out, r_in]; tucker1: [r_out]; tucker1in: [r_in]; svd: [r]; keep: []
    weight: Optional[str] = None
    weight_shape: Optional[list[int]] = None
    input_shape: Optional[list] = None
    output_shape: Optional[list] = None
    evbmf: Optional[dict] = None      # {"out"/"in"/"matrix": {"rank", "sigma2", "threshold", "dim"}}
    reason: Optional[str] = None
    params_before: int = 0
    params_after: int = 0
    macs_before: Optional[int] = None
    macs_after: Optional[int] = None
    rel_error: Optional[float] = None  # filled in by surgery: ‖W − Ŵ‖/‖W‖

    def to_dict(self) -> dict:
        return {
            "name": self.name, "op": self.op, "kind": self.kind, "ranks": list(self.ranks),
            "weight": self.weight, "weightShape": self.weight_shape,
            "inputShape": self.input_shape, "outputShape": self.output_shape,
            "evbmf": self.evbmf, "reason": self.reason,
            "params": {"before": self.params_before, "after": self.params_after},
            "macs": {"before": self.macs_before, "after": self.macs_after},
            "relError": self.rel_error,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "LayerPlan":
        try:
            kind = data["kind"]
            if kind not in KINDS:
                raise EngineInputError(f"plan layer {data.get('name')!r}: kind {kind!r} is not one of {KINDS}")
            return cls(
                name=str(data["name"]), op=str(data["op"]), kind=kind, ranks=[int(r) for r in data["ranks"]],
                weight=data.get("weight"), weight_shape=data.get("weightShape"),
                input_shape=data.get("inputShape"), output_shape=data.get("outputShape"),
                evbmf=data.get("evbmf"), reason=data.get("reason"),
                params_before=int(data["params"]["before"]), params_after=int(data["params"]["after"]),
                macs_before=data["macs"]["before"], macs_after=data["macs"]["after"],
                rel_error=data.get("relError"))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineInputError(f"plan layer entry is malformed ({exc!r}): {json.dumps(data)[:200]}") from exc


@dataclass
class Plan:
    rule: str
    options: dict
    input_shape: list[int]
    layers: list[LayerPlan]
    totals: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rule": self.rule, "options": self.options, "inputShape": self.input_shape,
                "layers": [layer.to_dict() for layer in self.layers], "totals": self.totals}

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        try:
            return cls(rule=str(data["rule"]), options=dict(data.get("options") or {}),
                       input_shape=[int(d) for d in data["inputShape"]],
                       layers=[LayerPlan.from_dict(entry) for entry in data["layers"]],
                       totals=dict(data.get("totals") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineInputError(f"plan is malformed: missing or bad field {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise EngineInputError(f"plan is not valid JSON: {exc}") from exc

    def layer(self, name: str) -> LayerPlan:
        for entry in self.layers:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def rewritten(self) -> list[LayerPlan]:
        return [entry for entry in self.layers if entry.kind != "keep"]


# ---------------------------------------------------------------------------------------------
# Costs of a layer before and after a rewrite (per image, biases counted as params).

def _spatial(shape) -> Optional[int]:
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]):
        return None
    return math.prod(shape[2:])


def _rows_per_image(layer: Layer) -> Optional[int]:
    """How many input rows one image pushes through a Gemm/MatMul (1 for a classifier head)."""
    out = layer.output_shape
    if out is None or any(d is None for d in out):
        return None
    if len(out) == 1:
        return 1
    return math.prod(out[1:-1]) if len(out) > 2 else 1


def bias_size(layer: Layer, constants: dict) -> int:
    """Entries of the layer's constant bias (0 without one): part of its weights before and after."""
    if layer.bias is None or layer.bias not in constants:
        return 0
    return math.prod(constants[layer.bias].dims)


def layer_costs(layer: Layer, kind: str, ranks: Sequence[int], bias_params: int) -> tuple[int, Optional[int]]:
    """(params, MACs per image) of the layer rewritten as `kind` at `ranks` (kind 'keep' = original)."""
    if layer.op == "Conv":
        T, S, kh, kw = layer.weight_shape
        out_hw = _spatial(layer.output_shape)
        in_hw = _spatial(layer.input_shape)
        if kind == "keep":
            params = T * S * kh * kw
            macs = None if out_hw is None else out_hw * T * S * kh * kw
        elif kind == "tucker2":
            r_out, r_in = ranks
            params = S * r_in + r_in * r_out * kh * kw + r_out * T
            # The first 1×1 conv runs at the input's resolution, before the core's stride.
            macs = None if out_hw is None or in_hw is None else (
                in_hw * S * r_in + out_hw * (r_in * r_out * kh * kw + r_out * T))
        elif kind == "tucker1":
            (r_out,) = ranks
            params = S * r_out * kh * kw + r_out * T
            macs = None if out_hw is None else out_hw * (S * r_out * kh * kw + r_out * T)
        elif kind == "tucker1in":
            (r_in,) = ranks
            params = S * r_in + T * r_in * kh * kw
            macs = None if out_hw is None or in_hw is None else in_hw * S * r_in + out_hw * T * r_in * kh * kw
        elif kind == "svd":
            (r,) = ranks
            params = S * r + r * T
            macs = None if out_hw is None else out_hw * (S * r + r * T)
        else:
            raise ValueError(kind)
        return params + bias_params, macs
    out_dim, in_dim = layer.matrix_shape
    rows = _rows_per_image(layer)
    if kind == "keep":
        per_row = out_dim * in_dim
    elif kind == "svd":
        (r,) = ranks
        per_row = r * (in_dim + out_dim)
    else:
        raise ValueError(f"{kind} does not apply to {layer.op}")
    return per_row + bias_params, None if rows is None else rows * per_row


# ---------------------------------------------------------------------------------------------
# Rank selection

def layer_kind(layer: Layer, tucker1_max_in_channels: int = TUCKER1_MAX_IN_CHANNELS) -> str:
    if not layer.eligible:
        return "keep"
    if layer.op != "Conv" or layer.is_pointwise:
        return "svd"
    return "tucker1" if layer.weight_shape[1] <= tucker1_max_in_channels else "tucker2"


def unfoldings(kind: str, weight: torch.Tensor, layer: Layer) -> dict[str, torch.Tensor]:
    """The matrices whose ranks a decomposition of this kind needs (as views, no copies)."""
    if kind in ("tucker2", "tucker1", "tucker1in"):
        T, S = weight.shape[:2]
        return {"out": weight.reshape(T, -1), "in": weight.transpose(0, 1).reshape(S, -1)}
    if layer.op == "Conv":
        return {"matrix": weight.reshape(weight.shape[0], weight.shape[1])}
    if layer.op == "Gemm":
        return {"matrix": weight if layer.trans_b else weight.T}
    return {"matrix": weight.T}  # MatMul: x·W with W (in, out)


def rank_bounds(kind: str, layer: Layer) -> list[int]:
    """Largest meaningful rank per factor: beyond it the decomposition is already exact."""
    if kind == "tucker2":
        T, S, kh, kw = layer.weight_shape
        return [min(T, S * kh * kw), min(S, T * kh * kw)]
    if kind == "tucker1":
        T, S, kh, kw = layer.weight_shape
        return [min(T, S * kh * kw)]
    if kind == "tucker1in":
        T, S, kh, kw = layer.weight_shape
        return [min(S, T * kh * kw)]
    out_dim, in_dim = layer.matrix_shape
    return [min(out_dim, in_dim)]


_UNFOLDING_NAMES = {"out": "output (mode-0) unfolding", "in": "input (mode-1) unfolding",
                    "matrix": "weight matrix"}


def _rank_keys(kind: str) -> list[str]:
    return {"tucker2": ["out", "in"], "tucker1": ["out"], "tucker1in": ["in"], "svd": ["matrix"]}[kind]


def _evbmf_layer(layer: Layer, matrices: dict[str, torch.Tensor], timings: Optional[dict]) -> dict:
    info = {}
    for key, matrix in matrices.items():
        label = f"layer {layer.name!r} ({layer.op}, {key} unfolding {list(matrix.shape)})"
        start = time.perf_counter()
        result = evbmf(matrix, name=label)
        elapsed = time.perf_counter() - start
        if timings is not None:
            # Re-running the σ² search on the same spectrum measures its share of evbmf's time.
            start = time.perf_counter()
            L, M = matrix.shape
            energy = squared_norm(matrix)
            residual = max(energy - float(np.sum(result.singular_values ** 2)), 0.0) \
                if result.singular_values.size < min(L, M) else 0.0
            evbmf_spectrum(result.singular_values, L, M, residual, name=label)
            sigma_seconds = time.perf_counter() - start
            timings["sigma2"] = timings.get("sigma2", 0.0) + sigma_seconds
            timings["svd"] = timings.get("svd", 0.0) + max(elapsed - sigma_seconds, 0.0)
        info[key] = {"rank": int(result.rank), "sigma2": float(result.sigma2),
                     "threshold": float(result.threshold), "dim": int(min(matrix.shape))}
    return info


@dataclass
class _Candidate:
    """What the rank rules need of one eligible layer, computed once."""
    layer: Layer
    kind: str
    bounds: list[int]
    bias_params: int
    evbmf: Optional[dict]


def _ranks_for(candidate: _Candidate, rule: str, ratio: Optional[float],
               strength: Optional[float]) -> tuple[list[int], Optional[str]]:
    """Ranks of one layer under a rule, or ([], reason) when the rule says keep."""
    kind, bounds = candidate.kind, candidate.bounds
    keys = _rank_keys(kind)
    if rule == "ratio":
        dims = _dims(candidate.layer, kind)
        return [max(1, min(b, int(math.ceil(ratio * d - 1e-9)))) for d, b in zip(dims, bounds)], None
    ranks = []
    for key, bound in zip(keys, bounds):
        entry = candidate.evbmf[key]
        rank = min(entry["rank"], bound)
        if strength is not None:
            rank = weakened_rank(bound, rank, strength)
        if rank <= 0:
            return [], (f"EVBMF rank 0 on the {_UNFOLDING_NAMES[key]} (σ²={entry['sigma2']:.3g}): no "
                        "component stands out of the noise, so the layer is kept")
        ranks.append(min(rank, bound))
    return ranks, None


def _dims(layer: Layer, kind: str) -> list[int]:
    if kind == "tucker2":
        return [layer.weight_shape[0], layer.weight_shape[1]]
    if kind == "tucker1":
        return [layer.weight_shape[0]]
    if kind == "tucker1in":
        return [layer.weight_shape[1]]
    return [min(layer.matrix_shape)]


def _plan_layer(candidate: _Candidate, rule: str, ratio, strength, round_to, force,
                floor: Optional[int] = None) -> LayerPlan:
    entry = _base_entry(candidate.layer, candidate.bias_params)
    entry.evbmf = candidate.evbmf
    ranks, reason = _ranks_for(candidate, rule, ratio, strength)
    if reason is not None:
        entry.reason = reason
        return entry
    if floor:
        ranks = [max(r, min(floor, b)) for r, b in zip(ranks, candidate.bounds)]
    if round_to:
        ranks = [round_rank(r, round_to, b) for r, b in zip(ranks, candidate.bounds)]
    return _decide(candidate, entry, ranks, force)


def _decide(candidate: _Candidate, entry: LayerPlan, ranks: list[int], force: bool) -> LayerPlan:
    """Rewrite at `ranks` if that shrinks params and MACs (or force), else keep with the reason."""
    layer = candidate.layer
    params, macs = layer_costs(layer, candidate.kind, ranks, candidate.bias_params)
    shrinks = params < entry.params_before and (macs is None or entry.macs_before is None
                                                 or macs < entry.macs_before)
    if not shrinks and not force:
        entry.reason = (f"{candidate.kind} at ranks {ranks} would not shrink both params "
                        f"({entry.params_before} → {params}) and MACs ({entry.macs_before} → {macs}); "
                        "kept (force=True rewrites it anyway)")
        return entry
    entry.kind, entry.ranks = candidate.kind, ranks
    entry.params_after, entry.macs_after = params, macs
    entry.reason = None if shrinks else "forced: the rewrite does not shrink this layer"
    return entry


def _base_entry(layer: Layer, bias_params: int) -> LayerPlan:
    """A 'keep' entry carrying the layer's description and original costs."""
    entry = LayerPlan(
        name=layer.name, op=layer.op, kind="keep", ranks=[], weight=layer.weight,
        weight_shape=list(layer.weight_shape) if layer.weight_shape else None,
        input_shape=list(layer.input_shape) if layer.input_shape is not None else None,
        output_shape=list(layer.output_shape) if layer.output_shape is not None else None,
        reason=layer.reason)
    if layer.eligible:
        params, macs = layer_costs(layer, "keep", [], bias_params)
        entry.params_before = entry.params_after = params
        entry.macs_before = entry.macs_after = macs
    elif layer.weight_shape is not None:
        entry.params_before = entry.params_after = math.prod(layer.weight_shape) + bias_params
    return entry


def _totals(layers: list[LayerPlan], params_before: int, macs_before: int) -> dict:
    params_after = params_before - sum(e.params_before - e.params_after for e in layers if e.kind != "keep")
    macs_after = macs_before - sum((e.macs_before or 0) - (e.macs_after or 0) for e in layers if e.kind != "keep")
    return {
        "params": {"before": params_before, "after": params_after,
                   "ratio": params_after / params_before if params_before else None},
        "macs": {"before": macs_before, "after": macs_after,
                 "ratio": macs_after / macs_before if macs_before else None},
    }


def _validate_options(rule, ratio, strength, target_macs, target_params, round_to,
                      latency_table=None, target_latency=None):
    if rule not in RULES:
        raise EngineInputError(f"rule {rule!r} is not one of {', '.join(RULES)}")
    if rule == "latency" and latency_table is None:
        raise EngineInputError(
            "rule 'latency' needs per-layer timings from onnxruntime: the worker must time candidates first "
            "(python3 -m tuckerize candidates IN.onnx -o DIR, then latency-table.json from the worker) and pass "
            "it as options.latencyTable / --latency-table; or use rule 'budget' with targetMacs")
    if latency_table is not None and rule != "latency":
        raise EngineInputError(f"a latency table applies only to rule 'latency' (rule is {rule!r})")
    if target_latency is not None:
        if rule != "latency":
            raise EngineInputError(f"targetLatency needs rule 'latency' (rule is {rule!r})")
        if not (isinstance(target_latency, (int, float)) and 0 < target_latency < 1):
            raise EngineInputError(
                f"targetLatency is the fraction of the original latency to reach, in (0, 1); got {target_latency!r}")
    if rule == "ratio":
        if ratio is None:
            raise EngineInputError("rule 'ratio' needs a ratio in (0, 1], e.g. --ratio 0.5")
        if not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
            raise EngineInputError(f"ratio must be in (0, 1], got {ratio!r}")
    if ratio is not None and rule != "ratio":
        raise EngineInputError(f"ratio applies only to rule 'ratio' (rule is {rule!r}); set rule ratio or drop ratio")
    if strength is not None and not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise EngineInputError(f"strength must be in (0, 1], got {strength!r}")
    if strength is not None and rule == "ratio":
        raise EngineInputError("strength weakens EVBMF ranks and applies to rule 'vbmf', not 'ratio'; drop strength")
    for label, target in (("targetMacs", target_macs), ("targetParams", target_params)):
        if target is not None and not (isinstance(target, (int, float)) and 0 < target < 1):
            raise EngineInputError(f"{label} is the fraction of the original to keep, in (0, 1); got {target!r}")
    if rule == "budget":
        if (target_macs is None) == (target_params is None):
            raise EngineInputError("rule 'budget' needs exactly one of targetMacs or targetParams (a fraction in (0, 1))")
        if strength is not None:
            raise EngineInputError("rule 'budget' chooses the strength itself; drop strength")
    elif rule == "latency":
        if target_params is not None:
            raise EngineInputError("rule 'latency' re-balances a MACs target: use targetMacs, not targetParams")
        if target_macs is not None and strength is not None:
            raise EngineInputError("rule 'latency' with targetMacs chooses the strength itself; drop strength")
    elif target_macs is not None or target_params is not None:
        raise EngineInputError(f"targetMacs/targetParams need rule 'budget' or 'latency' (rule is {rule!r})")
    if round_to is not None and not (isinstance(round_to, int) and round_to >= 1):
        raise EngineInputError(f"roundTo must be a positive integer, got {round_to!r}")



def make_plan(model: onnx.ModelProto, input_shape: Optional[Sequence[int]] = None, rule: str = "vbmf",
              ratio: Optional[float] = None, force: bool = False, strength: Optional[float] = None,
              round_to: Optional[int] = None, target_macs: Optional[float] = None,
              target_params: Optional[float] = None, latency_table: Optional[dict] = None,
              target_latency: Optional[float] = None, target=None,
              tucker1_max_in_channels: int = TUCKER1_MAX_IN_CHANNELS, with_evbmf: Optional[bool] = None,
              progress: Optional[ProgressFn] = None, timings: Optional[dict] = None,
              shapes: Optional[dict] = None, layers: Optional[list[Layer]] = None,
              method: str = "paper") -> Plan:
    """Plan every Conv/Gemm/MatMul of the model.

    method: 'paper' (this function's default) is Kim et al.'s method exactly: every eligible layer
    rewritten at the rule's ranks. 'improved' (the default of jobs and the CLI, options.plan_kwargs) adds
    layer selection (select_layers: a layer that saves under 1 % of the model's MACs and weights but whose
    rewrite loses much is kept) to rules 'vbmf' and 'budget', and MUSCO's rank floor (no EVBMF rank below
    RANK_FLOOR) to rule 'vbmf'; rule 'ratio' gives the ranks it is asked for either way.

    with_evbmf: compute EVBMF ranks also for rule 'ratio' (analyze shows them); default only when
    the rule needs them. progress(done, total, layer_name) is called after each layer's analysis.
    timings (a dict) accumulates seconds under 'svd' and 'sigma2' when given.
    latency_table: the worker's latency-table.json as parsed JSON (rule 'latency' only);
    target_latency is recorded beside the predicted latency ratio (the worker iterates targetMacs on it).
    """
    _validate_options(rule, ratio, strength, target_macs, target_params, round_to, latency_table, target_latency)
    if method not in METHODS:
        raise EngineInputError(f"method {method!r} is not one of {', '.join(METHODS)}")
    improved = method == "improved" and rule in ("vbmf", "budget")
    floor = RANK_FLOOR if improved and rule == "vbmf" else None
    # The deployment target's channel block (ranks.channel_block) rounds every rule's ranks; an explicit
    # roundTo wins over it, and only the target's block may be relaxed where the budget cannot be met.
    block = None if target is None else channel_block(target, round_to)
    relax_rounding = block is not None and round_to is None
    if block is not None:
        round_to = block.block if block.block > 1 else None
    table = LatencyTable.from_dict(latency_table) if rule == "latency" else None
    fixed = resolve_input_shapes(model, input_shape)
    if shapes is None:
        shapes = infer_shapes(model, input_shape)
    if layers is None:
        layers = find_layers(model, input_shape, shapes=shapes)
    metrics = graph_metrics(model, shapes=shapes)
    constants = constant_tensors(model)
    need_evbmf = rule != "ratio" if with_evbmf is None else (with_evbmf or rule != "ratio")

    candidates: list[Optional[_Candidate]] = []
    for done, layer in enumerate(layers, start=1):
        bias_params = bias_size(layer, constants)
        kind = layer_kind(layer, tucker1_max_in_channels)
        if kind == "keep":
            candidates.append(None)
        else:
            info = None
            if need_evbmf:
                weight = read_only_tensor(numpy_helper.to_array(constants[layer.weight]))
                info = _evbmf_layer(layer, unfoldings(kind, weight, layer), timings)
            candidates.append(_Candidate(layer, kind, rank_bounds(kind, layer), bias_params, info))
        if progress is not None:
            progress(done, len(layers), layer.name)

    options = {"ratio": ratio, "strength": strength, "roundTo": round_to, "force": force,
               "target": None if block is None else block.to_dict(),
               "targetMacs": target_macs, "targetParams": target_params, "targetLatency": target_latency,
               "method": method}
    slow: list[str] = []
    structures: dict[str, LayerPlan] = {}
    if rule == "budget" or (rule == "latency" and target_macs is not None):
        selected = {}
        if improved and rule == "budget":
            # Which layers are not worth rewriting is judged at their EVBMF ranks, before the budget.
            evbmf_entries = [_base_entry(layer, bias_size(layer, constants)) if candidate is None
                             else _plan_layer(candidate, "vbmf", None, None, round_to, force, floor)
                             for layer, candidate in zip(layers, candidates)]
            selected = {entry.name: entry.reason for entry in
                        select_layers(evbmf_entries, candidates, constants, metrics) if entry.kind == "keep"
                        and entry.reason and entry.reason.startswith(SELECTION_REASON)}
        entries, achieved_strength, round_to = _budget_entries(
            layers, candidates, constants, metrics, target_macs, target_params, round_to, force,
            relax_rounding=relax_rounding, fixed_keep=selected or None)
        if rule == "latency":
            budget_entries = entries
            structures = choose_structures(entries, candidates, table, force)
            entries = [structures.get(e.name, e) for e in entries]
            slow = _slow_layers(entries, table)
            if slow or structures:
                # The kept layers' MACs and the clock-chosen structures' now count as fixed: the rest
                # carry the whole target.
                try:
                    entries, achieved_strength, round_to = _rebalance(
                        layers, candidates, constants, metrics, target_macs, round_to, force, slow, table,
                        relax_rounding, structures)
                except EngineInputError:
                    if not structures:
                        raise
                    # Too little left to carry the target around the fixed structures: Tucker-2 everywhere.
                    structures, entries = {}, budget_entries
                    slow = _slow_layers(entries, table)
                    if slow:
                        entries, achieved_strength, round_to = _rebalance(
                            layers, candidates, constants, metrics, target_macs, round_to, force, slow, table,
                            relax_rounding)
        options["achievedStrength"] = achieved_strength
        options["roundTo"] = round_to
    elif rule == "latency":
        entries = [_base_entry(layer, bias_size(layer, constants)) if candidate is None
                   else _plan_layer(candidate, "vbmf", None, strength, round_to, force)
                   for layer, candidate in zip(layers, candidates)]
        structures = choose_structures(entries, candidates, table, force)
        entries = [structures.get(e.name, e) for e in entries]
        slow = _slow_layers(entries, table)
        for index, entry in enumerate(entries):
            if entry.name in slow:
                kept = _base_entry(layers[index], candidates[index].bias_params)
                kept.evbmf, kept.reason = entry.evbmf, slow_layer_reason(table.layers[entry.name])
                entries[index] = kept
    elif rule == "vbmf" and improved and relax_rounding and round_to:
        # EVBMF's ranks aligned to the target's block without giving up compression: the unrounded plan's
        # MACs are the budget the aligned ranks must stay within (align_within_macs).
        entries = [_base_entry(layer, bias_size(layer, constants)) if candidate is None
                   else _plan_layer(candidate, rule, ratio, strength, None, force, floor)
                   for layer, candidate in zip(layers, candidates)]
        entries = select_layers(entries, candidates, constants, metrics)
        entries = align_within_macs(entries, candidates, round_to, force)
        options["alignment"] = "within EVBMF's MACs"
    else:
        entries = []
        for layer, candidate in zip(layers, candidates):
            if candidate is None:
                entries.append(_base_entry(layer, bias_size(layer, constants)))
            else:
                entries.append(_plan_layer(candidate, rule, ratio, strength, round_to, force, floor))
        if improved:
            entries = select_layers(entries, candidates, constants, metrics)
    totals = _totals(entries, metrics.params, metrics.macs)
    if rule == "budget" or (rule == "latency" and target_macs is not None):
        key, target = ("macs", target_macs) if target_macs is not None else ("params", target_params)
        totals["target"] = {"metric": key, "ratio": target, "achieved": totals[key]["ratio"]}
    if rule == "latency":
        totals["latency"] = predict_latency(entries, table, target_latency) | {
            "keptSlow": slow, "structures": sorted(e.name for e in entries if e.name in structures and e.kind != "keep")}
    first_input = next(iter(fixed.values()))
    return Plan(rule=rule, options={k: v for k, v in options.items() if v is not None and v is not False}
                | {"force": bool(force)}, input_shape=list(first_input), layers=entries, totals=totals)


def _rebalance(layers, candidates, constants, metrics, target_macs, round_to, force, slow, table,
               relax_rounding=False, structures: Optional[dict[str, LayerPlan]] = None):
    fixed = {name: slow_layer_reason(table.layers[name]) for name in slow}
    remaining = [c for c in candidates if c is not None and c.layer.name not in fixed
                 and c.layer.name not in (structures or {})]
    if not remaining:
        raise EngineInputError(
            f"rule 'latency': ONNX Runtime found no rewritten layer's replacement at least "
            f"{LATENCY_MIN_SPEEDUP}× as fast ({', '.join(slow[:5])}), so no layer is left to carry targetMacs "
            f"{target_macs:g}; keep the model as it is or use rule 'budget'")
    try:
        return _budget_entries(layers, candidates, constants, metrics, target_macs, None, round_to, force,
                               fixed_keep=fixed, relax_rounding=relax_rounding, fixed_entries=structures)
    except EngineInputError as exc:
        raise EngineInputError(
            f"rule 'latency': after keeping {len(slow)} layer(s) whose replacement ONNX Runtime found not "
            f"{LATENCY_MIN_SPEEDUP}× faster ({', '.join(slow[:5])}), the other layers cannot carry the MACs "
            f"target: {exc}") from exc


def _slow_layers(entries: list[LayerPlan], table: LatencyTable) -> list[str]:
    """Rewritten layers whose measured replacement (the structure the plan has, where it was timed) is not
    at least LATENCY_MIN_SPEEDUP× as fast as the original."""
    slow = []
    for e in entries:
        timing = table.layers.get(e.name)
        if e.kind == "keep" or timing is None:
            continue
        ms = timing.structure_ms(e.kind, e.ranks)
        if timing.orig_ms / (ms if ms is not None else timing.repl_ms) < LATENCY_MIN_SPEEDUP:
            slow.append(e.name)
    return slow


def alternative_structures(model: onnx.ModelProto, entry: LayerPlan, round_to: Optional[int] = None) -> list[LayerPlan]:
    """The Tucker-1 structures (ALTERNATIVE_KINDS) of a k×k conv planned as Tucker-2, each at the largest
    rank (a multiple of round_to where one fits) whose MACs do not exceed the Tucker-2 chain's, so the
    structures the clock compares cost no more MACs. `model` holds the layer (candidates.py: the layer alone).
    """
    if entry.kind != "tucker2" or entry.macs_after is None:
        return []
    layer = next((candidate for candidate in find_layers(model) if candidate.name == entry.name), None)
    if layer is None:
        return []
    bias_params = bias_size(layer, constant_tensors(model))
    structures = []
    for kind in ALTERNATIVE_KINDS:
        (bound,) = rank_bounds(kind, layer)
        per_rank = layer_costs(layer, kind, [1], bias_params)[1]
        if not per_rank:
            continue
        rank = min(bound, entry.macs_after // per_rank)
        if round_to and rank >= round_to:
            rank = (rank // round_to) * round_to
        if rank < 1:
            continue
        alternative = _base_entry(layer, bias_params)
        params, macs = layer_costs(layer, kind, [rank], bias_params)
        if params >= alternative.params_before:
            continue
        alternative.kind, alternative.ranks = kind, [rank]
        alternative.params_after, alternative.macs_after = params, macs
        alternative.evbmf = entry.evbmf
        structures.append(alternative)
    return structures


def choose_structures(entries: list[LayerPlan], candidates: list[Optional[_Candidate]], table: LatencyTable,
                      force: bool) -> dict[str, LayerPlan]:
    """Rewritten layers whose timed Tucker-1 structure beats the timed Tucker-2 chain on the clock.

    A structure replaces the planned Tucker-2 only where it was timed against these very ranks, runs at
    least LATENCY_MIN_SPEEDUP× faster than the chain, and its weight error is at most
    STRUCTURE_ERROR_SLACK times the chain's (both at no more MACs: candidates.py sizes them so).
    Returns {layer name: the entry with that structure}, the reason saying what the clock measured.
    """
    chosen: dict[str, LayerPlan] = {}
    for entry, candidate in zip(entries, candidates):
        timing = table.layers.get(entry.name)
        if candidate is None or entry.kind != "tucker2" or timing is None or not timing.alternatives:
            continue
        if timing.structure_ms(entry.kind, entry.ranks) is None:
            continue
        best = None
        for alternative in timing.alternatives:
            fastest = best.repl_ms if best is not None else timing.repl_ms
            if alternative.repl_ms * LATENCY_MIN_SPEEDUP > fastest:
                continue
            if (timing.rel_error is not None and alternative.rel_error is not None
                    and alternative.rel_error > STRUCTURE_ERROR_SLACK * timing.rel_error):
                continue
            best = alternative
        if best is None:
            continue
        layer = candidate.layer
        structure = _Candidate(layer, best.kind, rank_bounds(best.kind, layer), candidate.bias_params, candidate.evbmf)
        fresh = _base_entry(layer, candidate.bias_params)
        fresh.evbmf = entry.evbmf
        decided = _decide(structure, fresh, list(best.ranks), force)
        if decided.kind == "keep":
            continue
        errors = ("" if timing.rel_error is None or best.rel_error is None
                  else f", weight error {best.rel_error:.3f} against {timing.rel_error:.3f}")
        decided.reason = (f"{STRUCTURE_REASON}: {best.kind} at ranks {best.ranks} ran in {best.repl_ms:.3g} ms "
                          f"against tucker2 at {list(entry.ranks)} in {timing.repl_ms:.3g} ms (original "
                          f"{timing.orig_ms:.3g} ms){errors}")
        chosen[entry.name] = decided
    return chosen


def _budget_entries(layers, candidates, constants, metrics, target_macs, target_params, round_to, force,
                    fixed_keep: Optional[dict[str, str]] = None, relax_rounding: bool = False,
                    fixed_entries: Optional[dict[str, LayerPlan]] = None):
    """Ranks from ranks.solve_budget over every decomposable layer, then the usual keep decisions.
    Returns (entries, family strength, the rank multiple used: relax_rounding may lower round_to).

    fixed_keep: {layer name: reason} of layers kept whatever the ranks (the latency rule's slow ones);
    their cost stays in the graph unchanged, so the others are solved for the whole target.
    fixed_entries: {layer name: entry} placed as given (the latency rule's clock-chosen structures); their
    cost after the rewrite counts as fixed in the same way.
    """
    fixed_keep = fixed_keep or {}
    fixed_entries = {k: v for k, v in (fixed_entries or {}).items() if k not in fixed_keep}
    kind, target = ("macs", target_macs) if target_macs is not None else ("params", target_params)
    rank_candidates = []
    original_params = original_macs = 0
    for candidate in candidates:
        if candidate is None or candidate.layer.name in fixed_keep or candidate.layer.name in fixed_entries:
            continue
        layer, keys = candidate.layer, _rank_keys(candidate.kind)
        params, macs = layer_costs(layer, "keep", [], candidate.bias_params)
        original_params, original_macs = original_params + params, original_macs + (macs or 0)

        def cost(ranks, candidate=candidate):
            p, m = layer_costs(candidate.layer, candidate.kind, list(ranks), candidate.bias_params)
            return p, m or 0

        rank_candidates.append(RankCandidate(
            name=layer.name, full_ranks=tuple(candidate.bounds),
            evbmf_ranks=tuple(min(candidate.evbmf[k]["rank"], b) for k, b in zip(keys, candidate.bounds)),
            cost=cost, original=(params, macs or 0), may_keep=not force))
    saved_params = sum(e.params_before - e.params_after for e in fixed_entries.values())
    saved_macs = sum((e.macs_before or 0) - (e.macs_after or 0) for e in fixed_entries.values())
    untouched = (metrics.params - original_params - saved_params, metrics.macs - original_macs - saved_macs)
    # The solver measures its ratio against the model with the fixed entries already rewritten; the target
    # is the original model's, so it is carried over to that smaller base.
    saved, whole = (saved_macs, metrics.macs) if kind == "macs" else (saved_params, metrics.params)
    if saved and whole > saved:
        target = target * whole / (whole - saved)
    solution = solve_budget(rank_candidates, target, kind, untouched=untouched, tol=BUDGET_TOLERANCE,
                            round_to=round_to, relax_rounding=relax_rounding)
    round_to = solution.round_to
    by_name = {c.name: c for c in rank_candidates}
    entries = []
    for layer, candidate in zip(layers, candidates):
        if candidate is None:
            entries.append(_base_entry(layer, bias_size(layer, constants)))
            continue
        entry = _base_entry(layer, candidate.bias_params)
        entry.evbmf = candidate.evbmf
        if layer.name in fixed_keep:
            entry.reason = fixed_keep[layer.name]
            entries.append(entry)
            continue
        if layer.name in fixed_entries:
            entries.append(fixed_entries[layer.name])
            continue
        ranks = solution.ranks[layer.name]
        if ranks is None:
            tried = list(family_ranks(by_name[layer.name], solution.strength, round_to))
            entries.append(_decide(candidate, entry, tried, force))
        else:
            entries.append(_decide(candidate, entry, list(ranks), True))
    return entries, solution.strength, round_to


# ---------------------------------------------------------------------------------------------
# Layer selection (method 'improved')

def rewrite_error(candidate: _Candidate, constants: dict, kind: str, ranks: Sequence[int]) -> float:
    """‖W − Ŵ‖/‖W‖ of the decomposition surgery would apply at these ranks."""
    from .tucker import svd_factors, tucker1, tucker1_in, tucker2

    weight = read_only_tensor(numpy_helper.to_array(constants[candidate.layer.weight]))
    if kind == "tucker2":
        return float(tucker2(weight, ranks[0], ranks[1]).rel_error)
    if kind == "tucker1":
        return float(tucker1(weight, ranks[0]).rel_error)
    if kind == "tucker1in":
        return float(tucker1_in(weight, ranks[0]).rel_error)
    matrix = unfoldings("svd", weight, candidate.layer)["matrix"]
    return float(svd_factors(matrix.contiguous(), ranks[0]).rel_error)


def align_within_macs(entries: list[LayerPlan], candidates: list[Optional[_Candidate]], multiple: int,
                      force: bool) -> list[LayerPlan]:
    """Round the rewritten layers' ranks to `multiple` while the model's MACs stay within the unrounded plan's.

    Rounding every rank up (round_rank) keeps each layer's error at or below the rule's but gives back much
    of the compression on narrow networks (fmnist-vgg under EVBMF: 4.96x fewer MACs unrounded, 3.39x
    rounded up to 16). Here every mode starts at the multiple at or below its rank (never below one
    multiple; a mode narrower than the multiple keeps its rank, as in round_rank), then modes are rounded
    up, the nearest to the next multiple first, as long as the total stays within the unrounded MACs.
    A layer whose aligned rewrite no longer shrinks it is kept (_decide).
    """
    budget = sum(e.macs_after or 0 for e in entries)
    ranks: dict[int, list[int]] = {}
    upgrades = []
    for index, (entry, candidate) in enumerate(zip(entries, candidates)):
        if entry.kind == "keep" or candidate is None:
            continue
        aligned = []
        for mode, (r, bound) in enumerate(zip(entry.ranks, candidate.bounds)):
            up = round_rank(r, multiple, bound)
            down = r if bound < multiple else max(multiple, min(up, (r // multiple) * multiple))
            aligned.append(down)
            if up > down:
                upgrades.append(((r - down) / (up - down), index, mode, up))
        ranks[index] = aligned

    def macs_of(index: int, layer_ranks: list[int]) -> int:
        candidate = candidates[index]
        return layer_costs(candidate.layer, candidate.kind, layer_ranks, candidate.bias_params)[1] or 0

    total = sum(macs_of(i, r) if i in ranks else (e.macs_after or 0) for i, (e, r) in
                enumerate(zip(entries, [ranks.get(i) for i in range(len(entries))])))
    for _, index, mode, up in sorted(upgrades, key=lambda u: (-u[0], u[1], u[2])):
        trial = list(ranks[index])
        trial[mode] = up
        extra = macs_of(index, trial) - macs_of(index, ranks[index])
        if total + extra <= budget:
            ranks[index], total = trial, total + extra
    result = list(entries)
    for index, layer_ranks in ranks.items():
        entry = entries[index]
        fresh = _base_entry(candidates[index].layer, candidates[index].bias_params)
        fresh.evbmf = entry.evbmf
        result[index] = _decide(candidates[index], fresh, layer_ranks, force)
    return result


def select_layers(entries: list[LayerPlan], candidates: list[Optional[_Candidate]], constants: dict,
                  metrics) -> list[LayerPlan]:
    """Keep the rewritten layers that save little and lose much; the rest of the plan is unchanged.

    A layer qualifies when its rewrite saves under SELECTION_MAX_SHARE of the model's MACs and of its
    weights and its weight error is at least SELECTION_MIN_ERROR (e.g. a 1-channel stem: 0.5 % of the
    MACs for an error of 0.85 at EVBMF's rank 1). Qualifying layers are kept worst error first while
    the MACs they keep stay within SELECTION_MAX_KEPT of the model's, so the MACs reduction moves little.
    """
    scored = []
    for index, (entry, candidate) in enumerate(zip(entries, candidates)):
        if entry.kind == "keep" or candidate is None:
            continue
        macs_share = ((entry.macs_before or 0) - (entry.macs_after or 0)) / metrics.macs if metrics.macs else 0.0
        params_share = (entry.params_before - entry.params_after) / metrics.params if metrics.params else 0.0
        if max(macs_share, params_share) >= SELECTION_MAX_SHARE:
            continue
        error = rewrite_error(candidate, constants, entry.kind, entry.ranks)
        if error >= SELECTION_MIN_ERROR:
            scored.append((error, index, macs_share, params_share))
    result = list(entries)
    kept_macs = 0.0
    for error, index, macs_share, params_share in sorted(scored, reverse=True):
        if kept_macs + macs_share > SELECTION_MAX_KEPT:
            continue
        kept_macs += macs_share
        entry, candidate = entries[index], candidates[index]
        kept = _base_entry(candidate.layer, candidate.bias_params)
        kept.evbmf = entry.evbmf
        kept.reason = (f"{SELECTION_REASON}: {entry.kind} at ranks {entry.ranks} would save "
                       f"{100 * macs_share:.2f} % of the model's MACs and {100 * params_share:.2f} % of its "
                       f"weights for a weight error ‖W − Ŵ‖/‖W‖ of {error:.3f}; kept (method 'paper' "
                       "rewrites it)")
        result[index] = kept
    return result
