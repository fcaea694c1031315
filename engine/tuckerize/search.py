"""Accuracy-target mode (options.maxAccuracyDrop): the most compressed model within a top-1 limit.

The job gives the largest top-1 drop it accepts, in points on its held-out split. The search plans with
rule 'budget' at a sequence of MACs targets, and scores each candidate the way the final model is made:
ranks re-allocated by response energy (allocate.py, method 'improved'), rewrite, calibrate (calibrate.py),
a brief fine-tune (CANDIDATE_STEPS steps, at most one epoch, with the
job's fine-tuning options otherwise), then top-1 on the held-out split. The first target is the MACs
fraction EVBMF's own ranks reach; then bisection on log(target) between MIN_TARGET and MAX_TARGET: a
candidate within the limit moves the search to stronger compression, one outside it to weaker.

The result is the most compressed candidate within the limit. When none is, the search says so
(`met: false`) and returns the most accurate candidate, never a silent pass. Every candidate tried is
in the trade-off curve of the report (`tradeoff`), and each one sends a progress event.

The brief fine-tune only scores a candidate: a job with fine-tuning options fine-tunes the chosen candidate
from its calibrated weights, so the model it returns has had exactly the fine-tuning the job asked for.
A brief fine-tune ends further from the original than the job's epoch does (fmnist-vgg at 5.07× fewer MACs:
−0.90 points after 200 steps, about −0.77 after the epoch), so the search errs towards less compression.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import onnx

from .errors import EngineInputError

Emit = Callable[[dict], None]
CANDIDATES = 5
CANDIDATE_STEPS = 200
MIN_TARGET = 0.03
MAX_TARGET = 0.9


@dataclass
class SearchResult:
    plan: object
    model: onnx.ModelProto          # the chosen candidate: calibrated, and briefly fine-tuned only for a job
                                    # without fine-tuning of its own (a job's epoch starts from calibration)
    rewritten: onnx.ModelProto      # the same candidate's rewrite alone (what fidelity checks judge)
    section: dict                   # the report's `search` section (limit, met, chosen, candidates)
    tradeoff: list[dict]


def validate(options: dict, has_dataset: bool) -> float:
    """options.maxAccuracyDrop, checked against the rest of the options."""
    limit = options.get("maxAccuracyDrop")
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (0 < limit <= 100):
        raise EngineInputError(f"maxAccuracyDrop is the accepted top-1 drop in points, in (0, 100]; got {limit!r}",
                               code="invalid_option", field="maxAccuracyDrop")
    if options.get("rule", "vbmf") != "vbmf" or any(options.get(k) is not None for k in
                                                     ("targetMacs", "targetParams", "strength", "ratio")):
        raise EngineInputError("maxAccuracyDrop searches the MACs target itself: use it with rule 'vbmf' (the "
                               "default) and without targetMacs, targetParams, strength or ratio",
                               code="invalid_option", field="maxAccuracyDrop")
    if not has_dataset:
        raise EngineInputError("maxAccuracyDrop needs a labelled dataset to measure top-1 on: give datasetId",
                               code="invalid_option", field="maxAccuracyDrop")
    return float(limit)


def next_target(tried: list[dict]) -> Optional[float]:
    """The next MACs target: geometric midpoint between the strongest target within the limit and the
    weakest one outside it (or the search range's end); None when the bracket has closed."""
    within = [c["targetMacs"] for c in tried if c.get("withinLimit")]
    outside = [c["targetMacs"] for c in tried if not c.get("withinLimit")]
    if within:
        high = min(within)
        low = max([t for t in outside if t < high], default=MIN_TARGET)
    else:
        low, high = max(outside), MAX_TARGET
    if high / low < 1.05:
        return None
    return math.sqrt(low * high)


def accuracy_search(job: dict, original: onnx.ModelProto, input_shape, plan_options: dict, calibration_samples: int,
                    emit: Emit, shapes=None, layers=None) -> SearchResult:
    import torch

    from .allocate import allocate_by_energy
    from .allocate import applies as allocation_applies
    from .calibrate import calibrate, choose_images
    from .finetune import evaluate_logits, model_input_shape, parse_options, predict, run_finetune_stage, training_data
    from .interpret import OnnxModule
    from .plan import make_plan
    from .surgery import rewrite

    options = job.get("options") or {}
    limit = validate(options, bool(job.get("dataset")))
    seed = int(job.get("seed", 0))
    finetune_raw = dict(options.get("finetune") or {})
    shape = model_input_shape(original, options.get("inputShape"))
    train_set, heldout = training_data(job["dataset"], shape, seed, parse_options(finetune_raw))
    if heldout.y is None:
        raise EngineInputError("maxAccuracyDrop needs labels to measure top-1; the dataset has none",
                               code="invalid_option", field="maxAccuracyDrop")
    device = torch.device("cpu")
    original_top1 = evaluate_logits(predict(OnnxModule(original), heldout.x, device), heldout.y, None)["top1"]
    images = choose_images(train_set, calibration_samples, seed)
    steps_per_epoch = max(1, len(train_set) // min(finetune_raw.get("batchSize", 64), len(train_set)))
    brief = {k: v for k, v in finetune_raw.items() if k not in ("epochs", "steps", "evalEvery")}
    brief["steps"] = min(CANDIDATE_STEPS, steps_per_epoch)

    baseline = make_plan(original, input_shape, **dict(plan_options, rule="vbmf"), shapes=shapes, layers=layers)
    tried: list[dict] = []
    best: Optional[tuple] = None        # (record, plan, model, rewritten)
    target = min(max(baseline.totals["macs"]["ratio"], MIN_TARGET), MAX_TARGET)
    for index in range(CANDIDATES):
        started = time.perf_counter()
        record = {"candidate": index + 1, "targetMacs": round(target, 6)}
        emit({"event": "progress", "stage": "plan", "done": index, "total": CANDIDATES,
              "message": f"candidate {index + 1}: MACs target {target:.3f} of the original"})
        try:
            plan = make_plan(original, input_shape, **dict(plan_options, rule="budget", target_macs=target),
                             shapes=shapes, layers=layers)
            if calibration_samples and allocation_applies(plan):
                plan = allocate_by_energy(original, plan, images, plan.options.get("roundTo"), layers=layers)
        except EngineInputError as exc:
            record.update(error=str(exc), withinLimit=False)
            tried.append(record)
            emit(_candidate_event(index, record))
            target = next_target(tried)
            if target is None:
                break
            continue
        result = rewrite(original, plan)
        for entry in plan.layers:
            entry.rel_error = result.rel_errors.get(entry.name)
        model = result.model
        if calibration_samples:
            model, _ = calibrate(original, model, [e.name for e in plan.rewritten()], images)
        candidate_job = copy.deepcopy(job)
        candidate_job["workDir"] = os.path.join(job["workDir"], f"search-{index + 1}")
        candidate_job["options"]["finetune"] = brief
        tuned, sections = run_finetune_stage(candidate_job, original, model, lambda event: None)
        accuracy = sections["accuracy"]
        top1 = accuracy["finetuned"]["top1"]
        drop = 100 * (original_top1 - top1)
        record.update({
            "macsRatio": plan.totals["macs"]["ratio"], "paramsRatio": plan.totals["params"]["ratio"],
            "accuracy": top1, "accuracyBeforeFinetune": accuracy["compressed"]["top1"],
            "drop": round(drop, 4), "withinLimit": drop <= limit, "finetuneSteps": brief["steps"],
            "layersRewritten": len(plan.rewritten()), "seconds": round(time.perf_counter() - started, 2)})
        tried.append(record)
        emit(_candidate_event(index, record))
        if best is None or _better(record, best[0]):
            # The job's own fine-tuning starts from the calibrated candidate, so the returned model has had
            # exactly the fine-tuning the job asked for; the brief fine-tune only scored it.
            best = (record, plan, model if options.get("finetune") is not None else tuned, result.model)
        target = next_target(tried)
        if target is None:
            break
    if best is None:
        raise EngineInputError("maxAccuracyDrop: no MACs target between "
                               f"{MIN_TARGET} and {MAX_TARGET} gave a plan; see the candidates' errors",
                               code="invalid_option", field="maxAccuracyDrop")
    record, plan, model, rewritten = best
    met = bool(record["withinLimit"])
    section = {"maxAccuracyDrop": limit, "met": met, "originalAccuracy": original_top1,
               "heldout": {"samples": len(heldout), "split": heldout.info.get("split")},
               "chosen": record["candidate"], "candidateSteps": brief["steps"],
               "calibrationSamples": calibration_samples, "candidates": tried,
               "message": (f"candidate {record['candidate']}: {1 / record['macsRatio']:.2f}× fewer MACs, top-1 "
                           f"{100 * record['accuracy']:.2f} % after {brief['steps']} scoring steps "
                           f"({_versus_original(record['drop'])}"
                           f"{'' if met else f'; no candidate stayed within {limit:g} points, this is the most accurate one'})")}
    tradeoff = sorted(({k: c.get(k) for k in ("macsRatio", "accuracy", "drop", "withinLimit", "targetMacs",
                                                  "paramsRatio", "accuracyBeforeFinetune", "candidate")}
                       for c in tried if "macsRatio" in c), key=lambda c: c["macsRatio"])
    return SearchResult(plan, model, rewritten, section, tradeoff)


def _better(record: dict, incumbent: dict) -> bool:
    """Within the limit beats outside it; among those within, fewer MACs; among those outside, more top-1."""
    if record["withinLimit"] != incumbent["withinLimit"]:
        return record["withinLimit"]
    if record["withinLimit"]:
        return record["macsRatio"] < incumbent["macsRatio"]
    return record["accuracy"] > incumbent["accuracy"]


def _versus_original(drop: float) -> str:
    """A drop in points as words: '0.90 points below the original' (a negative drop is above it)."""
    return f"{abs(drop):.2f} points {'below' if drop >= 0 else 'above'} the original"


def _candidate_event(index: int, record: dict) -> dict:
    if "error" in record:
        message = f"candidate {index + 1}: MACs target {record['targetMacs']:.3f}: no plan ({record['error'][:120]})"
    else:
        message = (f"candidate {index + 1}: {1 / record['macsRatio']:.2f}× fewer MACs, top-1 "
                   f"{100 * record['accuracy']:.2f} % ({_versus_original(record['drop'])}), "
                   f"{'within' if record['withinLimit'] else 'outside'} the limit")
    return {"event": "progress", "stage": "plan", "done": index + 1, "total": CANDIDATES, "message": message,
            "candidate": record}
