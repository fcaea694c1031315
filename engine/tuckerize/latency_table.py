"""The latency rule's measurements: latency-table.json, its validation, and what it predicts.

The engine writes per-layer candidate models (candidates.py); the worker times each original node
and its replacement interleaved in onnxruntime-node (src/worker/latency.ts) and writes
latency-table.json; plan.make_plan(rule='latency') reads it back through this module. A layer is
rewritten only when its replacement is at least LATENCY_MIN_SPEEDUP times as fast.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .errors import EngineInputError

LATENCY_TABLE_FILE = "latency-table.json"
# The latency rule rewrites a layer only when its replacement is at least this many times as fast.
LATENCY_MIN_SPEEDUP = 1.05


def _table_error(message: str) -> EngineInputError:
    return EngineInputError(message, code="invalid_latency_table", field="latencyTable")


def read_latency_table(path: str) -> dict:
    """Load latency-table.json as the worker wrote it; LatencyTable.from_dict validates it."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise _table_error(
            f"latency table {path!r} does not exist; the worker writes it by timing the engine's candidates "
            "(python3 -m tuckerize candidates) with onnxruntime-node")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _table_error(f"latency table {path!r} is not valid JSON: {exc}")


@dataclass(frozen=True)
class AlternativeTiming:
    """Another structure of the same layer (candidates.py: Tucker-1 on either mode), timed in the same loop."""
    kind: str
    ranks: list[int]
    repl_ms: float
    macs_after: Optional[int]
    rel_error: Optional[float]


@dataclass(frozen=True)
class LayerTiming:
    """One layer's original node and replacement chain, timed interleaved in ONNX Runtime."""
    name: str
    orig_ms: float
    repl_ms: float
    kind: Optional[str]
    ranks: Optional[list[int]]
    input_shape: Optional[list[int]]
    macs_after: Optional[int]         # of the replacement as timed, to rescale to other ranks
    rel_error: Optional[float] = None  # ‖W − Ŵ‖/‖W‖ of the timed replacement
    alternatives: tuple[AlternativeTiming, ...] = ()

    @property
    def speedup(self) -> float:
        return self.orig_ms / self.repl_ms

    def structure_ms(self, kind: str, ranks) -> Optional[float]:
        """The measured time of this layer rewritten as `kind` at exactly `ranks`, if that was timed."""
        if (self.kind is None or kind == self.kind) and self.ranks == list(ranks):
            return self.repl_ms
        return next((a.repl_ms for a in self.alternatives if a.kind == kind and a.ranks == list(ranks)), None)


@dataclass(frozen=True)
class LatencyTable:
    layers: dict[str, LayerTiming]
    model_ms: Optional[float]         # the whole original model, same input shape and threads
    threads: Optional[int]
    runs: Optional[int]
    ort_version: Optional[str]

    @classmethod
    def from_dict(cls, data) -> "LatencyTable":
        def positive(value, where: str) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise _table_error(f"latency table: {where} must be a positive number of milliseconds, got "
                                   f"{json.dumps(value)[:60]}")
            return float(value)

        if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
            raise _table_error("latency table must be an object with 'layers': {name: {origMs, replMs}}, as "
                               "src/worker/latency.ts writes it")
        layers = {}
        for name, entry in data["layers"].items():
            if not isinstance(entry, dict):
                raise _table_error(f"latency table: layer {name!r} must be an object with origMs and replMs")
            macs = entry.get("macs") if isinstance(entry.get("macs"), dict) else {}
            macs_after = macs.get("after")
            ranks = entry.get("ranks")
            shape = entry.get("inputShape")
            for label, dims in (("ranks", ranks), ("inputShape", shape)):
                if dims is not None and not (isinstance(dims, list) and all(
                        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims)):
                    raise _table_error(f"latency table: layers[{name!r}].{label} must be a list of positive "
                                       f"integers, got {json.dumps(dims)[:60]}")
            alternatives = []
            for index, alt in enumerate(entry.get("alternatives") or []):
                where = f"layers[{name!r}].alternatives[{index}]"
                if not isinstance(alt, dict) or not isinstance(alt.get("kind"), str) or not (
                        isinstance(alt.get("ranks"), list) and all(isinstance(r, int) and not isinstance(r, bool)
                                                                   and r > 0 for r in alt["ranks"])):
                    raise _table_error(f"latency table: {where} must be an object with kind, ranks and replMs")
                alt_macs = (alt.get("macs") or {}).get("after") if isinstance(alt.get("macs"), dict) else None
                alternatives.append(AlternativeTiming(
                    kind=alt["kind"], ranks=[int(r) for r in alt["ranks"]],
                    repl_ms=positive(alt.get("replMs"), f"{where}.replMs"),
                    macs_after=int(alt_macs) if isinstance(alt_macs, int) and alt_macs > 0 else None,
                    rel_error=_optional_number(alt.get("relError"))))
            layers[name] = LayerTiming(
                name=name, orig_ms=positive(entry.get("origMs"), f"layers[{name!r}].origMs"),
                repl_ms=positive(entry.get("replMs"), f"layers[{name!r}].replMs"),
                kind=entry.get("kind") if isinstance(entry.get("kind"), str) else None,
                ranks=[int(r) for r in ranks] if isinstance(ranks, list) else None,
                input_shape=[int(d) for d in shape] if isinstance(shape, list) else None,
                macs_after=int(macs_after) if isinstance(macs_after, int) and macs_after > 0 else None,
                rel_error=_optional_number(entry.get("relError")), alternatives=tuple(alternatives))
        model = data.get("model")
        model_ms = None
        if isinstance(model, dict) and model.get("origMs") is not None:
            model_ms = positive(model["origMs"], "model.origMs")
        threads, runs = data.get("threads"), data.get("runs")
        return cls(layers=layers, model_ms=model_ms,
                   threads=threads if isinstance(threads, int) else None,
                   runs=runs if isinstance(runs, int) else None,
                   ort_version=data.get("ortVersion") if isinstance(data.get("ortVersion"), str) else None)


def _optional_number(value) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _shape_text(shape) -> str:
    return "×".join(str(d) for d in shape) if shape else "its input shape"


def slow_layer_reason(timing: LayerTiming) -> str:
    return (f"replacement only {timing.speedup:.2f}× as fast in ONNX Runtime ({timing.orig_ms:.3g} ms → "
            f"{timing.repl_ms:.3g} ms at {_shape_text(timing.input_shape)}); kept")


def _estimated_replacement_ms(entry, timing: LayerTiming) -> tuple[float, bool]:
    """(ms, estimated): the measured time of the plan's structure and ranks, else the Tucker-2 time
    rescaled by MACs (the plan's ranks differ from the timed ones)."""
    measured = timing.structure_ms(entry.kind, entry.ranks)
    if measured is not None:
        return measured, False
    if timing.macs_after is None or not entry.macs_after:
        return timing.repl_ms, False
    return timing.repl_ms * entry.macs_after / timing.macs_after, True


def predict_latency(entries: Sequence, table: LatencyTable, target_latency: Optional[float] = None) -> dict:
    """Predicted compressed/original latency from the table.

    Kept layers cost their measured original time, rewritten ones their measured (or MACs-rescaled)
    replacement time. With the whole model's time in the table the untimed remainder (other ops and
    untimed layers: model time − Σ timed originals) is added unchanged to both sides; without it the
    ratio covers the timed layers only. An estimate: layers run alone are not layers in a graph.
    """
    timed_before = timed_after = 0.0
    rescaled, untimed = [], []
    for entry in entries:
        timing = table.layers.get(entry.name)
        if timing is None:
            if entry.kind != "keep":
                untimed.append(entry.name)
            continue
        timed_before += timing.orig_ms
        if entry.kind == "keep":
            timed_after += timing.orig_ms
        else:
            ms, estimated = _estimated_replacement_ms(entry, timing)
            timed_after += ms
            if estimated:
                rescaled.append(entry.name)
    # Layers timed alone can add up to more than the whole model (no cache shared with neighbours, a
    # session call each); the remainder is then 0 and the ratio is that of the timed layers.
    remainder = max(table.model_ms - timed_before, 0.0) if table.model_ms is not None else 0.0
    before, after = remainder + timed_before, remainder + timed_after
    ratio = after / before if before > 0 else None
    original_ms = table.model_ms if table.model_ms is not None else timed_before
    return {
        "source": "onnxruntime-node", "threads": table.threads, "runs": table.runs, "ortVersion": table.ort_version,
        "basis": "model" if table.model_ms is not None else "timed-layers",
        "originalMs": original_ms, "predictedMs": None if ratio is None else ratio * original_ms,
        "timedLayersMs": {"before": timed_before, "after": timed_after},
        "predictedRatio": ratio, "targetRatio": target_latency,
        "minSpeedup": LATENCY_MIN_SPEEDUP,
        "rescaled": rescaled, "untimed": untimed,
    }
