"""Loading and inspecting ONNX models: validation, shapes at a chosen input size, compressible layers.

Everything here reads protos and returns new data; nothing mutates the model it is given.
"""
from __future__ import annotations

import mmap
import os
import warnings
from dataclasses import dataclass, field
from typing import Optional, Sequence

import onnx
from onnx import TensorProto, helper, shape_inference

from .errors import EngineInputError

MIN_OPSET = 11
MAX_OPSET = 21
DEFAULT_IMAGE_SIZE = 224

# Weight dtypes the decompositions handle (torch SVD has no CPU half-precision kernels).
FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE}
ALL_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}

# Initializers smaller than this stay in the copy used for shape inference: shape tensors of
# Reshape/Slice/... must be present as values so that data propagation can fold them.
_SMALL_INITIALIZER = 4096

Shape = tuple  # of int, or None for an unknown dim


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file and refuse what the engine cannot work on, with a message that says why."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EngineInputError(f"model file {path!r} does not exist: give the path of an .onnx file")
    try:
        with warnings.catch_warnings():
            # onnx reports some undecodable bytes only as a RuntimeWarning: refuse those files too.
            warnings.simplefilter("error", RuntimeWarning)
            model = _parse_mapped(path)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ... depending on the bytes
        raise EngineInputError(
            f"{os.path.basename(path)!r} is not an ONNX model (protobuf parse failed: {exc}); "
            "export the network with torch.onnx.export or tf2onnx") from exc
    check_model_supported(model, os.path.basename(path))
    return model


def _parse_mapped(path: str) -> onnx.ModelProto:
    """The model parsed straight from a read-only mapping of the file (external data is not loaded): half
    the time of reading the bytes first (VGG-16's 553 MB: 1.9 vs 3.9 s), since the read's copy goes."""
    model = onnx.ModelProto()
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            return model                                 # nothing to map; refused below as empty
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            model.ParseFromString(view)
    return model


def check_model_supported(model: onnx.ModelProto, label: str = "model") -> None:
    """Structural checks shared by load_model and callers that already hold a proto."""
    graph = model.graph
    if len(graph.node) == 0:
        raise EngineInputError(f"{label!r} has no graph nodes: it is empty or not an ONNX model")
    external = [t.name for t in graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        raise EngineInputError(
            f"{label!r} stores initializer {external[0]!r} (and {len(external) - 1} more) in external "
            "data files; re-save it as one file (onnx.save with save_as_external_data=False)")
    if not real_inputs(model):
        raise EngineInputError(f"{label!r} has no graph inputs that are not initializers: nothing to feed")
    opset = default_opset(model)
    if opset is None:
        raise EngineInputError(f"{label!r} imports no default-domain (ai.onnx) opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise EngineInputError(
            f"{label!r} uses opset {opset}; supported opsets are {MIN_OPSET}-{MAX_OPSET}: "
            "re-export with e.g. opset_version=13")


def default_opset(model: onnx.ModelProto) -> Optional[int]:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are fed at run time (old IR versions also list initializers as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def node_labels(model: onnx.ModelProto) -> list[str]:
    """A unique, stable label per node: its name, or `<op>_<index>` when unnamed or duplicated.

    Plans refer to layers by these labels, so surgery finds the same node again.
    """
    names = [n.name for n in model.graph.node]
    counts: dict[str, int] = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    labels = []
    for index, node in enumerate(model.graph.node):
        if node.name and counts[node.name] == 1:
            labels.append(node.name)
        else:
            labels.append(f"{node.op_type}_{index}")
    return labels


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'1,3,224,224' → (1, 3, 224, 224)."""
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise EngineInputError(f"--input-shape {text!r} is not a comma-separated list of integers, e.g. 1,3,224,224")
    if not dims or any(d <= 0 for d in dims):
        raise EngineInputError(f"input shape {text!r} must have positive dims, e.g. 1,3,224,224")
    return dims


def _declared_dims(value: onnx.ValueInfoProto) -> list[Optional[int]]:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim]


def resolve_input_shapes(model: onnx.ModelProto, input_shape: Optional[Sequence[int]] = None
                         ) -> dict[str, tuple[int, ...]]:
    """Fixed dims for every real input.

    `input_shape` replaces the first input's dims (the image); otherwise dynamic dims become batch 1
    and DEFAULT_IMAGE_SIZE for spatial dims. A dynamic dim that is neither is an error naming it.
    """
    resolved: dict[str, tuple[int, ...]] = {}
    for position, value in enumerate(real_inputs(model)):
        declared = _declared_dims(value)
        if position == 0 and input_shape is not None:
            given = tuple(int(d) for d in input_shape)
            if declared and len(declared) != len(given):
                raise EngineInputError(
                    f"input shape {list(given)} has {len(given)} dims but model input {value.name!r} has "
                    f"{len(declared)}; pass --input-shape with {len(declared)} dims")
            if len(declared) >= 2 and declared[1] is not None and declared[1] != given[1]:
                raise EngineInputError(
                    f"input shape {list(given)} gives {given[1]} channels but model input {value.name!r} "
                    f"declares {declared[1]}; fix the channel count")
            if any(d <= 0 for d in given):
                raise EngineInputError(f"input shape {list(given)} must have positive dims")
            resolved[value.name] = given
            continue
        if not declared:
            raise EngineInputError(
                f"model input {value.name!r} declares no shape; pass --input-shape N,C,H,W")
        dims = []
        for axis, dim in enumerate(declared):
            if dim is not None:
                dims.append(dim)
            elif axis == 0:
                dims.append(1)
            elif len(declared) == 4 and axis >= 2:
                dims.append(DEFAULT_IMAGE_SIZE)
            else:
                raise EngineInputError(
                    f"model input {value.name!r} has a dynamic dim at axis {axis}; pass --input-shape "
                    "with every dim")
        resolved[value.name] = tuple(dims)
    return resolved


def _shape_inference_copy(model: onnx.ModelProto, fixed: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A light copy for shape inference: big float initializers become typed graph inputs.

    Copying VGG-16's 500 MB of weights only to read their shapes would dominate the run time.
    """
    graph = model.graph
    inputs = []
    for value in graph.input:
        if value.name in fixed:
            elem = value.type.tensor_type.elem_type or TensorProto.FLOAT
            inputs.append(helper.make_tensor_value_info(value.name, elem, list(fixed[value.name])))
    kept_initializers = []
    for tensor in graph.initializer:
        numel = 1
        for d in tensor.dims:
            numel *= d
        if numel <= _SMALL_INITIALIZER or tensor.data_type not in ALL_FLOAT_TYPES:
            kept_initializers.append(tensor)
        else:
            inputs.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    light_graph = helper.make_graph(
        nodes=list(graph.node), name=graph.name or "graph", inputs=inputs,
        # Declared output shapes are dropped: they hold for the export size, not a chosen one.
        outputs=[helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type or TensorProto.FLOAT, None)
                 for o in graph.output],
        initializer=kept_initializers)
    light = helper.make_model(light_graph, opset_imports=list(model.opset_import))
    light.ir_version = max(model.ir_version, 4)
    for function in model.functions:
        light.functions.append(function)
    return light


def infer_shapes(model: onnx.ModelProto, input_shape: Optional[Sequence[int]] = None
                 ) -> dict[str, Shape]:
    """Shapes of every tensor (inputs, initializers, node outputs) with the inputs' dims fixed.

    Unknown dims are None. A model whose shapes cannot be inferred is an input error.
    """
    fixed = resolve_input_shapes(model, input_shape)
    light = _shape_inference_copy(model, fixed)
    try:
        inferred = shape_inference.infer_shapes(light, check_type=False, strict_mode=True, data_prop=True)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EngineInputError(
            f"shape inference failed at input shape {list(fixed.values())}: {first_line}; check "
            "--input-shape (the network may need a larger image)") from exc
    producers = {out: node for node in model.graph.node for out in node.output}
    shapes: dict[str, Shape] = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(d.HasField("dim_value") and d.dim_value < 1 for d in dims):
            node = producers.get(value.name)
            where = f" (output of node {node.name!r}, {node.op_type})" if node is not None else ""
            raise EngineInputError(
                f"tensor {value.name!r}{where} would have shape {[d.dim_value for d in dims]} at input shape "
                f"{[list(v) for v in fixed.values()]}: the image is too small for this network; pass a larger --input-shape")
        dims = _declared_dims(value)
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(dims)
    for tensor in model.graph.initializer:
        shapes[tensor.name] = tuple(int(d) for d in tensor.dims)
    for name, dims in fixed.items():
        shapes[name] = dims
    return shapes


@dataclass
class Layer:
    """A Conv/ConvTranspose/Gemm/MatMul node and whether it can be decomposed (reason if not)."""
    name: str
    op: str
    node_index: int
    weight: Optional[str]
    bias: Optional[str]
    weight_shape: Optional[tuple[int, ...]]
    input_shape: Optional[Shape]
    output_shape: Optional[Shape]
    eligible: bool
    reason: Optional[str] = None
    strides: list[int] = field(default_factory=list)
    pads: list[int] = field(default_factory=list)
    dilations: list[int] = field(default_factory=list)
    group: int = 1
    auto_pad: str = "NOTSET"
    trans_a: int = 0
    trans_b: int = 0
    alpha: float = 1.0
    beta: float = 1.0

    @property
    def is_pointwise(self) -> bool:
        return self.op == "Conv" and self.weight_shape is not None and tuple(self.weight_shape[2:]) == (1, 1)

    @property
    def matrix_shape(self) -> Optional[tuple[int, int]]:
        """(out, in) of the weight seen as a matrix, for Gemm/MatMul/1×1 Conv."""
        if self.weight_shape is None:
            return None
        if self.op == "Conv":
            return (self.weight_shape[0], self.weight_shape[1])
        if self.op == "Gemm":
            rows, cols = self.weight_shape
            return (rows, cols) if self.trans_b else (cols, rows)
        if self.op == "MatMul":
            return (self.weight_shape[1], self.weight_shape[0])
        return None


def constant_tensors(model: onnx.ModelProto) -> dict[str, TensorProto]:
    """Tensors whose value is fixed: initializers, Constant node values, and Identity chains of them.

    torch.onnx.export deduplicates equal initializers behind Identity nodes (zero biases of a
    randomly initialised net, for instance), so a weight input is not always an initializer itself.
    """
    constants: dict[str, TensorProto] = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:  # nodes are topologically sorted: sources come first
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
                    constants[node.output[0]] = attribute.t
        elif node.op_type == "Identity" and node.domain in ("", "ai.onnx") and node.input[0] in constants:
            constants[node.output[0]] = constants[node.input[0]]
    return constants


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def find_layers(model: onnx.ModelProto, input_shape: Optional[Sequence[int]] = None,
                shapes: Optional[dict[str, Shape]] = None) -> list[Layer]:
    """Every Conv/ConvTranspose/Gemm/MatMul node, eligible for decomposition or kept with a reason."""
    if shapes is None:
        shapes = infer_shapes(model, input_shape)
    initializers = constant_tensors(model)
    labels = node_labels(model)
    layers = []
    for index, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        layer = _describe(node, index, labels[index], initializers, shapes)
        layers.append(layer)
    return layers


def _describe(node, index, label, initializers, shapes) -> Layer:
    attrs = _attributes(node)
    op = node.op_type
    inputs = list(node.input)
    data_name = inputs[0] if inputs else ""
    weight_name = inputs[1] if len(inputs) > 1 else ""
    bias_name = inputs[2] if len(inputs) > 2 and inputs[2] else None
    weight_tensor = initializers.get(weight_name)
    layer = Layer(
        name=label, op=op, node_index=index,
        weight=weight_name if weight_tensor is not None else None,
        bias=bias_name,
        weight_shape=tuple(int(d) for d in weight_tensor.dims) if weight_tensor is not None else None,
        input_shape=shapes.get(data_name), output_shape=shapes.get(node.output[0]),
        eligible=False,
        strides=list(attrs.get("strides", [])), pads=list(attrs.get("pads", [])),
        dilations=list(attrs.get("dilations", [])), group=int(attrs.get("group", 1)),
        auto_pad=_text(attrs.get("auto_pad", "NOTSET")),
        trans_a=int(attrs.get("transA", 0)), trans_b=int(attrs.get("transB", 0)),
        alpha=float(attrs.get("alpha", 1.0)), beta=float(attrs.get("beta", 1.0)))
    layer.reason = _ineligibility(node, layer, weight_tensor, initializers, data_name)
    layer.eligible = layer.reason is None
    return layer


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ineligibility(node, layer: Layer, weight_tensor, initializers, data_name) -> Optional[str]:
    op = layer.op
    if op == "ConvTranspose":
        return "ConvTranspose is not decomposed (only Conv, Gemm and MatMul are)"
    if op == "MatMul" and weight_tensor is None:
        if data_name in initializers:
            return "MatMul's constant operand is its first input (W·x); only x·W is decomposed"
        return "MatMul with both inputs computed at run time has no weight to decompose"
    if weight_tensor is None:
        return f"weight {node.input[1]!r} is computed at run time, not a constant initializer"
    if weight_tensor.data_type not in FLOAT_TYPES:
        type_name = TensorProto.DataType.Name(weight_tensor.data_type)
        return f"weight dtype {type_name} is not decomposed (float32/float64 only)"
    if op == "Conv":
        if len(layer.weight_shape) != 4:
            return f"{len(layer.weight_shape) - 2}-D convolution (only 2-D convs are decomposed)"
        if layer.group != 1:
            in_per_group = layer.weight_shape[1]
            if in_per_group == 1 and layer.group == layer.weight_shape[0]:
                return f"depthwise conv (group={layer.group}): already one filter per channel"
            return f"grouped conv (group={layer.group}) is not decomposed"
        if layer.bias is not None and layer.bias not in initializers:
            return f"bias {layer.bias!r} is computed at run time, not a constant initializer"
        return None
    if op == "Gemm":
        if layer.trans_a:
            return "Gemm with transA=1 is not decomposed"
        if len(layer.weight_shape) != 2:
            return f"Gemm weight has shape {list(layer.weight_shape)}, expected 2-D"
        if layer.bias is not None and layer.bias not in initializers:
            return f"Gemm bias C {layer.bias!r} is computed at run time, not a constant initializer"
        return None
    if op == "MatMul":
        if len(layer.weight_shape) != 2:
            return f"MatMul weight has shape {list(layer.weight_shape)}; only 2-D weights are decomposed"
        return None
    return f"op {op} is not decomposed"


def read_only_tensor(array: "np.ndarray") -> "torch.Tensor":
    """A torch view of a weight array read from protobuf bytes, without copying it.

    Such arrays are read-only; torch warns that writing through the tensor would be undefined. Nothing in
    the decompositions writes to its input, and copying VGG-16's weights costs a second and 2 GB.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def check_structure(model: onnx.ModelProto) -> None:
    """onnx.checker (full check, with shape inference) on the graph without its weight bytes.

    The initializers become typed graph inputs, so structure, types and shapes are checked while the
    weights are not serialised again (seconds on VGG-16, and the checker's 2 GB protobuf limit). The
    rewritten weights are written by numpy_helper.from_array, consistent by construction.
    """
    graph = model.graph
    declared = {value.name for value in graph.input}
    inputs = list(graph.input) + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                  for t in graph.initializer if t.name not in declared]
    light = helper.make_graph(list(graph.node), graph.name, inputs, list(graph.output),
                              value_info=list(graph.value_info))
    light_model = helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    light_model.functions.extend(model.functions)
    onnx.checker.check_model(light_model, full_check=True)
