"""The `run JOB.json` pipeline the service's worker spawns.

Stages, in order: analyze, plan, rewrite, finetune (only with options.finetune), evaluate, write.
stdout carries one JSON object per line (progress, log, result) and nothing else; compressed.onnx,
plan.json and report.json land atomically in outputDir. The rewritten model and its plan are also
checkpointed in workDir, keyed by the input's hash and the options, so a retried job skips straight
to fine-tuning.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from typing import Callable, Optional

from .atomic import atomic_write_bytes, atomic_write_json
from .device import describe as describe_device
from .errors import EngineInputError, input_errors
from .exits import EXIT_OK, EXIT_TERMINATED
from .latency_table import read_latency_table
from .options import calibration_samples, plan_kwargs, validate_options
from .ranks import channel_block

STAGES = ("analyze", "plan", "rewrite", "finetune", "evaluate", "write")
# Bumped when the rewrite of the same input and options would produce a different model.
CHECKPOINT_VERSION = 2             # 2: ranks rounded to the target CPU's channel block by default

Emit = Callable[[dict], None]


class JobTerminated(BaseException):
    """SIGTERM arrived: unwind (temp files are removed on the way) and exit promptly."""


def json_lines_emitter(stream=None) -> Emit:
    def emit(event: dict) -> None:
        out = stream if stream is not None else sys.stdout
        out.write(json.dumps(event, allow_nan=False) + "\n")
        out.flush()
    return emit


def _job_error(message: str, field: Optional[str] = None) -> EngineInputError:
    return EngineInputError(message, code="invalid_job", field=field)


def _require(job: dict, key: str, kind, what: str):
    if key not in job:
        raise _job_error(f"job.json: missing field {key!r} ({what})", key)
    value = job[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _job_error(f"job.json: field {key!r} must be {what}, got {json.dumps(value)[:80]}", key)
    return value


def _absolute_path(job: dict, key: str) -> str:
    value = _require(job, key, str, "an absolute path")
    if not os.path.isabs(value):
        raise _job_error(f"job.json: field {key!r} must be an absolute path, got {value!r}", key)
    return value


def read_job(path: str) -> dict:
    """Parse and validate job.json; every complaint names the field and what it should be."""
    try:
        with open(path, "rb") as handle:
            job = json.loads(handle.read().decode("utf-8"))
    except FileNotFoundError:
        raise _job_error(f"job file {path!r} does not exist")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _job_error(f"job file {path!r} is not valid JSON: {exc}")
    if not isinstance(job, dict):
        raise _job_error(f"job file {path!r} must hold a JSON object, got {type(job).__name__}")
    _require(job, "jobId", str, "a string")
    _absolute_path(job, "model")
    _absolute_path(job, "outputDir")
    _absolute_path(job, "workDir")
    dataset = job.get("dataset")
    if dataset is not None:
        if not isinstance(dataset, str):
            raise _job_error(f"job.json: field 'dataset' must be null or a string, got {json.dumps(dataset)[:80]}",
                             "dataset")
        if not dataset.startswith("builtin:") and not os.path.isabs(dataset):
            raise _job_error(f"job.json: 'dataset' must be 'builtin:NAME' or an absolute path, got {dataset!r}",
                             "dataset")
    threads = job.get("threads", 1)
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise _job_error(f"job.json: 'threads' must be an integer >= 1, got {json.dumps(threads)}", "threads")
    seed = job.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _job_error(f"job.json: 'seed' must be an integer >= 0, got {json.dumps(seed)}", "seed")
    options = job.get("options", {}) or {}
    if not isinstance(options, dict):
        raise _job_error("job.json: 'options' must be an object", "options")
    # The same checks the API made at POST /v1/jobs (schema/job_options.json, from src/contract/).
    validate_options(options)
    job["threads"], job["seed"], job["options"] = threads, seed, options
    return job


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _sigterm_unwinds():
    def handler(signum, frame):
        raise JobTerminated()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _Stages:
    """Stage timing plus the progress lines the worker relays."""

    def __init__(self, emit: Emit):
        self.emit = emit
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, total: int = 1, message: Optional[str] = None):
        self.progress(name, 0, total, message)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 4)

    def progress(self, stage: str, done: int, total: int, message: Optional[str] = None) -> None:
        event = {"event": "progress", "stage": stage, "done": done, "total": total}
        if message:
            event["message"] = message
        self.emit(event)

    def log(self, message: str, level: str = "info") -> None:
        self.emit({"event": "log", "level": level, "message": message})


def run_job(job_path: str, emit: Optional[Emit] = None) -> int:
    """Run one job; EngineInputError propagates (the CLI turns it into the error event and exit 2), SIGTERM
    gives 143."""
    emit = emit or json_lines_emitter()
    try:
        with _sigterm_unwinds():
            _pipeline(read_job(job_path), _Stages(emit))
    except JobTerminated:
        print("tuckerize: terminated by SIGTERM", file=sys.stderr)
        return EXIT_TERMINATED
    return EXIT_OK


def _calibration_set(job: dict, original, samples: int):
    """A loader of the job's calibration images and held-out set (calibrate.calibration_data): the dataset
    is read on first use and kept for the allocation, the calibration and its held-out check."""
    loaded: list = []

    def load():
        if not loaded:
            from .calibrate import calibration_data
            from .finetune import model_input_shape
            with input_errors("invalid_dataset"):
                shape = model_input_shape(original, job["options"].get("inputShape"))
                loaded.append(calibration_data(job, shape, samples))
        return loaded[0]
    return load


def _allocate(original, plan, images, layers, stages: _Stages):
    """The plan's ranks re-allocated by the layers' response energy within its MACs and weights
    (allocate.py), for plans that allocate.applies to."""
    from .allocate import allocate_by_energy

    start = time.perf_counter()
    allocated = allocate_by_energy(original, plan, images, plan.options.get("roundTo"), layers=layers)
    moved = sum(1 for a, b in zip(plan.layers, allocated.layers) if a.ranks != b.ranks)
    stages.log(f"ranks re-allocated by response energy on {len(images)} images within the plan's MACs "
               f"({plan.totals['macs']['ratio']:.4f} → {allocated.totals['macs']['ratio']:.4f} of the original): "
               f"{moved} layer(s) moved, {time.perf_counter() - start:.1f} s", "info")
    return allocated


def _pipeline(job: dict, stages: _Stages) -> None:
    import torch

    from .allocate import applies as allocation_applies
    from .metrics import graph_metrics
    from .onnx_graph import check_structure, default_opset, find_layers, infer_shapes, load_model, real_inputs
    from .plan import make_plan
    from .surgery import rewrite

    torch.set_num_threads(job["threads"])
    torch.manual_seed(job["seed"])
    options = job["options"]
    input_shape = options.get("inputShape")
    profile: dict[str, float] = {}
    os.makedirs(job["outputDir"], exist_ok=True)
    os.makedirs(job["workDir"], exist_ok=True)

    with stages.stage("analyze"), input_errors("invalid_model"):
        original = load_model(job["model"])
        shapes = infer_shapes(original, input_shape)
        layers = find_layers(original, input_shape, shapes=shapes)
        before = graph_metrics(original, shapes=shapes)
        model_sha = _sha256(job["model"])
        for index, layer in enumerate(layers, start=1):
            note = "eligible" if layer.eligible else f"kept: {layer.reason}"
            stages.progress("analyze", index, len(layers), f"{layer.name} ({layer.op}): {note}")
    if not any(layer.eligible for layer in layers):
        stages.log("no Conv/Gemm/MatMul layer of this model can be decomposed; the output equals the input", "warn")

    latency_table = read_latency_table(options["latencyTable"]) if options.get("latencyTable") else None
    key = _checkpoint_key(model_sha, options, latency_table)
    checkpoint = _load_checkpoint(job["workDir"], key)
    samples = calibration_samples(options, bool(job.get("dataset")))
    calibration_set = _calibration_set(job, original, samples)
    search = None
    if options.get("maxAccuracyDrop") is not None:
        # Accuracy-target mode: the plan is chosen by measuring candidates (search.py); its progress
        # events, one per candidate, belong to the plan stage.
        from .search import accuracy_search
        with stages.stage("plan", len(layers)), input_errors("invalid_option"):
            search = accuracy_search(job, original, input_shape, plan_kwargs(options, latency_table, "improved"),
                                     samples, stages.emit, shapes=shapes, layers=layers)
        plan, compressed = search.plan, search.rewritten
        stages.timings["rewrite"] = 0.0
    elif checkpoint is not None:
        plan, compressed = checkpoint
        stages.progress("plan", len(layers), len(layers), "resumed from the checkpoint in workDir")
        stages.progress("rewrite", len(plan.rewritten()), len(plan.rewritten()), "resumed from the checkpoint")
        stages.timings["plan"] = stages.timings["rewrite"] = 0.0
    else:
        with stages.stage("plan", len(layers)), input_errors("invalid_option"):
            plan = make_plan(
                original, input_shape, **plan_kwargs(options, latency_table, "improved"), shapes=shapes, layers=layers,
                progress=lambda done, total, name: stages.progress("plan", done, total, name))
            if samples and allocation_applies(plan):
                plan = _allocate(original, plan, calibration_set()[0], layers, stages)
        rewritten = plan.rewritten()
        with stages.stage("rewrite", len(rewritten)), input_errors("invalid_model"):
            result = rewrite(original, plan,
                             progress=lambda done, total, name: stages.progress("rewrite", done, total, name))
            compressed = result.model
            for entry in plan.layers:
                entry.rel_error = result.rel_errors.get(entry.name)
        profile.update({f"rewrite.{k}": round(v, 4) for k, v in result.timings.items()})
        _save_checkpoint(job["workDir"], key, plan, compressed)

    # The rewrite alone is what the relative-error check judges (after fine-tuning the outputs are meant
    # to move), and the worker verifies it separately from the fine-tuned artifact.
    rewritten_model = compressed
    accuracy, finetune_report, calibration = None, None, None
    if search is not None:
        compressed = search.model
    elif samples and plan.rewritten():
        # Calibration (calibrate.py) refits the rewritten layers on the job's images; its progress
        # belongs to the rewrite stage, which it completes.
        from .calibrate import calibrate_stage
        start = time.perf_counter()
        with input_errors("invalid_dataset"):
            images, heldout = calibration_set()
            compressed, calibration = calibrate_stage(original, compressed, [e.name for e in plan.rewritten()],
                                                      images, heldout, stages.emit)
        stages.timings["calibrate"] = round(time.perf_counter() - start, 4)
    if options.get("finetune") is not None:
        atomic_write_bytes(os.path.join(job["outputDir"], "compressed-before-finetune.onnx"),
                           rewritten_model.SerializeToString())
        from .finetune import run_finetune_stage
        with stages.stage("finetune"), input_errors("finetune_failed"):
            compressed, sections = run_finetune_stage(job, original, compressed, stages.emit)
            accuracy, finetune_report = sections.get("accuracy"), sections.get("finetune")

    with stages.stage("evaluate"):
        if accuracy is None and job.get("dataset"):
            from .finetune import evaluate_stage
            with input_errors("invalid_dataset"):
                accuracy = evaluate_stage(job, original, compressed, stages.emit)
        fidelity = _fidelity(original, rewritten_model, plan.input_shape, job["seed"], stages)

    with stages.stage("write", 3):
        start = time.perf_counter()
        check_structure(compressed)
        profile["write.check"] = round(time.perf_counter() - start, 4)
        after = graph_metrics(compressed, plan.input_shape)
        out = job["outputDir"]
        atomic_write_bytes(os.path.join(out, "compressed.onnx"), compressed.SerializeToString())
        stages.progress("write", 1, 3, "compressed.onnx")
        atomic_write_json(os.path.join(out, "plan.json"), plan.to_dict())
        stages.progress("write", 2, 3, "plan.json")
        totals = {
            "params": {"before": before.params, "after": after.params, "ratio": _ratio(after.params, before.params)},
            "macs": {"before": before.macs, "after": after.macs, "ratio": _ratio(after.macs, before.macs)},
        }
        for extra in ("target", "latency"):
            if extra in plan.totals:
                totals[extra] = plan.totals[extra]
        report = {
            "jobId": job["jobId"],
            "model": {
                # The report is served to users: the file's name, not the worker's path to it.
                "file": os.path.basename(job["model"]), "sha256": model_sha, "bytes": os.path.getsize(job["model"]),
                "opset": default_opset(original), "irVersion": original.ir_version,
                "producer": f"{original.producer_name} {original.producer_version}".strip(),
                "inputs": [{"name": v.name, "shape": _dims(v)} for v in real_inputs(original)],
                "outputs": [{"name": v.name, "shape": _dims(v)} for v in original.graph.output],
                "inputShape": plan.input_shape, "params": before.params, "macs": before.macs,
            },
            "compressed": {"bytes": compressed.ByteSize(), "params": after.params, "macs": after.macs},
            "options": options,
            "rule": plan.rule,
            "layers": [entry.to_dict() for entry in plan.layers],
            "totals": totals,
            "fidelity": fidelity,
            "accuracy": accuracy,
            "finetune": finetune_report,
            "method": options.get("method", "improved"),
            "calibration": calibration,
            "search": None if search is None else search.section,
            "tradeoff": None if search is None else search.tradeoff,
            "timings": dict(stages.timings),
            "profile": profile,
            # the worker's accelerator (or "cpu"): shown with the job and in the worker's /metrics
            "device": describe_device(),
        }
        report["timings"]["write"] = round(time.perf_counter() - start, 4)
        atomic_write_json(os.path.join(out, "report.json"), report)
        stages.progress("write", 3, 3, "report.json")
    stages.emit({
        "event": "result", "artifact": "compressed.onnx", "plan": "plan.json", "report": "report.json",
        "summary": {
            "params": totals["params"], "macs": totals["macs"],
            "layers": {"rewritten": len(plan.rewritten()), "kept": len(plan.layers) - len(plan.rewritten())},
            "relativeError": fidelity.get("relativeError"),
            "accuracy": accuracy,
            "latency": totals.get("latency"),
            "search": None if search is None else {k: search.section[k] for k in ("maxAccuracyDrop", "met", "message")},
        },
    })


def _ratio(after, before):
    return after / before if before else None


def _dims(value) -> list:
    dims = value.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _fidelity(original, compressed, input_shape, seed: int, stages: _Stages) -> dict:
    """Relative output error of the compressed graph against the original on seeded random inputs.

    The paper's numbers come after fine-tuning; this one says how much the rewrite alone moved the
    outputs (0 up to rounding at full rank), which is what a client checks before deploying.
    """
    import onnx
    import torch

    from .interpret import OnnxModule
    from .onnx_graph import real_inputs
    inputs = real_inputs(original)
    if len(inputs) != 1:
        stages.log(f"output check skipped: the model has {len(inputs)} inputs, the check feeds one", "warn")
        return {"relativeError": None, "skipped": "more than one graph input"}
    generator = torch.Generator().manual_seed(seed)
    double = inputs[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    x = torch.randn(*input_shape, generator=generator, dtype=torch.float64 if double else torch.float32)
    try:
        with torch.no_grad():
            y_ref = OnnxModule(original).eval()(x)
            y_new = OnnxModule(compressed).eval()(x)
    except EngineInputError as exc:
        # onnxruntime in the worker is the judge of the artifact; the interpreter covers most models.
        stages.log(f"output check skipped: the interpreter cannot run this model ({exc})", "warn")
        return {"relativeError": None, "skipped": str(exc)}
    if isinstance(y_ref, tuple):
        y_ref, y_new = y_ref[0], y_new[0]
    norm = float(torch.linalg.vector_norm(y_ref.double()))
    error = float(torch.linalg.vector_norm((y_ref - y_new).double()))
    relative = error / norm if norm > 0 else error
    if not math.isfinite(relative):
        raise EngineInputError("the compressed model produced NaN/Inf on random inputs; check the plan's ranks",
                               code="numeric_failure")
    return {"relativeError": relative, "inputShape": list(input_shape), "seed": seed, "samples": int(input_shape[0])}


def _checkpoint_key(model_sha: str, options: dict, latency_table: Optional[dict] = None) -> str:
    # The table's path stays the same when a retried job re-times the candidates; its content decides.
    relevant = {k: v for k, v in options.items() if k not in ("finetune", "latencyTable")}
    # The default target is this machine's CPU: a retry on another CPU class must not reuse the plan.
    target = plan_kwargs(options, latency_table=latency_table or {})["target"]
    relevant["target"] = channel_block(target, options.get("roundTo")).block
    text = json.dumps({"model": model_sha, "options": relevant, "latencyTable": latency_table,
                       "version": CHECKPOINT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _checkpoint_paths(work_dir: str) -> tuple[str, str]:
    return os.path.join(work_dir, "rewrite.onnx"), os.path.join(work_dir, "rewrite.plan.json")


def _save_checkpoint(work_dir: str, key: str, plan, model) -> None:
    model_path, plan_path = _checkpoint_paths(work_dir)
    atomic_write_bytes(model_path, model.SerializeToString())
    # The plan is written last and carries the key: it marks the pair complete.
    atomic_write_json(plan_path, {"key": key, "plan": plan.to_dict()})


def _load_checkpoint(work_dir: str, key: str):
    import onnx

    from .plan import Plan
    model_path, plan_path = _checkpoint_paths(work_dir)
    try:
        with open(plan_path) as handle:
            saved = json.load(handle)
        if saved.get("key") != key:
            return None
        return Plan.from_dict(saved["plan"]), onnx.load(model_path)
    except Exception:  # absent, half-written or from another engine version: redo the stages
        return None
