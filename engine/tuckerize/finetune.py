"""Fine-tuning of the compressed graph (step 3 of Kim et al. 2016) and the accuracy section of the report.

The student is the interpreter view (`OnnxModule`) of the compressed ONNX graph; the teacher is the
original graph. The loss is Hinton et al.'s (2015) distillation, T^2 * KL(softmax(t/T) || softmax(s/T)),
weighted by alpha, plus (1 - alpha) * cross-entropy when the dataset has labels and `labels` is on
(without distillation the loss is the cross-entropy alone). BatchNormalization nodes run in train mode,
so their running statistics follow the compressed network. Trained weights are written back into the
compressed ONNX.

Resumability: a checkpoint in job["workDir"] (model, optimizer, scheduler, RNG states, step) is written
atomically every `checkpointEvery` steps and at each epoch end. The data order of epoch e is a
permutation drawn from a generator seeded by (seed, e), so the step counter alone says where in the data
a resumed run continues; with the restored RNG state a CPU run with fixed threads ends with exactly the
weights of an uninterrupted one.

Options (job["options"]["finetune"], all optional):
  epochs (1)            passes over the training split
  steps (none)          cap on optimizer steps; alone (no epochs) it sets the length
  lr (SGD 0.01, AdamW 0.0003), optimizer ("sgd": momentum 0.9, nesterov | "adamw")
  clipGradNorm (5.0; 0 turns it off): clip the global gradient norm. A freshly compressed network
                        starts with gradient norms near 70; without the clip, SGD at lr 0.01 drove the
                        EVBMF-compressed fmnist-resnet to NaN (at step 4 to 73, by warm-up length); with
                        it, 300 steps reached 91 % (assets/models/finetune-stability-h200.jsonl)
  weightDecay (SGD 5e-4, AdamW 0.01; not applied to biases and norm scales)
  warmupSteps (5 % of the steps, at most 100), then cosine decay to 0
  distill (true), temperature (4.0), alpha (0.9 with labels; 1.0 without)
  labels (true): use the dataset's labels for cross-entropy when it has them
  batchSize (64), maxSamples (all): training samples used (a seeded subset)
  evalSamples (2000): held-out samples evaluated (10 % of an uploaded set; the test split of the built-in one)
  checkpointEvery (100 steps)
  featureWeight (0): weight of feature distillation at the rewritten layers, the mean over those layers of
                        ‖s − t‖² / ‖t‖² between the student's and the teacher's output of each rewritten
                        layer (its tensor keeps the original name), added to the logit loss
  evalEvery (none): also evaluate the held-out split every this many epochs (e.g. 0.25), into the history
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

import onnx
import torch
import torch.nn.functional as F

from .checkpoints import load_checkpoint, save_checkpoint
from .data import BUILTIN_FASHION_MNIST, Dataset, load_dataset, split_indices
from .errors import EngineInputError
from .interpret import OnnxModule, write_back

Emit = Callable[[dict], None]
CHECKPOINT_NAME = "finetune.ckpt"
CHECKPOINT_VERSION = 1
# Ops whose float initializers are learned weights; other float initializers (input mean/std, clip
# bounds, shape-like constants) are the graph's fixed arithmetic and stay frozen.
WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "BatchNormalization", "InstanceNormalization",
              "LayerNormalization", "GroupNormalization", "PRelu"}
OPTION_KEYS = {"epochs", "steps", "lr", "optimizer", "weightDecay", "warmupSteps", "distill", "temperature",
               "alpha", "labels", "batchSize", "maxSamples", "evalSamples", "checkpointEvery", "clipGradNorm",
               "featureWeight", "evalEvery"}


@dataclass(frozen=True)
class FinetuneOptions:
    epochs: Optional[int]
    steps: Optional[int]
    lr: float
    optimizer: str
    weight_decay: float
    warmup_steps: Optional[int]
    distill: bool
    temperature: float
    alpha: Optional[float]
    labels: bool
    batch_size: int
    max_samples: Optional[int]
    eval_samples: int
    checkpoint_every: int
    clip_grad_norm: float
    feature_weight: float = 0.0
    eval_every: Optional[float] = None

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "steps": self.steps, "lr": self.lr, "optimizer": self.optimizer,
                "weightDecay": self.weight_decay, "warmupSteps": self.warmup_steps, "distill": self.distill,
                "temperature": self.temperature, "alpha": self.alpha, "labels": self.labels,
                "batchSize": self.batch_size, "maxSamples": self.max_samples, "evalSamples": self.eval_samples,
                "checkpointEvery": self.checkpoint_every, "clipGradNorm": self.clip_grad_norm,
                "featureWeight": self.feature_weight, "evalEvery": self.eval_every}


def parse_options(raw: Optional[dict]) -> FinetuneOptions:
    """Validate options.finetune; every complaint names the option and the value."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - OPTION_KEYS)
    if unknown:
        raise EngineInputError(f"options.finetune: unknown key(s) {unknown}; known: {sorted(OPTION_KEYS)}")

    def integer(key, default, minimum=1):
        value = raw.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise EngineInputError(f"options.finetune.{key} must be an integer >= {minimum}, got {json.dumps(value)}")
        return value

    def number(key, default, low, high, low_open=True):
        value = raw.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or value > high or value < low or (low_open and value == low):
            bound = f"{'(' if low_open else '['}{low}, {high}]"
            raise EngineInputError(f"options.finetune.{key} must be a number in {bound}, got {json.dumps(value)}")
        return float(value)

    def flag(key, default):
        value = raw.get(key, default)
        if not isinstance(value, bool):
            raise EngineInputError(f"options.finetune.{key} must be true or false, got {json.dumps(value)}")
        return value

    optimizer = raw.get("optimizer", "sgd")
    if optimizer not in ("sgd", "adamw"):
        raise EngineInputError(f"options.finetune.optimizer must be 'sgd' or 'adamw', got {json.dumps(optimizer)}")
    epochs = integer("epochs", None)
    steps = integer("steps", None)
    if epochs is None and steps is None:
        epochs = 1
    return FinetuneOptions(
        epochs=epochs, steps=steps,
        lr=number("lr", 0.01 if optimizer == "sgd" else 3e-4, 0.0, 10.0),
        optimizer=optimizer,
        weight_decay=number("weightDecay", 5e-4 if optimizer == "sgd" else 0.01, 0.0, 1.0, low_open=False),
        warmup_steps=integer("warmupSteps", None, minimum=0),
        distill=flag("distill", True),
        temperature=number("temperature", 4.0, 0.0, 100.0),
        alpha=number("alpha", None, 0.0, 1.0, low_open=False),
        labels=flag("labels", True),
        batch_size=integer("batchSize", 64, minimum=2),
        max_samples=integer("maxSamples", None),
        eval_samples=integer("evalSamples", 2000),
        checkpoint_every=integer("checkpointEvery", 100),
        clip_grad_norm=number("clipGradNorm", 5.0, 0.0, 1e6, low_open=False),
        feature_weight=number("featureWeight", 0.0, 0.0, 1e3, low_open=False),
        eval_every=number("evalEvery", None, 0.0, 1e3),
    )


# --- entry points for run.py ---------------------------------------------------------------------------

def run_finetune_stage(job: dict, original: onnx.ModelProto, compressed: onnx.ModelProto,
                       emit: Emit) -> tuple[onnx.ModelProto, dict]:
    """Fine-tune `compressed` on the job's dataset; returns (trained model, {"accuracy", "finetune"})."""
    options = parse_options((job.get("options") or {}).get("finetune"))
    if not job.get("dataset"):
        raise EngineInputError("fine-tuning needs a dataset: give datasetId (or 'builtin:fashion-mnist'), "
                               "or drop options.finetune")
    device = _device(job)
    input_shape = model_input_shape(original, (job.get("options") or {}).get("inputShape"))
    train_set, heldout = training_data(job["dataset"], input_shape, int(job.get("seed", 0)), options)
    use_labels = options.labels and train_set.y is not None
    if not options.distill and not use_labels:
        raise EngineInputError("fine-tuning without distillation needs labels: the dataset has none "
                               "(or options.finetune.labels is false); set distill true")

    features = rewritten_outputs(original, compressed) if options.feature_weight > 0 else []
    teacher = OnnxModule(with_outputs(original, features)).to(device).eval()
    student = OnnxModule(with_outputs(compressed, features)).to(device)
    num_outputs = _check_outputs(teacher, student, heldout, device)
    for dataset in (train_set, heldout):
        if dataset.y is not None and int(dataset.y.max()) >= num_outputs:
            raise EngineInputError(f"dataset label {int(dataset.y.max())} is out of range: the model has "
                                   f"{num_outputs} outputs (labels must be 0..{num_outputs - 1})")

    emit(_progress(0, 1, "evaluating the original and compressed models on the held-out split"))
    teacher_heldout = predict(teacher, heldout.x, device)
    before = evaluate_logits(predict(student, heldout.x, device), heldout.y, teacher_heldout)
    original_metrics = evaluate_logits(teacher_heldout, heldout.y, None)

    result = train(student, teacher, compressed, train_set, heldout, teacher_heldout, options, job, device, emit,
                   fingerprint=_fingerprint(job, compressed, options))
    after = evaluate_logits(predict(student, heldout.x, device), heldout.y, teacher_heldout)
    trained = write_back(student.cpu(), compressed)
    accuracy = {"labels": heldout.y is not None, "samples": len(heldout), "split": heldout.info.get("split"),
                "dataset": train_set.info.get("spec"), "original": original_metrics, "compressed": before,
                "finetuned": after}
    return trained, {"accuracy": accuracy, "finetune": result}


def evaluate_stage(job: dict, original: onnx.ModelProto, compressed: onnx.ModelProto, emit: Emit) -> Optional[dict]:
    """The accuracy section without fine-tuning: original vs compressed on the held-out split."""
    if not job.get("dataset"):
        return None
    options = parse_options((job.get("options") or {}).get("finetune"))
    device = _device(job)
    input_shape = model_input_shape(original, (job.get("options") or {}).get("inputShape"))
    _, heldout = training_data(job["dataset"], input_shape, int(job.get("seed", 0)), options)
    teacher = OnnxModule(original).to(device).eval()
    student = OnnxModule(compressed).to(device).eval()
    _check_outputs(teacher, student, heldout, device)
    emit({"event": "progress", "stage": "evaluate", "done": 0, "total": 2, "message": "original model"})
    teacher_logits = predict(teacher, heldout.x, device)
    emit({"event": "progress", "stage": "evaluate", "done": 1, "total": 2, "message": "compressed model"})
    compressed_metrics = evaluate_logits(predict(student, heldout.x, device), heldout.y, teacher_logits)
    emit({"event": "progress", "stage": "evaluate", "done": 2, "total": 2, "message": "held-out evaluation done"})
    return {"labels": heldout.y is not None, "samples": len(heldout), "split": heldout.info.get("split"),
            "dataset": heldout.info.get("spec"), "original": evaluate_logits(teacher_logits, heldout.y, None),
            "compressed": compressed_metrics, "finetuned": None}


# --- data ------------------------------------------------------------------------------------------------

def model_input_shape(model: onnx.ModelProto, override: Optional[list] = None) -> list:
    """[N, C, H, W] of the single graph input; symbolic dims are None. options.inputShape wins."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in initializers]
    if len(inputs) != 1:
        raise EngineInputError(f"fine-tuning supports models with one input; this one has {[vi.name for vi in inputs]}")
    if override is not None:
        return list(override)
    dims = inputs[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]


def training_data(spec: str, input_shape: list, seed: int, options: FinetuneOptions) -> tuple[Dataset, Dataset]:
    """(training set, held-out set): the built-in set's train/test splits, or a seeded split of an upload."""
    if spec == BUILTIN_FASHION_MNIST:
        train_set = load_dataset(spec, input_shape, split="train")
        test_set = load_dataset(spec, input_shape, split="test")
        heldout = test_set.subset(torch.arange(min(options.eval_samples, len(test_set))))
        heldout.info["split"] = f"first {len(heldout)} images of the Fashion-MNIST test split"
    else:
        dataset = load_dataset(spec, input_shape)
        train_idx, heldout_idx = split_indices(len(dataset), 0.1, seed, max_heldout=options.eval_samples)
        train_set, heldout = dataset.subset(train_idx), dataset.subset(heldout_idx)
        heldout.info["split"] = f"{len(heldout)} of {len(dataset)} samples held out (seeded split, seed {seed})"
    if options.max_samples is not None and options.max_samples < len(train_set):
        generator = torch.Generator().manual_seed(seed + 7919)
        chosen = torch.randperm(len(train_set), generator=generator)[:options.max_samples].sort().values
        train_set = train_set.subset(chosen)
    if len(train_set) < 2:
        raise EngineInputError(f"dataset {spec!r} leaves {len(train_set)} training sample(s); fine-tuning needs at least 2")
    return train_set, heldout


# --- training --------------------------------------------------------------------------------------------

def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean; T^2 keeps gradients T-independent."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature ** 2


def trainable_parameters(module: OnnxModule, model: onnx.ModelProto) -> list[tuple[str, torch.nn.Parameter]]:
    """Float initializers that feed a weight-bearing op, or an Add right after one (a bias)."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    learned = set()
    for node in model.graph.node:
        if node.op_type in WEIGHT_OPS:
            learned.update(node.input[1:])
        elif node.op_type == "Add" and any(producers.get(i) in WEIGHT_OPS for i in node.input):
            learned.update(node.input)
    return [(name, module.params[key]) for name, key in module.param_keys.items() if name in learned]


def train(student: OnnxModule, teacher: OnnxModule, model: onnx.ModelProto, train_set: Dataset, heldout: Dataset,
          teacher_heldout: torch.Tensor, options: FinetuneOptions, job: dict, device: torch.device, emit: Emit,
          fingerprint: str) -> dict:
    seed = int(job.get("seed", 0))
    batch_size = min(options.batch_size, len(train_set))
    steps_per_epoch = len(train_set) // batch_size
    if options.epochs is not None:
        total_steps = options.epochs * steps_per_epoch
        if options.steps is not None:
            total_steps = min(total_steps, options.steps)
    else:
        total_steps = options.steps
    warmup = options.warmup_steps if options.warmup_steps is not None else min(100, total_steps // 20)
    eval_every_steps = max(1, round(options.eval_every * steps_per_epoch)) if options.eval_every else None
    use_labels = options.labels and train_set.y is not None
    alpha = options.alpha if options.alpha is not None else (0.9 if use_labels else 1.0)
    if not options.distill:
        alpha = 0.0

    params = trainable_parameters(student, model)
    frozen = sorted(set(student.param_keys) - {name for name, _ in params})
    emit({"event": "log", "level": "info", "message": f"training {len(params)} weight tensors; frozen (graph "
          f"constants, not weights of Conv/Gemm/MatMul/norm ops): {frozen if frozen else 'none'}"})
    for parameter in student.parameters():
        parameter.requires_grad_(False)
    decay, no_decay = [], []
    for _, parameter in params:
        parameter.requires_grad_(True)
        (decay if parameter.ndim > 1 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if options.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=options.lr, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=options.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _WarmupCosine(warmup, total_steps))

    torch.manual_seed(seed)
    work_dir = job["workDir"]
    os.makedirs(work_dir, exist_ok=True)
    ckpt_path = os.path.join(work_dir, CHECKPOINT_NAME)
    step, history, trained_seconds, samples_seen = 0, [], 0.0, 0
    epoch_loss = [0.0, 0]
    checkpoint = _load_checkpoint(ckpt_path, fingerprint, device, emit)
    if checkpoint is not None:
        student.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"], device)
        step, trained_seconds, samples_seen = checkpoint["step"], checkpoint["trainedSeconds"], checkpoint["samplesSeen"]
        history = checkpoint["history"]
        epoch_loss = [checkpoint["epochLossSum"], checkpoint["epochLossCount"]]
        emit({"event": "log", "level": "info", "message": f"fine-tuning resumed from step {step} of {total_steps}"})

    x_all = train_set.x
    y_all = train_set.y if use_labels else None
    progress_every = max(1, total_steps // 100)
    last_emit = time.perf_counter()
    window_loss, window_count = 0.0, 0
    order_epoch, order = -1, None
    student.train()
    while step < total_steps:
        epoch = step // steps_per_epoch
        if epoch != order_epoch:
            order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
            order_epoch = epoch
        position = step % steps_per_epoch
        index = order[position * batch_size:(position + 1) * batch_size]
        started = time.perf_counter()
        xb = x_all[index].to(device)
        outputs = student(xb)
        logits, student_features = (outputs[0], outputs[1:]) if isinstance(outputs, tuple) else (outputs, ())
        loss = torch.zeros((), device=device)
        if alpha > 0 or student_features:
            with torch.no_grad():
                teacher_outputs = teacher(xb)
            teacher_logits, teacher_features = ((teacher_outputs[0], teacher_outputs[1:])
                                                if isinstance(teacher_outputs, tuple) else (teacher_outputs, ()))
        if alpha > 0:
            loss = loss + alpha * distillation_loss(logits, teacher_logits, options.temperature)
        if student_features:
            loss = loss + options.feature_weight * feature_loss(student_features, teacher_features)
        if alpha < 1 and y_all is not None:
            loss = loss + (1 - alpha) * F.cross_entropy(logits, y_all[index].to(device))
        if not torch.isfinite(loss):
            raise EngineInputError(f"fine-tuning diverged at step {step} (loss {float(loss)}); lower options.finetune.lr "
                                   f"(now {options.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if options.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([parameter for _, parameter in params], options.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        step += 1
        loss_value = float(loss.detach())
        trained_seconds += time.perf_counter() - started
        samples_seen += len(index)
        window_loss += loss_value
        window_count += 1
        epoch_loss[0] += loss_value
        epoch_loss[1] += 1

        epoch_end = step % steps_per_epoch == 0 or step == total_steps
        if not epoch_end and eval_every_steps and step % eval_every_steps == 0:
            metrics = evaluate_logits(predict(student, heldout.x, device), heldout.y, teacher_heldout)
            student.train()
            history.append({"epoch": round(step / steps_per_epoch, 4), "step": step, "heldout": metrics})
            emit({"event": "log", "level": "info",
                  "message": f"step {step} ({step / steps_per_epoch:.2f} epoch): held-out {json.dumps(metrics)}"})
        if epoch_end:
            metrics = evaluate_logits(predict(student, heldout.x, device), heldout.y, teacher_heldout)
            student.train()
            history.append({"epoch": epoch + 1, "step": step, "loss": round(epoch_loss[0] / max(1, epoch_loss[1]), 6),
                            "heldout": metrics})
            epoch_loss = [0.0, 0]
            emit({"event": "log", "level": "info",
                  "message": f"epoch {epoch + 1} (step {step}): held-out {json.dumps(metrics)}"})
        now = time.perf_counter()
        if step % progress_every == 0 or step == total_steps or now - last_emit > 10:
            rate = samples_seen / trained_seconds if trained_seconds > 0 else None
            eta = (total_steps - step) * batch_size / rate if rate else None
            emit(_progress(step, total_steps, f"step {step}/{total_steps}", loss=window_loss / window_count,
                           rate=rate, eta=eta))
            window_loss, window_count, last_emit = 0.0, 0, now
        if step % options.checkpoint_every == 0 or epoch_end:
            save_checkpoint({
                "version": CHECKPOINT_VERSION, "fingerprint": fingerprint, "step": step,
                "model": student.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(device), "trainedSeconds": trained_seconds,
                "samplesSeen": samples_seen, "history": history,
                "epochLossSum": epoch_loss[0], "epochLossCount": epoch_loss[1]}, ckpt_path)
            emit({"event": "log", "level": "info", "message": f"checkpoint saved at step {step}"})

    student.eval()
    rate = samples_seen / trained_seconds if trained_seconds > 0 else None
    return {"epochs": round(total_steps / steps_per_epoch, 4), "steps": total_steps, "batchSize": batch_size,
            "trainSamples": len(train_set), "device": _device_name(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "wallSeconds": round(trained_seconds, 3), "imagesPerSecond": round(rate, 2) if rate else None,
            "loss": {"distillation": alpha > 0, "crossEntropy": alpha < 1 and y_all is not None, "alpha": alpha,
                     "temperature": options.temperature, "featureWeight": options.feature_weight},
            "options": options.to_dict(), "history": history}


class _WarmupCosine:
    """LambdaLR factor: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def feature_loss(student_features, teacher_features) -> torch.Tensor:
    """Mean over layers of ‖s − t‖²/‖t‖²: each rewritten layer's output pulled towards the original's."""
    terms = [((s - t) ** 2).sum() / (t ** 2).sum().clamp_min(1e-12) for s, t in zip(student_features, teacher_features)]
    return torch.stack(terms).mean()


def rewritten_outputs(original: onnx.ModelProto, compressed: onnx.ModelProto) -> list[str]:
    """Tensors both graphs compute but with different producer nodes: the outputs of the rewritten layers."""
    producer = {out: node.name for node in original.graph.node for out in node.output}
    graph_outputs = {o.name for o in compressed.graph.output}
    return [node.output[0] for node in compressed.graph.node
            if node.output and node.output[0] in producer and producer[node.output[0]] != node.name
            and node.output[0] not in graph_outputs]


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the tensors `names` (after its own outputs)."""
    if not names:
        return model
    result = onnx.ModelProto()
    result.CopyFrom(model)
    elem = result.graph.output[0].type.tensor_type.elem_type
    result.graph.output.extend(onnx.helper.make_tensor_value_info(name, elem, None) for name in names)
    return result


# --- evaluation ------------------------------------------------------------------------------------------

@torch.no_grad()
def predict(module: OnnxModule, x: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    was_training = module.training
    module.eval()
    outputs = [_first_output(module(x[start:start + batch_size].to(device))).float().cpu()
               for start in range(0, x.shape[0], batch_size)]
    module.train(was_training)
    return torch.cat(outputs)


def evaluate_logits(logits: torch.Tensor, labels: Optional[torch.Tensor],
                    reference: Optional[torch.Tensor]) -> dict:
    """top-1 (and top-5 with >= 10 classes) against labels; agreement and mean KL against the reference."""
    metrics: dict = {"samples": int(logits.shape[0])}
    if labels is not None:
        metrics["top1"] = round(float((logits.argmax(1) == labels).float().mean()), 6)
        if logits.shape[1] >= 10:
            top5 = logits.topk(5, dim=1).indices
            metrics["top5"] = round(float((top5 == labels[:, None]).any(1).float().mean()), 6)
    if reference is not None:
        metrics["agreement"] = round(float((logits.argmax(1) == reference.argmax(1)).float().mean()), 6)
        kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(reference, 1), reduction="batchmean", log_target=True)
        metrics["meanKL"] = round(float(kl), 6)
    return metrics


# --- helpers ---------------------------------------------------------------------------------------------

def _device(job: dict) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    torch.set_num_threads(int(job.get("threads", 1)))
    return torch.device("cpu")


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _first_output(output):
    return output[0] if isinstance(output, tuple) else output


def _check_outputs(teacher: OnnxModule, student: OnnxModule, heldout: Dataset, device: torch.device) -> int:
    probe = heldout.x[:2].to(device)
    with torch.no_grad():
        t = _first_output(teacher.eval()(probe))
        s = _first_output(student.eval()(probe))
    if t.ndim != 2 or s.shape != t.shape:
        raise EngineInputError(f"fine-tuning needs (N, classes) logits from the first output; the original gives "
                               f"{list(t.shape)}, the compressed {list(s.shape)}")
    return int(t.shape[1])


def _progress(done: int, total: int, message: str, loss: Optional[float] = None, rate: Optional[float] = None,
              eta: Optional[float] = None) -> dict:
    event = {"event": "progress", "stage": "finetune", "done": done, "total": total, "message": message}
    if loss is not None:
        event["loss"] = round(loss, 6)
    if rate is not None:
        event["imagesPerSecond"] = round(rate, 2)
    if eta is not None:
        event["etaSeconds"] = round(eta, 1)
    return event


def _fingerprint(job: dict, compressed: onnx.ModelProto, options: FinetuneOptions) -> str:
    """A checkpoint belongs to one (compressed model, dataset, seed, options): anything else starts afresh."""
    digest = hashlib.sha256(compressed.SerializeToString())
    digest.update(json.dumps({"dataset": _dataset_identity(job.get("dataset")), "seed": job.get("seed", 0),
                              "inputShape": (job.get("options") or {}).get("inputShape"),
                              "options": options.to_dict()}, sort_keys=True).encode())
    return digest.hexdigest()


def _dataset_identity(spec: Optional[str]) -> Optional[str]:
    """A builtin dataset by name, a file by its bytes: not by path, which differs between the workers a job
    may resume on (each stages its inputs in its own WORK_DIR)."""
    if spec is None or not os.path.isfile(spec):
        return spec
    digest = hashlib.sha256()
    with open(spec, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def _load_checkpoint(path: str, fingerprint: str, device: torch.device, emit: Emit) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    try:
        checkpoint = load_checkpoint(path, map_location=device)
    except Exception as err:  # a torn or foreign file: training again from the start is always correct
        emit({"event": "log", "level": "warn", "message": f"ignoring unreadable checkpoint {path}: {err}"})
        return None
    if checkpoint.get("version") != CHECKPOINT_VERSION or checkpoint.get("fingerprint") != fingerprint:
        emit({"event": "log", "level": "warn",
              "message": f"ignoring checkpoint {path}: it belongs to another model, dataset or options"})
        return None
    return checkpoint


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def main(argv=None) -> int:
    """`python3 -m tuckerize.finetune JOB.json ORIGINAL.onnx COMPRESSED.onnx OUT.onnx`: the stage alone.

    Prints the same JSON lines as `run`; writes the trained model to OUT.onnx atomically and the
    accuracy/finetune sections as the final result line. Exit 2 on bad input.
    """
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4:
        print("usage: python3 -m tuckerize.finetune JOB.json ORIGINAL.onnx COMPRESSED.onnx OUT.onnx", file=sys.stderr)
        return 2

    def emit(event: dict) -> None:
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()

    try:
        with open(args[0], encoding="utf-8") as handle:
            job = json.load(handle)
        original, compressed = onnx.load(args[1]), onnx.load(args[2])
        trained, sections = run_finetune_stage(job, original, compressed, emit)
    except EngineInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    tmp = args[3] + ".tmp"
    onnx.save(trained, tmp)
    os.replace(tmp, args[3])
    emit({"event": "result", "artifact": args[3], "summary": sections})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
