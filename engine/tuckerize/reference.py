"""Reference networks for Fashion-MNIST, trained from scratch by this engine, exported to ONNX.

`fmnist-vgg`: VGG-style plain 3x3 convs + BatchNorm + ReLU in three stages, two FC layers (1.5 M params).
`fmnist-resnet`: a small ResNet (basic blocks; stage transitions by stride-2 3x3 convs with 1x1 projection
shortcuts), global average pooling and one FC layer.
Both take raw pixels (N, 1, 28, 28) in [0, 1]; the dataset mean/std normalisation is part of the graph so a
client never has to know it. Exported with opset 13 and a dynamic batch axis; in eval mode the exporter
folds each BatchNorm into the preceding conv, which is what a deployed model looks like.

    python3 -m tuckerize.reference train --arch fmnist-vgg --epochs 40 --seed 0 --out DIR [--device cuda|cpu]
        [--data DIR] [--time-budget SECONDS] [--max-samples N]

Training resumes from DIR/ARCH.ckpt (written atomically after every epoch). The data order and the
augmentation of epoch e are drawn from generators seeded by (seed, e), so a resumed run sees the same
batches as an uninterrupted one. DIR receives ARCH.onnx, ARCH.json (the training record) and ARCH.md.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import load_checkpoint, save_checkpoint
from .data import load_fashion_mnist
from .errors import EngineInputError

# Fashion-MNIST training-set pixel statistics (x in [0, 1]); measured by `dataset_stats` below.
FMNIST_MEAN = 0.2860
FMNIST_STD = 0.3530
OPSET = 13
ARCHS = ("fmnist-vgg", "fmnist-resnet")


class Normalize(nn.Module):
    """(x - mean) / std inside the graph: exported as Sub and Div on the raw-pixel input."""

    def __init__(self, mean: float, std: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class FmnistVGG(nn.Module):
    """28 -> 14 -> 7 -> 3 spatially; widths 48, 96, 192; FC 1728 -> 512 -> 10."""

    def __init__(self, num_classes: int = 10, widths=(48, 96, 192)):
        super().__init__()
        layers: list[nn.Module] = [Normalize(FMNIST_MEAN, FMNIST_STD)]
        c_in = 1
        for width in widths:
            layers += [conv_bn_relu(c_in, width), conv_bn_relu(width, width), nn.MaxPool2d(2)]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * 3 * 3, 512), nn.ReLU(inplace=True),
                                        nn.Dropout(0.3), nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class FmnistResNet(nn.Module):
    """Stem 3x3 (32) at 28x28, stages of two basic blocks at 28 (32), 14 (64), 7 (128); avg-pool; FC."""

    def __init__(self, num_classes: int = 10, widths=(32, 64, 128), blocks: int = 2):
        super().__init__()
        self.normalize = Normalize(FMNIST_MEAN, FMNIST_STD)
        self.stem = conv_bn_relu(1, widths[0])
        stages = []
        c_in = widths[0]
        for index, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(c_in, width, stride))
                c_in = width
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(self.normalize(x)))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build(arch: str) -> nn.Module:
    if arch == "fmnist-vgg":
        return FmnistVGG()
    if arch == "fmnist-resnet":
        return FmnistResNet()
    raise EngineInputError(f"unknown reference architecture {arch!r}; choose one of {', '.join(ARCHS)}")


def count_params_macs(model: nn.Module, input_shape=(1, 1, 28, 28)) -> tuple[int, int]:
    """Parameters (BatchNorm affine included, buffers not) and per-image MACs of convs and linears."""
    macs = 0

    def hook(module, inputs, output):
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs += output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            macs += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        model(torch.zeros(input_shape, device=device))
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return sum(p.numel() for p in model.parameters()), macs


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Random crop after zero padding by `pad`, and random horizontal flip, per sample, on x's device."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None]
    cropped = padded[:, 0][batch, rows, cols].unsqueeze(1)
    flip = torch.rand(n, generator=generator, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start:start + batch_size]).float()
        correct += int((logits.argmax(1) == y[start:start + batch_size]).sum())
    return correct / x.shape[0]


def train(arch: str, epochs: int, seed: int, out: Path, device: str = "cpu", data_dir: Optional[str] = None,
          batch_size: int = 256, lr: float = 0.1, weight_decay: float = 5e-4, time_budget: Optional[float] = None,
          max_samples: Optional[int] = None, log: Callable[[str], None] = print) -> dict:
    """Train `arch`, checkpointing every epoch into `out`, then export ONNX + record. Returns the record."""
    started = time.time()
    out.mkdir(parents=True, exist_ok=True)
    dev = torch.device(device)
    torch.manual_seed(seed)
    model = build(arch).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=0.9, nesterov=True)

    train_set = load_fashion_mnist("train", data_dir)
    test_set = load_fashion_mnist("test", data_dir)
    if max_samples is not None:
        train_set = train_set.subset(torch.arange(min(max_samples, len(train_set))))
        test_set = test_set.subset(torch.arange(min(max_samples, len(test_set))))
    x_train, y_train = train_set.x.to(dev), train_set.y.to(dev)
    x_test, y_test = test_set.x.to(dev), test_set.y.to(dev)
    steps_per_epoch = max(1, len(train_set) // batch_size)  # drop the last partial batch: BN needs real batches
    warmup_epochs = min(2, epochs)

    ckpt_path = out / f"{arch}.ckpt"
    state = {"epoch": 0, "epochs": epochs, "history": [], "train_seconds": 0.0}
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, dev)
        if ckpt["arch"] != arch or ckpt["seed"] != seed:
            raise EngineInputError(f"{ckpt_path} belongs to arch {ckpt['arch']} seed {ckpt['seed']}; use another --out")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = ckpt["state"]
        log(f"resumed {arch} from {ckpt_path} after epoch {state['epoch']}")

    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    while state["epoch"] < state["epochs"]:
        epoch = state["epoch"]
        epoch_start = time.time()
        generator = torch.Generator(device=dev).manual_seed(seed * 100_003 + epoch)
        torch.manual_seed(seed * 100_003 + epoch)  # dropout masks
        order = torch.randperm(len(train_set), generator=generator, device=dev)
        model.train()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        total_steps = state["epochs"] * steps_per_epoch
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = lr_at(global_step, total_steps, warmup_epochs * steps_per_epoch, lr)
            index = order[step * batch_size:(step + 1) * batch_size]
            xb = augment(x_train[index], generator)
            yb = y_train[index]
            if dev.type == "cuda":
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast:
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == yb).sum()
        with autocast:
            test_acc = evaluate(model, x_test, y_test)
        epoch_seconds = time.time() - epoch_start
        state["train_seconds"] += epoch_seconds
        state["history"].append({"epoch": epoch + 1, "loss": round(float(loss_sum) / steps_per_epoch, 5),
                                 "trainAccuracy": round(float(correct) / (steps_per_epoch * batch_size), 5),
                                 "testAccuracy": round(test_acc, 5), "seconds": round(epoch_seconds, 2)})
        state["epoch"] = epoch + 1
        log(json.dumps({"arch": arch, **state["history"][-1]}))
        # The budget fixes the schedule's length once epoch 2 (warm kernels, still in warm-up) is timed.
        if time_budget is not None and state["epoch"] == min(2, state["epochs"]) and state["epoch"] < state["epochs"]:
            remaining = time_budget - (time.time() - started)
            affordable = state["epoch"] + int(remaining // (epoch_seconds * 1.05))
            if affordable < state["epochs"]:
                log(f"time budget {time_budget:.0f}s: {epochs} epochs do not fit, training {affordable}")
                state["epochs"] = max(state["epoch"], affordable)
        save_checkpoint({"arch": arch, "seed": seed, "model": model.state_dict(),
                         "optimizer": optimizer.state_dict(), "state": state}, ckpt_path)

    model = model.float().to(memory_format=torch.contiguous_format)
    final_acc = evaluate(model, x_test, y_test)
    model = model.cpu().eval()
    params, macs = count_params_macs(model)
    record = {
        "arch": arch, "command": " ".join(shlex.quote(a) for a in ["python3", "-m", "tuckerize.reference"] + sys.argv[1:]),
        "seed": seed, "epochsRequested": epochs, "epochs": state["epochs"], "batchSize": batch_size, "lr": lr,
        "weightDecay": weight_decay, "optimizer": "SGD nesterov momentum 0.9, linear warm-up 2 epochs + cosine",
        "loss": "cross-entropy, label smoothing 0.1",
        "augmentation": "random crop 28 after zero padding 2, random horizontal flip",
        "precision": "bfloat16 autocast" if dev.type == "cuda" else "float32",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "python": platform.python_version(),
        "trainSamples": len(train_set), "testSamples": len(test_set),
        "testAccuracy": round(final_acc, 5), "params": params, "macs": macs,
        "trainSeconds": round(state["train_seconds"], 1), "wallSeconds": round(time.time() - started, 1),
        "history": state["history"],
    }
    write_export(model, arch, out, record)
    log(f"{arch}: test accuracy {final_acc:.4f}, {params} params, {macs} MACs -> {out / (arch + '.onnx')}")
    return record


def write_export(model: nn.Module, arch: str, out: Path, record: dict) -> None:
    """Export ARCH.onnx and write ARCH.json + ARCH.md; the weights stay in ARCH.ckpt if the export fails."""
    onnx_path = out / f"{arch}.onnx"
    try:
        export_onnx(model, onnx_path)
        record["onnx"] = {"file": onnx_path.name, "opset": OPSET, "exportedWithTorch": torch.__version__,
                          "input": "input (N,1,28,28) float32 raw pixels in [0,1]", "output": "logits (N,10)",
                          "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
                          "batchNormFoldedIntoConv": True}
    except Exception as err:  # keep the trained weights and the record; `export` retries from the checkpoint
        record["onnx"] = {"error": f"{type(err).__name__}: {err}"}
    (out / f"{arch}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{arch}.md").write_text(record_markdown(record))
    if "error" in record["onnx"]:
        raise RuntimeError(f"ONNX export of {arch} failed ({record['onnx']['error']}); weights are in {out / (arch + '.ckpt')}")


def export_from_checkpoint(arch: str, out: Path) -> dict:
    """Re-export ARCH.onnx from ARCH.ckpt (e.g. with another torch) and refresh the record's ONNX fields."""
    ckpt = load_checkpoint(out / f"{arch}.ckpt", "cpu")
    model = build(arch)
    model.load_state_dict(ckpt["model"])
    model.eval()
    record_path = out / f"{arch}.json"
    if not record_path.exists():
        raise EngineInputError(f"{record_path} is missing; export needs the training record written by train")
    record = json.loads(record_path.read_text())
    write_export(model, arch, out, record)
    return record


def export_onnx(model: nn.Module, path: Path) -> None:
    """Classic TorchScript exporter, opset 13, dynamic batch; torch >= 2.5 defaults to dynamo, so opt out."""
    kwargs = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    tmp = path.with_name(path.name + ".tmp")
    torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(tmp), opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=True, **kwargs)
    os.replace(tmp, path)


def record_markdown(record: dict) -> str:
    lines = [f"# {record['arch']} — training record", "",
             f"- command: `{record['command']}`",
             f"- seed {record['seed']}, epochs {record['epochs']} (requested {record['epochsRequested']}), "
             f"batch {record['batchSize']}, lr {record['lr']}, weight decay {record['weightDecay']}",
             f"- optimizer: {record['optimizer']}; loss: {record['loss']}",
             f"- augmentation: {record['augmentation']}; precision: {record['precision']}",
             f"- device: {record['device']}; torch {record['torch']}, Python {record['python']}",
             f"- **test accuracy {100 * record['testAccuracy']:.2f} %** on {record['testSamples']} Fashion-MNIST test images",
             f"- params {record['params']:,}; MACs per image {record['macs']:,}",
             f"- training {record['trainSeconds']} s, wall {record['wallSeconds']} s",
             _onnx_line(record.get("onnx", {})), "",
             "| epoch | loss | train acc | test acc | seconds |", "| --- | --- | --- | --- | --- |"]
    for row in record["history"]:
        lines.append(f"| {row['epoch']} | {row['loss']} | {row['trainAccuracy']} | {row['testAccuracy']} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


def _onnx_line(onnx_info: dict) -> str:
    if "error" in onnx_info or "file" not in onnx_info:
        return f"- ONNX export failed: {onnx_info.get('error', 'not exported')}"
    return (f"- ONNX: {onnx_info['file']} (opset {onnx_info['opset']}, exported with torch {onnx_info['exportedWithTorch']}, "
            f"BatchNorm folded into convs), sha256 {onnx_info['sha256']}")


def dataset_stats(data_dir: Optional[str] = None) -> tuple[float, float]:
    x = load_fashion_mnist("train", data_dir).x
    return float(x.mean()), float(x.std())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tuckerize.reference", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a reference net, export ONNX and a training record")
    p.add_argument("--arch", required=True, choices=ARCHS)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default=None, help="folder with the Fashion-MNIST IDX .gz files")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds: after epoch 2 the epoch count shrinks to fit (recorded)")
    p.add_argument("--max-samples", type=int, default=None, help="train/test on the first N images (smoke tests)")
    p.add_argument("--threads", type=int, default=None)
    e = sub.add_parser("export", help="re-export DIR/ARCH.onnx from DIR/ARCH.ckpt and update the record")
    e.add_argument("--arch", required=True, choices=ARCHS)
    e.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.command == "export":
        export_from_checkpoint(args.arch, args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        train(args.arch, args.epochs, args.seed, args.out, args.device, args.data, args.batch_size, args.lr,
              time_budget=args.time_budget, max_samples=args.max_samples,
              log=lambda message: print(message, flush=True))
    except EngineInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
