"""Reference architectures exported to ONNX with random weights (no downloadable weights exist here).

torchvision's alexnet, vgg16, googlenet, resnet18, resnet50, mobilenet_v2 (weights=None, eval mode) and
'vggs', the CNN-S of Chatfield et al. 2014 ("Return of the Devil in the Details"), which Kim et al. 2016
compress in their Table 1. They serve shape, MACs, speed and surgery tests, not accuracy.
"""
from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from .errors import EngineInputError


class _LRNFunction(torch.autograd.Function):
    """Local response normalisation that exports as one ONNX LRN node.

    torch.onnx exports nn.LocalResponseNorm as a decomposition with an If node; Caffe-converted
    CNN-S models carry a single LRN node, which is what the engine should see.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float) -> torch.Tensor:
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, k: float):
        # torch 1.13 hands a patched torch._C.Graph whose g.op warns about a rename that torch 2.x
        # made (there `g` is a GraphContext with the same g.op); the call itself is right on both.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.Module):
    """Cross-channel LRN, ONNX/Caffe semantics (odd `size`, where torch's window agrees with ONNX's)."""

    def __init__(self, size: int, alpha: float, beta: float, k: float):
        super().__init__()
        if size % 2 != 1:
            raise ValueError(f"LRN size must be odd for torch and ONNX windows to agree, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)


class VGGS(nn.Module):
    """CNN-S (a.k.a. VGG-S) at 224×224 as in Caffe's VGG_CNN_S: pooling rounds up (ceil mode).

    Conv2 has no padding: with it the MACs reproduce the published 2.64 G (Kim et al. Table 1) and
    the weights the published 103 M; only conv1 is followed by LRN, as in Chatfield et al. Table 1.
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2),  # 224 -> 109
            nn.ReLU(inplace=True),
            # Caffe's LRN alpha is already per-window, like torch's and ONNX's (both divide by size).
            LRN(size=5, alpha=5e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(kernel_size=3, stride=3, ceil_mode=True),  # -> 37
            nn.Conv2d(96, 256, kernel_size=5),  # -> 33
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True),  # -> 17
            nn.Conv2d(256, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(512, 512, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=3, ceil_mode=True),  # -> 6
        )
        self.classifier = nn.Sequential(
            nn.Linear(512 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return build


# googlenet: aux heads off (they only run in training), init_weights=True skips the deprecation
# warning and uses torch's trunc_normal_ instead of the slow scipy path of older torchvision.
ZOO: dict[str, Callable[[], nn.Module]] = {
    "alexnet": _torchvision("alexnet"),
    "vgg16": _torchvision("vgg16"),
    "googlenet": _torchvision("googlenet", aux_logits=False, init_weights=True),
    "resnet18": _torchvision("resnet18"),
    "resnet50": _torchvision("resnet50"),
    "mobilenet_v2": _torchvision("mobilenet_v2"),
    "vggs": VGGS,
}


def build_zoo_model(name: str, seed: int = 0, calibrate_input_size: Optional[int] = 224) -> nn.Module:
    """The named architecture in eval mode, its random weights fixed by `seed`.

    With `calibrate_input_size`, BatchNorm statistics are measured on random images of that size.
    """
    if name not in ZOO:
        raise EngineInputError(f"unknown zoo model {name!r}; choose one of {', '.join(sorted(ZOO))}")
    # fork_rng keeps the caller's global RNG stream untouched by the seeding below.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZOO[name]()
        if calibrate_input_size:
            _calibrate_batch_norm(model, calibrate_input_size)
    return model.eval()


def _calibrate_batch_norm(model: nn.Module, input_size: int, batch: int = 8) -> None:
    """Set BatchNorm running statistics from one batch of standard-normal images.

    Freshly initialised statistics (mean 0, variance 1) leave random-weight nets like GoogLeNet and
    MobileNetV2 with activations that vanish layer by layer (outputs ~1e-9 or exactly the last bias),
    which makes numerical comparisons meaningless. Measured statistics keep every layer at unit scale.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(batch, 3, input_size, input_size))
    for norm in norms:
        norm.momentum = 0.1


def export_zoo_model(
    name: str,
    path: str | os.PathLike,
    opset: int = 13,
    input_size: int = 224,
    batch: int = 1,
    dynamic_batch: bool = False,
    seed: int = 0,
) -> Path:
    """Export `name` to `path` as ONNX: graph input "input" (batch×3×S×S, batch "N" if dynamic_batch),
    output "output" (logits). Weights are random (seeded); BatchNorm statistics are calibrated at S
    and then folded into the convolutions by the exporter."""
    model = build_zoo_model(name, seed, calibrate_input_size=input_size)
    example = torch.zeros(batch, 3, input_size, input_size)
    kwargs = dict(
        input_names=["input"],
        output_names=["output"],
        opset_version=opset,
        do_constant_folding=True,
    )
    if dynamic_batch:
        kwargs["dynamic_axes"] = {"input": {0: "N"}, "output": {0: "N"}}
    # torch >= 2.9 defaults to the dynamo exporter; the TorchScript one gives the classic
    # Conv/Gemm graphs this project rewrites, on every torch version that has it.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    path = Path(path)
    try:
        with torch.no_grad():
            torch.onnx.export(model, (example,), str(path), **kwargs)
    except RuntimeError as exc:  # torch's SymbolicValueError and friends derive from it
        raise EngineInputError(
            f"exporting {name} at {input_size}x{input_size} (opset {opset}) failed: {str(exc).splitlines()[0]}. "
            f"AlexNet, VGG-16 and VGG-S need 224 (their classifiers fix the feature-map size)") from exc
    return path
