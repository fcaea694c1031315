"""A trainable view of an ONNX graph: `OnnxModule(model)` runs the graph with torch ops.

The graph stays the source of truth. Its float initializers become the module's parameters (named after
them), BatchNormalization running statistics and non-float initializers become buffers, and nodes run
in topological order through one table, `OPS`, that maps each ONNX op to a torch function. Fine-tuning
trains this module; `write_back` copies the trained values into a copy of the ONNX model.

Semantics follow the ONNX operator specs for opsets 11-21 (older attribute forms are accepted where
they are cheap to support). Every handler takes `(ctx, node, *inputs)`, with `None` for an omitted
optional input, and returns one tensor or a tuple matching the node's outputs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable, Optional, Sequence

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, numpy_helper
from torch import Tensor, nn

from .errors import EngineInputError

__all__ = ["OPS", "OnnxModule", "write_back"]

_TORCH_DTYPES = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT64: torch.int64,
    TensorProto.INT32: torch.int32,
    TensorProto.INT16: torch.int16,
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
    # torch has no unsigned 16/32/64-bit types; shape-like values of these fit in int64.
    TensorProto.UINT16: torch.int64,
    TensorProto.UINT32: torch.int64,
    TensorProto.UINT64: torch.int64,
}
_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16}
_NP_DTYPES = {
    TensorProto.FLOAT: np.float32,
    TensorProto.DOUBLE: np.float64,
    TensorProto.FLOAT16: np.float16,
}


@dataclass
class _Node:
    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)

    def fail(self, message: str) -> EngineInputError:
        return EngineInputError(f"node {self.name!r} ({self.op_type}, opset {self.opset}): {message}")


@dataclass
class _Context:
    training: bool
    float_dtype: Optional[torch.dtype]
    """The module's working float type: float64 after `.double()`, where Cast must not narrow."""


# ----------------------------------------------------------------------------------------- helpers


def _ints(t: Optional[Tensor]) -> Optional[list[int]]:
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _floats(t: Optional[Tensor]) -> Optional[list[float]]:
    return None if t is None else [float(v) for v in t.reshape(-1).tolist()]


def _scalar(t: Optional[Tensor], default: Any = None) -> Any:
    if t is None or t.numel() == 0:
        return default
    return t.reshape(-1)[0].item()


def _torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """ONNX per-axis (begin, end) -> F.pad's flat list, which starts from the last axis."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


def _auto_pads(node: _Node, in_sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
               dilations: Sequence[int]) -> tuple[list[int], list[int]]:
    """Begin/end pads of each spatial axis for Conv and pooling, honouring auto_pad."""
    n = len(kernel)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = node.attr("pads") or [0] * (2 * n)
        return list(pads[:n]), list(pads[n:])
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise node.fail(f"auto_pad={auto_pad!r} is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER")
    begin, end = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        # SAME_UPPER puts the odd extra pixel at the end, SAME_LOWER at the beginning.
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin, end


def _spatial_attrs(node: _Node, n: int) -> tuple[list[int], list[int]]:
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    return list(strides), list(dilations)


def _as_index(idx: Tensor, size: int) -> Tensor:
    idx = idx.long()
    return torch.where(idx < 0, idx + size, idx)


def _norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axes_from(node: _Node, axes_input: Optional[Tensor], input_since: int) -> Optional[list[int]]:
    """Axes given as an attribute before opset `input_since` and as an input from it on."""
    if node.opset >= input_since:
        return _ints(axes_input) if axes_input is not None else None
    if axes_input is not None:  # tolerate graphs that mix the two forms
        return _ints(axes_input)
    axes = node.attr("axes")
    return list(axes) if axes is not None else None


# ---------------------------------------------------------------------------- convolution & dense


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv(ctx: _Context, node: _Node, x: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    n = x.dim() - 2
    if n not in _CONV:
        raise node.fail(f"input has rank {x.dim()}; Conv supports 1-D, 2-D and 3-D convolutions")
    kernel = list(node.attr("kernel_shape") or w.shape[2:])
    strides, dilations = _spatial_attrs(node, n)
    begin, end = _auto_pads(node, x.shape[2:], kernel, strides, dilations)
    padding: Any = begin
    if begin != end:
        x = F.pad(x, _torch_pad(begin, end))
        padding = 0
    return _CONV[n](x, w, b, strides, padding, dilations, node.attr("group", 1))


def conv_transpose(ctx: _Context, node: _Node, x: Tensor, w: Tensor, b: Optional[Tensor] = None) -> Tensor:
    n = x.dim() - 2
    if n not in _CONV_T:
        raise node.fail(f"input has rank {x.dim()}; ConvTranspose supports 1-D, 2-D and 3-D")
    kernel = list(node.attr("kernel_shape") or w.shape[2:])
    strides, dilations = _spatial_attrs(node, n)
    output_padding = list(node.attr("output_padding") or [0] * n)
    full = [(size - 1) * s + (k - 1) * d + 1 for size, s, k, d in zip(x.shape[2:], strides, kernel, dilations)]
    output_shape = node.attr("output_shape")
    auto_pad = node.attr("auto_pad", "NOTSET")
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        if output_shape is None:
            output_shape = [size * s for size, s in zip(x.shape[2:], strides)]
        output_shape = list(output_shape)[-n:]
        begin, end = [], []
        for f, op, target in zip(full, output_padding, output_shape):
            total = f + op - target
            small, large = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else large)
            end.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = node.attr("pads") or [0] * (2 * n)
        begin, end = list(pads[:n]), list(pads[n:])
    y = _CONV_T[n](x, w, None, strides, 0, 0, node.attr("group", 1), dilations)
    # output_padding appends zero rows before the bias; pads then crop both ends.
    y = F.pad(y, _torch_pad([-p for p in begin], [op - p for op, p in zip(output_padding, end)]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


def gemm(ctx: _Context, node: _Node, a: Tensor, b: Tensor, c: Optional[Tensor] = None) -> Tensor:
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)
    if trans_b and not trans_a and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1):
        return F.linear(a, b, c)
    y = torch.matmul(a.t() if trans_a else a, b.t() if trans_b else b)
    if alpha != 1.0:
        y = alpha * y
    if c is not None:
        y = y + (c if beta == 1.0 else beta * c)
    return y


def matmul(ctx: _Context, node: _Node, a: Tensor, b: Tensor) -> Tensor:
    return torch.matmul(a, b)


def einsum(ctx: _Context, node: _Node, *xs: Tensor) -> Tensor:
    return torch.einsum(node.attr("equation"), *xs)


# ------------------------------------------------------------------------------------ elementwise


def _binary(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def handler(ctx: _Context, node: _Node, a: Tensor, b: Tensor) -> Tensor:
        return fn(a, b)

    return handler


def _unary(fn: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    def handler(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
        return fn(x)

    return handler


def _variadic(fn: Callable[[Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    def handler(ctx: _Context, node: _Node, *xs: Tensor) -> Tensor:
        return reduce(fn, [x for x in xs if x is not None])

    return handler


def div(ctx: _Context, node: _Node, a: Tensor, b: Tensor) -> Tensor:
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # integer Div truncates, as in C


def pow_(ctx: _Context, node: _Node, x: Tensor, y: Tensor) -> Tensor:
    return torch.pow(x, y).to(x.dtype)  # the result takes the base's type


def mod(ctx: _Context, node: _Node, a: Tensor, b: Tensor) -> Tensor:
    return torch.fmod(a, b) if node.attr("fmod", 0) else torch.remainder(a, b)


def mean(ctx: _Context, node: _Node, *xs: Tensor) -> Tensor:
    xs = tuple(x for x in xs if x is not None)
    return reduce(torch.add, xs) / len(xs)


def where(ctx: _Context, node: _Node, cond: Tensor, x: Tensor, y: Tensor) -> Tensor:
    return torch.where(cond.bool(), x, y)


def clip(ctx: _Context, node: _Node, x: Tensor, lo: Optional[Tensor] = None, hi: Optional[Tensor] = None) -> Tensor:
    if node.opset < 11:
        low, high = node.attr("min"), node.attr("max")
    else:
        low, high = _scalar(lo), _scalar(hi)
    if low is None and high is None:
        return x
    return torch.clamp(x, min=low, max=high)


def leaky_relu(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return F.leaky_relu(x, node.attr("alpha", 0.01))


def hard_sigmoid(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return torch.clamp(node.attr("alpha", 0.2) * x + node.attr("beta", 0.5), 0.0, 1.0)


def hard_swish(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


def elu(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return F.elu(x, node.attr("alpha", 1.0))


def selu(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    alpha = node.attr("alpha", 1.67326319217681884765625)
    gamma = node.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def celu(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return F.celu(x, node.attr("alpha", 1.0))


def thresholded_relu(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return torch.where(x > node.attr("alpha", 1.0), x, torch.zeros_like(x))


def gelu(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return F.gelu(x, approximate=node.attr("approximate", "none"))


def prelu(ctx: _Context, node: _Node, x: Tensor, slope: Tensor) -> Tensor:
    # The slope broadcasts against x (ONNX), unlike F.prelu's per-channel vector.
    return torch.where(x < 0, x * slope, x)


def softplus(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return F.softplus(x)


def softsign(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return x / (1 + x.abs())


def mish(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return x * torch.tanh(F.softplus(x))


def _softmax_like(fn: Callable[[Tensor, int], Tensor]) -> Callable[..., Tensor]:
    def handler(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
        if node.opset >= 13:
            return fn(x, node.attr("axis", -1))
        # Before opset 13 the input is coerced to 2-D at `axis` and normalised over the second part.
        axis = _norm_axis(node.attr("axis", 1), x.dim())
        rows = math.prod(x.shape[:axis])
        return fn(x.reshape(rows, -1), 1).reshape(x.shape)

    return handler


def _hardmax(x: Tensor, axis: int) -> Tensor:
    return F.one_hot(x.argmax(axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


# -------------------------------------------------------------------------------------- pooling


def _pool_plan(node: _Node, x: Tensor, kernel: list[int]) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """Strides, dilations, begin pads and the right pads that make a floor-mode pool give ONNX's output size.

    The right pad can exceed the explicit one (ceil mode: the overhang window) or be negative (crop).
    """
    n = len(kernel)
    strides, dilations = _spatial_attrs(node, n)
    sizes = list(x.shape[2:])
    begin, end = _auto_pads(node, sizes, kernel, strides, dilations)
    same = node.attr("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER")
    ceil_mode = node.attr("ceil_mode", 0)
    right = []
    for size, k, s, d, b, e in zip(sizes, kernel, strides, dilations, begin, end):
        span = size + b + e - ((k - 1) * d + 1)
        if same:
            out = -(-size // s)
        elif ceil_mode:
            out = -(-span // s) + 1
            if (out - 1) * s >= size + b:  # a window that would start in the end padding is dropped
                out -= 1
        else:
            out = span // s + 1
        if out < 1:
            raise node.fail(f"kernel {kernel} with pads {begin + end} does not fit input size {sizes}")
        right.append((out - 1) * s + (k - 1) * d + 1 - size - b)
    return strides, dilations, begin, end, right


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def max_pool(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.fail("the Indices output of MaxPool is not supported; remove it from the graph")
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    if n not in _MAX_POOL:
        raise node.fail(f"{n}-D pooling is not supported")
    strides, dilations, begin, _, right = _pool_plan(node, x, kernel)
    if any(begin) or any(r > 0 for r in right):
        fill = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
        x = F.pad(x, _torch_pad(begin, right), value=fill)
    return _MAX_POOL[n](x, kernel, strides, 0, dilations)


def average_pool(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    kernel = list(node.attr("kernel_shape"))
    n = len(kernel)
    if n not in _AVG_POOL:
        raise node.fail(f"{n}-D pooling is not supported")
    if any(d != 1 for d in node.attr("dilations") or []):
        raise node.fail(f"dilations {node.attr('dilations')} in AveragePool are not supported")
    strides, _, begin, end, right = _pool_plan(node, x, kernel)
    if not any(begin) and all(r <= 0 for r in right):
        return _AVG_POOL[n](x, kernel, strides)
    # Window sums over the zero-padded input divided by how many counted cells each window covers:
    # explicit pads count only with count_include_pad, the ceil-mode overhang never does.
    include_pad = node.attr("count_include_pad", 0)
    xp = F.pad(x, _torch_pad(begin, right))
    mask = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    if include_pad:
        mask = F.pad(mask, _torch_pad(begin, end), value=1.0)
        mask = F.pad(mask, _torch_pad([0] * n, [r - e for r, e in zip(right, end)]))
    else:
        mask = F.pad(mask, _torch_pad(begin, right))
    return _AVG_POOL[n](xp, kernel, strides) / _AVG_POOL[n](mask, kernel, strides)


def global_average_pool(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# -------------------------------------------------------------------------------- normalisation


def batch_norm(ctx: _Context, node: _Node, x: Tensor, scale: Tensor, bias: Tensor, mean: Tensor,
               var: Tensor) -> Any:
    eps = node.attr("epsilon", 1e-5)
    momentum = node.attr("momentum", 0.9)
    if not (ctx.training or node.attr("training_mode", 0)):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    y = F.batch_norm(x, None, None, scale, bias, True, 0.0, eps)
    # ONNX: running = running * momentum + batch * (1 - momentum), with the population variance.
    dims = [0] + list(range(2, x.dim()))
    with torch.no_grad():
        batch_mean = x.mean(dims).to(mean.dtype)
        batch_var = x.var(dims, unbiased=False).to(var.dtype)
        if ctx.training and not (mean.requires_grad or var.requires_grad):
            # Fine-tuning: the module's running statistics (buffers) follow the batches.
            mean.mul_(momentum).add_(batch_mean, alpha=1 - momentum)
            var.mul_(momentum).add_(batch_var, alpha=1 - momentum)
            new_mean, new_var = mean, var
        else:
            # A node exported with training_mode=1 in an eval-mode module: outputs only.
            new_mean = mean * momentum + batch_mean * (1 - momentum)
            new_var = var * momentum + batch_var * (1 - momentum)
    if len(node.outputs) > 1:
        return (y, new_mean, new_var)
    return y


def instance_norm(ctx: _Context, node: _Node, x: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    return F.instance_norm(x, weight=scale, bias=bias, eps=node.attr("epsilon", 1e-5))


def layer_norm(ctx: _Context, node: _Node, x: Tensor, scale: Tensor, bias: Optional[Tensor] = None) -> Any:
    axis = _norm_axis(node.attr("axis", -1), x.dim())
    dims = tuple(range(axis, x.dim()))
    mu = x.mean(dims, keepdim=True)
    inv_std = torch.rsqrt(x.var(dims, unbiased=False, keepdim=True) + node.attr("epsilon", 1e-5))
    y = (x - mu) * inv_std * scale
    if bias is not None:
        y = y + bias
    if len(node.outputs) > 1:
        return (y, mu, inv_std)
    return y


def lrn(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    # ONNX sums channels [c - floor((size-1)/2), c + ceil((size-1)/2)]; F.local_response_norm
    # centres even windows the other way, so the window sum is spelled out.
    before = (size - 1) // 2
    channels = x.shape[1]
    squares = F.pad(x * x, [0, 0] * (x.dim() - 2) + [before, size - 1 - before])
    window = reduce(torch.add, [squares[:, i:i + channels] for i in range(size)])
    return x / (bias + (alpha / size) * window) ** beta


def dropout(ctx: _Context, node: _Node, x: Tensor, ratio: Optional[Tensor] = None,
            training_mode: Optional[Tensor] = None) -> Any:
    p = node.attr("ratio", 0.5) if node.opset < 12 else _scalar(ratio, 0.5)
    # Fine-tuning trains with dropout on, as the original training did; inference is the identity.
    if ctx.training and p > 0:
        mask = (torch.rand_like(x) >= p)
        y = x * mask / (1.0 - p)
    else:
        mask = torch.ones_like(x, dtype=torch.bool)
        y = x
    if len(node.outputs) > 1 and node.outputs[1]:
        return (y, mask)
    return y


# ------------------------------------------------------------------------------- shape and data


def identity(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return x


def flatten(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    axis = _norm_axis(node.attr("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def reshape(ctx: _Context, node: _Node, x: Tensor, shape: Tensor) -> Tensor:
    target = _ints(shape)
    if not node.attr("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    try:
        return x.reshape(target)
    except RuntimeError as exc:
        raise node.fail(f"cannot reshape {list(x.shape)} to {target}; the graph may fix a batch size "
                        f"other than the input's ({exc})") from exc


def transpose(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    perm = node.attr("perm") or list(reversed(range(x.dim())))
    return x.permute(list(perm))


def concat(ctx: _Context, node: _Node, *xs: Tensor) -> Tensor:
    return torch.cat([x for x in xs if x is not None], dim=node.attr("axis"))


def split(ctx: _Context, node: _Node, x: Tensor, sizes: Optional[Tensor] = None) -> tuple[Tensor, ...]:
    axis = _norm_axis(node.attr("axis", 0), x.dim())
    parts = _ints(sizes) if node.opset >= 13 else node.attr("split")
    if parts is None and sizes is not None:
        parts = _ints(sizes)
    if not parts:
        count = node.attr("num_outputs") or len(node.outputs)
        chunk = -(-x.shape[axis] // count)
        parts = [min(chunk, x.shape[axis] - i * chunk) for i in range(count)]
    return tuple(torch.split(x, list(parts), dim=axis))


def unsqueeze(ctx: _Context, node: _Node, x: Tensor, axes: Optional[Tensor] = None) -> Tensor:
    dims = _axes_from(node, axes, 13)
    rank = x.dim() + len(dims)
    for d in sorted(_norm_axis(a, rank) for a in dims):
        x = x.unsqueeze(d)
    return x


def squeeze(ctx: _Context, node: _Node, x: Tensor, axes: Optional[Tensor] = None) -> Tensor:
    dims = _axes_from(node, axes, 13)
    if dims is None:
        return x.reshape([s for s in x.shape if s != 1])
    for d in sorted((_norm_axis(a, x.dim()) for a in dims), reverse=True):
        if x.shape[d] != 1:
            raise node.fail(f"cannot squeeze axis {d} of size {x.shape[d]} in shape {list(x.shape)}")
        x = x.squeeze(d)
    return x


def slice_(ctx: _Context, node: _Node, x: Tensor, starts: Optional[Tensor] = None, ends: Optional[Tensor] = None,
           axes: Optional[Tensor] = None, steps: Optional[Tensor] = None) -> Tensor:
    if node.opset < 10:
        start_list, end_list = node.attr("starts"), node.attr("ends")
        axis_list, step_list = node.attr("axes"), None
    else:
        start_list, end_list, axis_list, step_list = _ints(starts), _ints(ends), _ints(axes), _ints(steps)
    axis_list = axis_list or list(range(len(start_list)))
    step_list = step_list or [1] * len(start_list)
    index: list[Any] = [slice(None)] * x.dim()
    reversed_axes = []
    for start, end, axis, step in zip(start_list, end_list, axis_list, step_list):
        axis = _norm_axis(axis, x.dim())
        size = x.shape[axis]
        if step == 0:
            raise node.fail(f"step 0 on axis {axis}")
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            index[axis] = slice(min(max(start, 0), size), min(max(end, 0), size), step)
        else:
            reversed_axes.append((axis, min(max(start, 0), size - 1), min(max(end, -1), size - 1), step))
    x = x[tuple(index)]
    for axis, start, end, step in reversed_axes:  # torch slicing has no negative steps
        x = x.index_select(axis, torch.arange(start, end, step, device=x.device))
    return x


def _pad_indices(mode: str, size: int, begin: int, end: int, device: torch.device) -> Tensor:
    idx = torch.arange(-begin, size + end, device=device)
    if mode == "edge":
        return idx.clamp(0, size - 1)
    if mode == "wrap":
        return torch.remainder(idx, size)
    period = 2 * (size - 1)  # reflect: mirror without repeating the edge element
    if period == 0:
        return torch.zeros_like(idx)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= size, period - idx, idx)


def pad(ctx: _Context, node: _Node, x: Tensor, pads: Optional[Tensor] = None, value: Optional[Tensor] = None,
        axes: Optional[Tensor] = None) -> Tensor:
    mode = node.attr("mode", "constant")
    if node.opset < 11:
        pad_list, fill = list(node.attr("pads")), node.attr("value", 0.0)
    else:
        pad_list, fill = _ints(pads), _scalar(value, 0)
    axis_list = [_norm_axis(a, x.dim()) for a in (_ints(axes) or range(x.dim()))]
    k = len(axis_list)
    begin, end = [0] * x.dim(), [0] * x.dim()
    for i, axis in enumerate(axis_list):
        begin[axis], end[axis] = pad_list[i], pad_list[k + i]
    if mode == "constant":
        return F.pad(x, _torch_pad(begin, end), value=fill)
    if mode not in ("reflect", "edge", "wrap"):
        raise node.fail(f"mode {mode!r} is not one of constant, reflect, edge, wrap")
    for axis in range(x.dim()):
        if begin[axis] or end[axis]:
            x = x.index_select(axis, _pad_indices(mode, x.shape[axis], begin[axis], end[axis], x.device))
    return x


def shape(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    dims = list(x.shape)[node.attr("start", 0):node.attr("end", None)]
    return torch.tensor(dims, dtype=torch.int64, device=x.device)


def size(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def gather(ctx: _Context, node: _Node, x: Tensor, indices: Tensor) -> Tensor:
    axis = _norm_axis(node.attr("axis", 0), x.dim())
    idx = _as_index(indices, x.shape[axis])
    picked = x.index_select(axis, idx.reshape(-1))
    return picked.reshape(tuple(x.shape[:axis]) + tuple(idx.shape) + tuple(x.shape[axis + 1:]))


def gather_elements(ctx: _Context, node: _Node, x: Tensor, indices: Tensor) -> Tensor:
    axis = _norm_axis(node.attr("axis", 0), x.dim())
    return torch.gather(x, axis, _as_index(indices, x.shape[axis]))


def expand(ctx: _Context, node: _Node, x: Tensor, shape_: Tensor) -> Tensor:
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(_ints(shape_))))


def tile(ctx: _Context, node: _Node, x: Tensor, repeats: Tensor) -> Tensor:
    return x.repeat(_ints(repeats))


def cast(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    to = node.attr("to")
    if to not in _TORCH_DTYPES:
        raise node.fail(f"cast to ONNX type {TensorProto.DataType.Name(to)} is not supported")
    dtype = _TORCH_DTYPES[to]
    if dtype.is_floating_point and ctx.float_dtype == torch.float64:
        dtype = torch.float64  # keep a .double() module in float64 end to end
    return x.to(dtype)


def cast_like(ctx: _Context, node: _Node, x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


def constant_of_shape(ctx: _Context, node: _Node, shape_: Tensor) -> Tensor:
    value = node.attr("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    dtype = value.dtype
    if dtype.is_floating_point and ctx.float_dtype == torch.float64:
        dtype = torch.float64
    return torch.full(_ints(shape_), value.reshape(-1)[0].item(), dtype=dtype, device=shape_.device)


def range_(ctx: _Context, node: _Node, start: Tensor, limit: Tensor, delta: Tensor) -> Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


def _reduction(fn: Callable[[Tensor, list[int], bool], Tensor], axes_input_since: int) -> Callable[..., Tensor]:
    def handler(ctx: _Context, node: _Node, x: Tensor, axes: Optional[Tensor] = None) -> Tensor:
        dims = _axes_from(node, axes, axes_input_since)
        keepdims = bool(node.attr("keepdims", 1))
        if not dims:
            if node.attr("noop_with_empty_axes", 0):
                return x
            dims = list(range(x.dim()))
        dims = sorted(_norm_axis(d, x.dim()) for d in dims)
        return fn(x, dims, keepdims)

    return handler


def _reduce_prod(x: Tensor, dims: list[int], keep: bool) -> Tensor:
    for d in reversed(dims):
        x = x.prod(d, keepdim=keep)
    return x


_REDUCTIONS: dict[str, Callable[[Tensor, list[int], bool], Tensor]] = {
    "ReduceMean": lambda x, d, k: x.mean(d, keepdim=k),
    "ReduceSum": lambda x, d, k: x.sum(d, keepdim=k),
    "ReduceMax": lambda x, d, k: x.amax(d, keepdim=k),
    "ReduceMin": lambda x, d, k: x.amin(d, keepdim=k),
    "ReduceProd": _reduce_prod,
    "ReduceL1": lambda x, d, k: x.abs().sum(d, keepdim=k),
    "ReduceL2": lambda x, d, k: (x * x).sum(d, keepdim=k).sqrt(),
    "ReduceSumSquare": lambda x, d, k: (x * x).sum(d, keepdim=k),
    "ReduceLogSum": lambda x, d, k: x.sum(d, keepdim=k).log(),
    "ReduceLogSumExp": lambda x, d, k: torch.logsumexp(x, d, keepdim=k),
}


def _arg_reduction(largest: bool) -> Callable[..., Tensor]:
    def handler(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
        axis = _norm_axis(node.attr("axis", 0), x.dim())
        keep = bool(node.attr("keepdims", 1))
        fn = torch.argmax if largest else torch.argmin
        if node.attr("select_last_index", 0):
            return x.shape[axis] - 1 - fn(x.flip(axis), dim=axis, keepdim=keep)
        return fn(x, dim=axis, keepdim=keep)

    return handler


def topk(ctx: _Context, node: _Node, x: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    values, indices = torch.topk(x, int(_scalar(k)), dim=node.attr("axis", -1),
                                 largest=bool(node.attr("largest", 1)), sorted=bool(node.attr("sorted", 1)))
    return values, indices


def nonzero(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    return torch.nonzero(x).t()


def depth_to_space(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    b = node.attr("blocksize")
    n, c, h, w = x.shape
    if node.attr("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (b * b), h * b, w * b)


def space_to_depth(ctx: _Context, node: _Node, x: Tensor) -> Tensor:
    b = node.attr("blocksize")
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# ------------------------------------------------------------------------------------- resizing


_TRANSFORMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
               "half_pixel_symmetric")
_NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _source_coords(mode: str, out: int, size: int, scale: float) -> np.ndarray:
    """Resized-to-original coordinate of every output index (ONNX coordinate_transformation_mode)."""
    x = np.arange(out, dtype=np.float64)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out > 1 else np.zeros_like(x)
    if mode == "align_corners":
        return x * (size - 1) / (out - 1) if out > 1 else np.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adjustment = out / (size * scale)
        offset = size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    raise ValueError(mode)


def _nearest(mode: str, coords: np.ndarray, scale: float) -> np.ndarray:
    if mode == "round_prefer_floor":
        return np.ceil(coords - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(coords + 0.5)
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    if mode == "simple":  # Upsample and opset-10 Resize
        return np.ceil(coords) if scale < 1 else np.floor(coords)
    raise ValueError(mode)


def _resize_axis(x: Tensor, axis: int, out: int, scale: float, mode: str, transform: str,
                 nearest_mode: str) -> Tensor:
    size = x.shape[axis]
    coords = _source_coords(transform, out, size, scale)
    if mode == "nearest":
        idx = np.clip(_nearest(nearest_mode, coords, scale), 0, size - 1).astype(np.int64)
        return x.index_select(axis, torch.from_numpy(idx).to(x.device))
    coords = np.clip(coords, 0, size - 1)
    low = np.floor(coords).astype(np.int64)
    high = np.minimum(low + 1, size - 1)
    shape = [1] * x.dim()
    shape[axis] = out
    weight = torch.from_numpy(coords - low).to(device=x.device, dtype=x.dtype).reshape(shape)
    x_low = x.index_select(axis, torch.from_numpy(low).to(x.device))
    x_high = x.index_select(axis, torch.from_numpy(high).to(x.device))
    return x_low + (x_high - x_low) * weight


def resize(ctx: _Context, node: _Node, x: Tensor, roi: Optional[Tensor] = None, scales: Optional[Tensor] = None,
           sizes: Optional[Tensor] = None) -> Tensor:
    if node.op_type == "Upsample" or node.opset < 11:
        # Upsample(X, scales) and opset-10 Resize(X, scales): asymmetric coordinates.
        scales, sizes, transform, nearest_mode = roi, None, "asymmetric", "simple"
    else:
        transform = node.attr("coordinate_transformation_mode", "half_pixel")
        nearest_mode = node.attr("nearest_mode", "round_prefer_floor")
    mode = node.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "bilinear"):
        raise node.fail(f"mode {mode!r} is not supported (nearest and linear are); re-export with one of them")
    if transform not in _TRANSFORMS:
        raise node.fail(f"coordinate_transformation_mode {transform!r} is not supported; "
                        f"supported: {', '.join(_TRANSFORMS)}")
    if nearest_mode not in _NEAREST_MODES:
        raise node.fail(f"nearest_mode {nearest_mode!r} is not one of {', '.join(_NEAREST_MODES[:4])}")
    if node.attr("antialias", 0):
        raise node.fail("antialias=1 is not supported")
    if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise node.fail(f"keep_aspect_ratio_policy {node.attr('keep_aspect_ratio_policy')!r} is not supported")
    axes = [_norm_axis(a, x.dim()) for a in (node.attr("axes") or range(x.dim()))]
    if sizes is not None and sizes.numel() > 0:
        outs = _ints(sizes)
        factors = [o / x.shape[a] for o, a in zip(outs, axes)]
    elif scales is not None and scales.numel() > 0:
        factors = _floats(scales)
        outs = [int(math.floor(x.shape[a] * f)) for a, f in zip(axes, factors)]
    else:
        raise node.fail("neither scales nor sizes is given")
    for axis, out, factor in zip(axes, outs, factors):
        if out != x.shape[axis] or factor != 1.0:
            x = _resize_axis(x, axis, out, factor, "nearest" if mode == "nearest" else "linear",
                             transform, nearest_mode)
    return x


# ------------------------------------------------------------------------------------ the table


OPS: dict[str, Callable[..., Any]] = {
    # convolution and dense
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Einsum": einsum,
    # elementwise arithmetic and logic
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": div,
    "Pow": pow_,
    "Mod": mod,
    "Sum": _variadic(torch.add),
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Mean": mean,
    "Equal": _binary(torch.eq),
    "Greater": _binary(torch.gt),
    "Less": _binary(torch.lt),
    "GreaterOrEqual": _binary(torch.ge),
    "LessOrEqual": _binary(torch.le),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Not": _unary(torch.logical_not),
    "Where": where,
    "Sqrt": _unary(torch.sqrt),
    "Exp": _unary(torch.exp),
    "Log": _unary(torch.log),
    "Neg": _unary(torch.neg),
    "Abs": _unary(torch.abs),
    "Reciprocal": _unary(torch.reciprocal),
    "Floor": _unary(torch.floor),
    "Ceil": _unary(torch.ceil),
    "Round": _unary(torch.round),  # both round half to even
    "Sign": _unary(torch.sign),
    "Erf": _unary(torch.erf),
    "Sin": _unary(torch.sin),
    "Cos": _unary(torch.cos),
    "IsNaN": _unary(torch.isnan),
    "IsInf": _unary(torch.isinf),
    # activations
    "Relu": _unary(torch.relu),
    "Sigmoid": _unary(torch.sigmoid),
    "Tanh": _unary(torch.tanh),
    "Clip": clip,
    "LeakyRelu": leaky_relu,
    "HardSigmoid": hard_sigmoid,
    "HardSwish": hard_swish,
    "Elu": elu,
    "Selu": selu,
    "Celu": celu,
    "ThresholdedRelu": thresholded_relu,
    "Gelu": gelu,
    "PRelu": prelu,
    "Softplus": softplus,
    "Softsign": softsign,
    "Mish": mish,
    "Softmax": _softmax_like(lambda x, axis: torch.softmax(x, axis)),
    "LogSoftmax": _softmax_like(lambda x, axis: torch.log_softmax(x, axis)),
    "Hardmax": _softmax_like(_hardmax),
    # pooling and normalisation
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "GlobalMaxPool": global_max_pool,
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "LayerNormalization": layer_norm,
    "LRN": lrn,
    "Dropout": dropout,
    # shapes and data movement
    "Identity": identity,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Concat": concat,
    "Split": split,
    "Unsqueeze": unsqueeze,
    "Squeeze": squeeze,
    "Slice": slice_,
    "Pad": pad,
    "Shape": shape,
    "Size": size,
    "Gather": gather,
    "GatherElements": gather_elements,
    "Expand": expand,
    "Tile": tile,
    "Cast": cast,
    "CastLike": cast_like,
    "ConstantOfShape": constant_of_shape,
    "Range": range_,
    "ArgMax": _arg_reduction(largest=True),
    "ArgMin": _arg_reduction(largest=False),
    "TopK": topk,
    "NonZero": nonzero,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
    "Resize": resize,
    "Upsample": resize,
}
# ReduceSum took its axes as an input from opset 13, the other reductions from opset 18.
OPS.update({name: _reduction(fn, 13 if name == "ReduceSum" else 18) for name, fn in _REDUCTIONS.items()})


# ----------------------------------------------------------------------------------- the module


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise EngineInputError("the model imports no default-domain (ai.onnx) opset; it is not a valid ONNX model")


def _attribute(attr: onnx.AttributeProto) -> Any:
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, TensorProto):
        return _tensor_from_proto(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value


def _tensor_from_proto(proto: TensorProto) -> Tensor:
    if proto.data_type not in _TORCH_DTYPES or proto.data_type == TensorProto.BFLOAT16:
        raise EngineInputError(f"tensor {proto.name!r} has ONNX type "
                               f"{TensorProto.DataType.Name(proto.data_type)}, which the interpreter cannot hold")
    array = numpy_helper.to_array(proto)
    if array.dtype in (np.uint16, np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(np.array(array, copy=True)).to(_TORCH_DTYPES[proto.data_type])


def _constant_value(node: onnx.NodeProto) -> Tensor:
    for attr in node.attribute:
        value = _attribute(attr)
        if attr.name == "value":
            return value
        if attr.name == "value_float":
            return torch.tensor(value, dtype=torch.float32)
        if attr.name == "value_floats":
            return torch.tensor(list(value), dtype=torch.float32)
        if attr.name == "value_int":
            return torch.tensor(value, dtype=torch.int64)
        if attr.name == "value_ints":
            return torch.tensor(list(value), dtype=torch.int64)
    names = [a.name for a in node.attribute]
    raise EngineInputError(f"node {node.name!r} (Constant): attribute {names} is not supported; "
                           f"use value, value_float(s) or value_int(s)")


class _Store(nn.Module):
    """Holds buffers under sanitized names (a bare nn.Module, so `.to()`/`.double()` reach them)."""


_KEY_PATTERN = re.compile(r"[^0-9A-Za-z_]")


def _unique_key(name: str, holder: nn.Module, used: set[str]) -> str:
    key = _KEY_PATTERN.sub("_", name) or "_"
    if key[0].isdigit():
        key = "_" + key
    candidate, n = key, 1
    while candidate in used or hasattr(holder, candidate):
        candidate, n = f"{key}_{n}", n + 1
    used.add(candidate)
    return candidate


def _toposort(nodes: list[_Node], available: set[str]) -> list[_Node]:
    """Nodes in an order where every input exists before use; keeps file order when already valid."""
    ordered: list[_Node] = []
    ready = set(available) | {""}
    pending = list(nodes)
    while pending:
        remaining = []
        for node in pending:
            if all(name in ready for name in node.inputs):
                ordered.append(node)
                ready.update(node.outputs)
            else:
                remaining.append(node)
        if len(remaining) == len(pending):
            node = remaining[0]
            missing = [name for name in node.inputs if name not in ready]
            raise EngineInputError(f"node {node.name!r} ({node.op_type}) reads {missing}, which no graph input, "
                                   f"initializer or node produces (or the graph has a cycle)")
        pending = remaining
    return ordered


class OnnxModule(nn.Module):
    """An ONNX graph as a trainable torch module.

    Parameters: `self.params` (nn.ParameterDict) holds every float initializer except BatchNormalization
    running statistics; `param_keys` maps each ONNX initializer name to its key there. Running
    statistics and non-float initializers are buffers in `self.state` (`state_keys`); Constant node
    values are non-persistent buffers in `self.constants`.

    `forward(*inputs, **named_inputs)` takes the graph inputs by position (graph order) or by name and
    returns one tensor, or a tuple when the graph has several outputs. In `train()` mode
    BatchNormalization uses batch statistics and updates its running statistics with the node's
    momentum, and Dropout drops.
    """

    def __init__(self, model: onnx.ModelProto):
        super().__init__()
        graph = model.graph
        self.opset = _default_opset(model)
        initializer_names = {init.name for init in graph.initializer}
        self.input_names = [vi.name for vi in graph.input if vi.name not in initializer_names]
        self.output_names = [vi.name for vi in graph.output]
        self._float_inputs = {vi.name for vi in graph.input
                              if vi.type.tensor_type.elem_type in _FLOAT_TYPES}
        # Running statistics are updated by BN itself, never by the optimizer.
        running_stats = {name for node in graph.node if node.op_type == "BatchNormalization"
                         for name in node.input[3:5]}

        self.params = nn.ParameterDict()
        self.state = _Store()
        self.constants = _Store()
        self.param_keys: dict[str, str] = {}
        self.state_keys: dict[str, str] = {}
        self.constant_keys: dict[str, str] = {}
        used: set[str] = set()
        for init in graph.initializer:
            tensor = _tensor_from_proto(init)
            if init.data_type in _FLOAT_TYPES and init.name not in running_stats:
                key = _unique_key(init.name, self.params, used)
                self.params[key] = nn.Parameter(tensor)
                self.param_keys[init.name] = key
            else:
                key = _unique_key(init.name, self.state, used)
                self.state.register_buffer(key, tensor)
                self.state_keys[init.name] = key

        # The largest float initializer tells the module's working float type after .double() and
        # friends, even when a few small tensors of the graph have another type.
        floats = [init for init in graph.initializer if init.data_type in _FLOAT_TYPES]
        largest = max(floats, key=lambda init: math.prod(init.dims), default=None)
        self._dtype_reference: Optional[str] = largest.name if largest is not None else None

        nodes: list[_Node] = []
        unsupported: list[str] = []
        for index, proto in enumerate(graph.node):
            name = proto.name or f"{proto.op_type}_{index}"
            if proto.op_type == "Constant" and proto.domain in ("", "ai.onnx"):
                key = _unique_key(proto.output[0], self.constants, used)
                self.constants.register_buffer(key, _constant_value(proto), persistent=False)
                self.constant_keys[proto.output[0]] = key
                continue
            if proto.domain not in ("", "ai.onnx") or proto.op_type not in OPS:
                domain = proto.domain or "ai.onnx"
                unsupported.append(f"{proto.op_type} (domain {domain}) at node {name!r}")
                continue
            attrs = {attr.name: _attribute(attr) for attr in proto.attribute}
            nodes.append(_Node(name, proto.op_type, list(proto.input), list(proto.output), attrs, self.opset))
        if unsupported:
            shown = "; ".join(unsupported[:5]) + (f"; and {len(unsupported) - 5} more" if len(unsupported) > 5 else "")
            raise EngineInputError(f"the interpreter does not support op {shown}. Re-export the model without "
                                   f"these ops (e.g. with constant folding) or ask for them to be added")

        available = set(self.input_names) | initializer_names | set(self.constant_keys)
        self._nodes = _toposort(nodes, available)
        # Free each intermediate after its last reader so inference of big nets stays small.
        last_use: dict[str, int] = {}
        for position, node in enumerate(self._nodes):
            for name in node.inputs:
                last_use[name] = position
        keep = set(self.output_names) | set(self.param_keys) | set(self.state_keys) | set(self.constant_keys)
        self._release: list[list[str]] = [[] for _ in self._nodes]
        for name, position in last_use.items():
            if name and name not in keep:
                self._release[position].append(name)

    def parameter(self, onnx_name: str) -> nn.Parameter:
        """The parameter that holds the float initializer `onnx_name`."""
        if onnx_name not in self.param_keys:
            raise KeyError(f"{onnx_name!r} is not a trainable initializer of this graph")
        return self.params[self.param_keys[onnx_name]]

    def initializer_tensors(self) -> dict[str, Tensor]:
        """ONNX initializer name -> the module's current tensor (parameter or buffer)."""
        tensors: dict[str, Tensor] = {name: self.params[key] for name, key in self.param_keys.items()}
        tensors.update({name: getattr(self.state, key) for name, key in self.state_keys.items()})
        return tensors

    def _float_dtype(self) -> Optional[torch.dtype]:
        """The float type the module was cast to (.double(), .half()); None when it holds no float tensor."""
        if self._dtype_reference is None:
            return None
        return self.initializer_tensors()[self._dtype_reference].dtype

    def _bind_inputs(self, args: tuple, kwargs: dict, float_dtype: Optional[torch.dtype]) -> dict[str, Tensor]:
        if len(args) > len(self.input_names):
            raise EngineInputError(f"the graph takes {len(self.input_names)} input(s) {self.input_names}, "
                                   f"got {len(args)} positional")
        bound = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self.input_names:
                raise EngineInputError(f"unknown graph input {name!r}; the inputs are {self.input_names}")
            if name in bound:
                raise EngineInputError(f"graph input {name!r} given both by position and by name")
            bound[name] = value
        missing = [name for name in self.input_names if name not in bound]
        if missing:
            raise EngineInputError(f"graph input(s) {missing} not given; the inputs are {self.input_names}")
        held = list(self.params.values()) + list(self.state.buffers()) + list(self.constants.buffers())
        device = held[0].device if held else None
        env = {}
        for name, value in bound.items():
            tensor = torch.as_tensor(value, device=device)
            if (float_dtype is not None and name in self._float_inputs and tensor.is_floating_point()
                    and tensor.dtype != float_dtype):
                tensor = tensor.to(float_dtype)
            env[name] = tensor
        return env

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        float_dtype = self._float_dtype()
        ctx = _Context(training=self.training, float_dtype=float_dtype)
        env: dict[str, Tensor] = self._bind_inputs(args, kwargs, float_dtype)
        env.update(self.initializer_tensors())
        env.update({name: getattr(self.constants, key) for name, key in self.constant_keys.items()})
        for node, release in zip(self._nodes, self._release):
            inputs = [env[name] if name else None for name in node.inputs]
            while inputs and inputs[-1] is None:
                inputs.pop()
            try:
                result = OPS[node.op_type](ctx, node, *inputs)
            except EngineInputError:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                if "out of memory" in str(exc):  # a resource failure, worth retrying elsewhere
                    raise
                shapes = [list(t.shape) if t is not None else None for t in inputs]
                raise node.fail(f"failed on inputs of shapes {shapes}: {exc}") from exc
            if isinstance(result, (tuple, list)):
                for name, value in zip(node.outputs, result):
                    if name:
                        env[name] = value
            else:
                env[node.outputs[0]] = result
            for name in release:
                env.pop(name, None)
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose float initializers and BN statistics carry `module`'s current values.

    Each initializer keeps its ONNX element type; non-float initializers are copied unchanged.
    """
    result = onnx.ModelProto()
    result.CopyFrom(model)
    tensors = module.initializer_tensors()
    for init in result.graph.initializer:
        tensor = tensors.get(init.name)
        if tensor is None or init.data_type not in _FLOAT_TYPES:
            continue
        if tuple(tensor.shape) != tuple(init.dims):
            raise EngineInputError(f"initializer {init.name!r}: module holds shape {list(tensor.shape)}, the "
                                   f"model {list(init.dims)}; write back into the model the module was built from")
        array = tensor.detach().cpu().numpy().astype(_NP_DTYPES[init.data_type])
        init.CopyFrom(numpy_helper.from_array(array, init.name))
    return result
