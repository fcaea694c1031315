"""Experiment for issue 10: ranks allocated by data-aware response energy instead of EVBMF's per-layer ranks.

Zhang et al. (2015), "Accelerating Very Deep Convolutional Networks for Classification and Detection"
(TPAMI), choose each layer's rank to maximise the product over layers of the PCA energy the layer's
responses keep, under a complexity budget, greedily. Here the same objective for this engine's rewrites,
measured on calibration images through the original model:
  - output mode (Tucker-2, Tucker-1, SVD): eigenvalues of the second moment of the layer's responses
    (bias removed), T×T: projecting the responses on r_out directions keeps their top-r_out share;
  - input mode (Tucker-2): eigenvalues of Σx^½ W₍₁₎ W₍₁₎ᵀ Σx^½ (Σx the S×S second moment of the input
    channels), the response energy a projection of the inputs on r_in directions keeps, taps taken as
    independent.
The greedy lowers one rank by one at a time where log(energy kept) falls least per MAC saved, from full
rank until the model's MACs are within the budget; a layer whose rewrite is then not cheaper than the
original is kept. Only layers the base plan rewrites take part (its layer selection stands).

Used by benchmarks/accuracy_ablation.py (configs with "allocation": "energy"); not part of the engine.
"""
from __future__ import annotations

import math

import numpy as np
import onnx
import torch

from tuckerize.calibrate import BATCH, tap_model
from tuckerize.interpret import OnnxModule
from tuckerize.onnx_graph import constant_tensors, find_layers, node_labels
from tuckerize.plan import Plan, _bias_params, layer_costs, rank_bounds
from onnx import numpy_helper


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """(positions, channels) of an NCHW or (N, features) tensor."""
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1]) if tensor.dim() > 2 else tensor


@torch.no_grad()
def _second_moments(model: onnx.ModelProto, names: list[str], images: torch.Tensor) -> dict[str, tuple]:
    """Per tensor: (E[v vᵀ], E[v]) over every position of every image, v the channel vector."""
    module = OnnxModule(tap_model(model, names)).eval()
    sums: dict[str, torch.Tensor] = {}
    firsts: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for start in range(0, images.shape[0], BATCH):
        outputs = module(images[start:start + BATCH])
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        for name, value in zip(names, outputs):
            rows = _rows(value.double())
            sums[name] = rows.T @ rows + sums.get(name, 0)
            firsts[name] = rows.sum(dim=0) + firsts.get(name, 0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
    return {name: (sums[name] / counts[name], firsts[name] / counts[name]) for name in names}


def _descending_eigvals(matrix: torch.Tensor) -> np.ndarray:
    values = torch.linalg.eigvalsh((matrix + matrix.T) / 2).clamp_min(0.0).flip(0)
    return values.numpy()


def _kept_fraction(eigvals: np.ndarray) -> np.ndarray:
    """f[r] = share of the energy the top r directions keep, r = 0..n."""
    total = float(eigvals.sum())
    cumulative = np.concatenate([[0.0], np.cumsum(eigvals)])
    return cumulative / total if total > 0 else np.ones_like(cumulative)


def energy_spectra(original: onnx.ModelProto, plan: Plan, images: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
    """Per rewritten layer of `plan`: the kept-energy curve of each rank the layer's kind has."""
    labels = node_labels(original)
    nodes = dict(zip(labels, original.graph.node))
    constants = constant_tensors(original)
    entries = [e for e in plan.layers if e.kind != "keep"]
    tensors = sorted({name for e in entries for name in (nodes[e.name].input[0], nodes[e.name].output[0])})
    moments = _second_moments(original, tensors, images)
    spectra = {}
    for entry in entries:
        node = nodes[entry.name]
        weight = torch.from_numpy(numpy_helper.to_array(constants[node.input[1]]).astype(np.float64))
        sigma_y, mean_y = moments[node.output[0]]
        if len(node.input) > 2 and node.input[2] in constants:       # the responses without the bias
            b = torch.from_numpy(numpy_helper.to_array(constants[node.input[2]]).astype(np.float64)).reshape(-1)
            sigma_y = sigma_y - torch.outer(b, mean_y) - torch.outer(mean_y, b) + torch.outer(b, b)
        curves = {"out": _kept_fraction(_descending_eigvals(sigma_y))}
        if entry.kind == "tucker2":
            sigma_x = moments[node.input[0]][0]
            values, vectors = torch.linalg.eigh((sigma_x + sigma_x.T) / 2)
            root = vectors @ torch.diag(values.clamp_min(0.0).sqrt()) @ vectors.T
            unfolded = weight.transpose(0, 1).reshape(weight.shape[1], -1)          # W₍₁₎ (S, T·kh·kw)
            weighted = root @ unfolded
            curves["in"] = _kept_fraction(_descending_eigvals(weighted @ weighted.T))
        spectra[entry.name] = curves
    return spectra


def energy_plan(original: onnx.ModelProto, plan: Plan, images: torch.Tensor, macs_ratio: float) -> Plan:
    """`plan` with the ranks of its rewritten layers re-allocated by response energy to `macs_ratio` of the
    original model's MACs."""
    spectra = energy_spectra(original, plan, images)
    layers = {layer.name: layer for layer in find_layers(original, plan.input_shape)}
    constants = constant_tensors(original)
    result = Plan.from_dict(plan.to_dict())
    entries = [e for e in result.layers if e.kind != "keep"]
    macs_before = int(plan.totals["macs"]["before"])
    untouched = macs_before - sum(int(e.macs_before) for e in entries)
    bias = {e.name: _bias_params(layers[e.name], constants) for e in entries}
    modes = {e.name: (["out", "in"] if e.kind == "tucker2" else ["out"] if e.kind in ("tucker1", "svd") else ["in"])
             for e in entries}
    ranks = {e.name: list(rank_bounds(e.kind, layers[e.name])) for e in entries}

    def macs(name: str, kind: str, r: list[int]) -> int:
        return int(layer_costs(layers[name], kind, r, bias[name])[1])

    def score(name: str, r: list[int]) -> float:
        return sum(math.log(max(spectra[name][mode][min(rank, len(spectra[name][mode]) - 1)], 1e-300))
                   for mode, rank in zip(modes[name], r))

    kinds = {e.name: e.kind for e in entries}
    current = {e.name: macs(e.name, e.kind, ranks[e.name]) for e in entries}
    budget = macs_ratio * macs_before
    while untouched + sum(min(current[n], e.macs_before) for n, e in ((e.name, e) for e in entries)) > budget:
        best, best_cost = None, math.inf
        for entry in entries:
            name = entry.name
            for index in range(len(ranks[name])):
                if ranks[name][index] <= 1:
                    continue
                lowered = list(ranks[name])
                lowered[index] -= 1
                saved = current[name] - macs(name, kinds[name], lowered)
                if saved <= 0:
                    continue
                loss = score(name, ranks[name]) - score(name, lowered)
                cost = loss / saved
                if cost < best_cost:
                    best, best_cost = (name, index, lowered), cost
        if best is None:
            break
        name, _, lowered = best
        ranks[name] = lowered
        current[name] = macs(name, kinds[name], lowered)
    after = untouched
    for entry in entries:
        if current[entry.name] >= entry.macs_before:
            entry.kind, entry.ranks, entry.reason = "keep", [], "energy allocation: no cheaper than the original"
            entry.macs_after, entry.params_after = entry.macs_before, entry.params_before
        else:
            entry.ranks = ranks[entry.name]
            entry.params_after, entry.macs_after = layer_costs(layers[entry.name], entry.kind, entry.ranks,
                                                               bias[entry.name])
        after += int(entry.macs_after)
    result.totals = dict(result.totals)
    result.totals["macs"] = {"before": macs_before, "after": after, "ratio": after / macs_before}
    return result
