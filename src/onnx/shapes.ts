// Static shape inference over a model's skeleton, for the upload check: from the declared input shapes
// (a symbolic batch dimension taken as 1) through the ops the engine runs, following the ONNX operator
// specifications. Values of small integer tensors (Reshape targets, Pad amounts, axes) are tracked where
// they are constants or computed from shapes (Shape → Gather → Concat), as exporters write them. An op
// whose output cannot be known statically (data-dependent, an unknown operand) leaves its outputs unknown
// and inference continues elsewhere; nothing is allocated, whatever the file declares.
import type { AttributeValue, OnnxModel, OnnxNode } from './reader.js';

/** What inference knows about a tensor: its dims and, for small integer tensors, its values. */
export interface KnownTensor {
  dims: number[];
  values?: number[];
}

/** Called for every tensor whose shape becomes known; throwing stops the inference (a refusal). */
export type ShapeVisitor = (name: string, tensor: KnownTensor, producer: OnnxNode | null) => void;

/** The node and why its output is impossible (e.g. a kernel larger than its padded input). */
export class ShapeError extends Error {
  override readonly name = 'ShapeError';
  constructor(
    readonly node: OnnxNode,
    readonly detail: string,
  ) {
    super(detail);
  }
}

const MAX_TRACKED_VALUES = 64;
const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

function attr(node: OnnxNode, name: string): AttributeValue | undefined {
  return node.attributes.get(name);
}
const intAttr = (node: OnnxNode, name: string, fallback: number): number => attr(node, name)?.i ?? fallback;
const intsAttr = (node: OnnxNode, name: string): number[] | undefined => attr(node, name)?.ints;

function normAxis(axis: number, rank: number, node: OnnxNode): number {
  const a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= rank) throw new ShapeError(node, `axis ${axis} is out of range for a rank-${rank} input`);
  return a;
}

function broadcast(shapes: number[][], node: OnnxNode): number[] {
  const rank = Math.max(...shapes.map((s) => s.length));
  const out: number[] = [];
  for (let i = 0; i < rank; i++) {
    let dim = 1;
    for (const s of shapes) {
      const d = s[s.length - rank + i] ?? 1;
      if (d === 1) continue;
      if (dim !== 1 && d !== dim) throw new ShapeError(node, `inputs of shapes ${shapes.map((x) => `[${x.join(', ')}]`).join(' and ')} do not broadcast`);
      dim = d;
    }
    out.push(dim);
  }
  return out;
}

/** Spatial output sizes of Conv and the pools (ONNX Conv/MaxPool: pads, strides, dilations, auto_pad, ceil_mode). */
function windowed(node: OnnxNode, input: number[], kernel: number[], ceil: boolean): number[] {
  const n = kernel.length;
  const strides = intsAttr(node, 'strides') ?? Array(n).fill(1);
  const dilations = intsAttr(node, 'dilations') ?? Array(n).fill(1);
  const pads = intsAttr(node, 'pads') ?? Array(2 * n).fill(0);
  const autoPad = attr(node, 'auto_pad')?.s ?? 'NOTSET';
  const spatial = input.slice(2);
  if (spatial.length !== n) throw new ShapeError(node, `a rank-${input.length} input does not match a ${n}-D kernel`);
  return spatial.map((size, i) => {
    const stride = strides[i] ?? 1;
    const extent = ((kernel[i] ?? 1) - 1) * (dilations[i] ?? 1) + 1;
    if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') return Math.ceil(size / stride);
    const padded = autoPad === 'VALID' ? size : size + (pads[i] ?? 0) + (pads[i + n] ?? 0);
    const span = (padded - extent) / stride;
    const out = (ceil ? Math.ceil(span) : Math.floor(span)) + 1;
    if (out < 0 || padded < extent) {
      throw new ShapeError(node, `its ${kernel[i]}-wide window (dilated to ${extent}) does not fit dimension ${i + 2} of its input, ${size} wide (${padded} padded)`);
    }
    return out;
  });
}

function convTransposeSpatial(node: OnnxNode, input: number[], kernel: number[]): number[] {
  const n = kernel.length;
  const explicit = intsAttr(node, 'output_shape');
  if (explicit && explicit.length === n) return explicit;
  const strides = intsAttr(node, 'strides') ?? Array(n).fill(1);
  const dilations = intsAttr(node, 'dilations') ?? Array(n).fill(1);
  const outputPadding = intsAttr(node, 'output_padding') ?? Array(n).fill(0);
  const pads = intsAttr(node, 'pads') ?? Array(2 * n).fill(0);
  const autoPad = attr(node, 'auto_pad')?.s ?? 'NOTSET';
  return input.slice(2).map((size, i) => {
    const stride = strides[i] ?? 1;
    if (autoPad === 'SAME_UPPER' || autoPad === 'SAME_LOWER') return size * stride;
    const full = stride * (size - 1) + (outputPadding[i] ?? 0) + ((kernel[i] ?? 1) - 1) * (dilations[i] ?? 1) + 1;
    return autoPad === 'VALID' ? full : full - (pads[i] ?? 0) - (pads[i + n] ?? 0);
  });
}

function matmulShape(a: number[], b: number[], node: OnnxNode): number[] {
  const a2 = a.length === 1 ? [1, a[0]!] : a;
  const b2 = b.length === 1 ? [b[0]!, 1] : b;
  const k = a2[a2.length - 1]!;
  if (b2[b2.length - 2] !== k) throw new ShapeError(node, `inner dimensions differ: [${a.join(', ')}] × [${b.join(', ')}]`);
  const batch = broadcast([a2.slice(0, -2), b2.slice(0, -2)], node);
  const out = [...batch, a2[a2.length - 2]!, b2[b2.length - 1]!];
  if (a.length === 1) out.splice(out.length - 2, 1);
  if (b.length === 1) out.pop();
  return out;
}

function reshapeTarget(input: number[], target: number[], allowZero: boolean, node: OnnxNode): number[] {
  const out = target.map((d, i) => (d === 0 && !allowZero ? (input[i] ?? 0) : d));
  const unknown = out.indexOf(-1);
  if (unknown >= 0) {
    const rest = product(out.filter((_, i) => i !== unknown));
    if (rest === 0 || product(input) % rest !== 0) throw new ShapeError(node, `cannot reshape [${input.join(', ')}] to [${target.join(', ')}]`);
    out[unknown] = product(input) / rest;
  }
  if (product(out) !== product(input)) throw new ShapeError(node, `cannot reshape [${input.join(', ')}] (${product(input)} elements) to [${out.join(', ')}]`);
  return out;
}

function sliceShape(input: number[], starts: number[], ends: number[], axes: number[] | undefined, steps: number[] | undefined, node: OnnxNode): number[] {
  const out = [...input];
  starts.forEach((start, k) => {
    const axis = normAxis(axes?.[k] ?? k, input.length, node);
    const size = input[axis]!;
    const step = steps?.[k] ?? 1;
    if (step === 0) throw new ShapeError(node, 'a slice step is 0');
    const clamp = (v: number, lo: number, hi: number) => Math.min(Math.max(v < 0 ? v + size : v, lo), hi);
    const [s, e] = step > 0 ? [clamp(start, 0, size), clamp(ends[k]!, 0, size)] : [clamp(start, 0, size - 1), clamp(ends[k]!, -1, size - 1)];
    out[axis] = Math.max(0, Math.ceil((e - s) / step));
  });
  return out;
}

const UNARY = new Set([
  'Abs', 'Cast', 'CastLike', 'Ceil', 'Celu', 'Clip', 'Cos', 'Dropout', 'Elu', 'Erf', 'Exp', 'Floor', 'Gelu', 'HardSigmoid', 'HardSwish',
  'Hardmax', 'Identity', 'InstanceNormalization', 'IsInf', 'IsNaN', 'LRN', 'LayerNormalization', 'LeakyRelu', 'Log', 'LogSoftmax',
  'Mish', 'Neg', 'Not', 'Reciprocal', 'Relu', 'Round', 'Selu', 'Sigmoid', 'Sign', 'Sin', 'Softmax', 'Softplus', 'Softsign', 'Sqrt',
  'Tanh', 'ThresholdedRelu', 'BatchNormalization',
]);
const BROADCASTING = new Set([
  'Add', 'And', 'Div', 'Equal', 'Greater', 'GreaterOrEqual', 'Less', 'LessOrEqual', 'Max', 'Mean', 'Min', 'Mod', 'Mul', 'Or', 'PRelu',
  'Pow', 'Sub', 'Sum', 'Where', 'Xor',
]);
const ARITHMETIC: Record<string, (a: number, b: number) => number> = {
  Add: (a, b) => a + b, Sub: (a, b) => a - b, Mul: (a, b) => a * b,
  Div: (a, b) => (Number.isInteger(a) && Number.isInteger(b) ? Math.trunc(a / b) : a / b),
};
const REDUCE = /^Reduce(L1|L2|LogSum|LogSumExp|Max|Mean|Min|Prod|Sum|SumSquare)$/;

/** Output shapes (and values where cheap) of one node, or null when they cannot be known statically. */
function inferNode(node: OnnxNode, ins: (KnownTensor | undefined)[], opset: number): KnownTensor[] | null {
  const x = ins[0];
  const valuesOf = (i: number): number[] | undefined => ins[i]?.values;
  const op = node.opType;
  if (op === 'Constant') {
    const value = attr(node, 'value')?.tensors[0];
    if (value) return [{ dims: value.dims, ...(value.values ? { values: value.values } : {}) }];
    const ints = intsAttr(node, 'value_ints');
    if (ints) return [{ dims: [ints.length], values: ints }];
    const int = attr(node, 'value_int')?.i;
    if (int !== undefined) return [{ dims: [], values: [int] }];
    if (attr(node, 'value_float') !== undefined) return [{ dims: [] }];
    return null;
  }
  if (op === 'Range') {
    const [start, limit, delta] = [valuesOf(0)?.[0], valuesOf(1)?.[0], valuesOf(2)?.[0]];
    if (start === undefined || limit === undefined || delta === undefined || delta === 0) return null;
    return [{ dims: [Math.max(0, Math.ceil((limit - start) / delta))] }];
  }
  if (!x) return null;
  const rank = x.dims.length;
  if (UNARY.has(op)) {
    // Only the main output: the extra outputs of the normalisations (mean, variance) have other shapes;
    // Dropout's mask has the input's.
    const out = { dims: x.dims, ...(x.values && ['Identity', 'Cast'].includes(op) ? { values: x.values } : {}) };
    return op === 'Dropout' ? node.outputs.map(() => out) : [out];
  }
  if (BROADCASTING.has(op)) {
    if (ins.some((t, i) => t === undefined && node.inputs[i] !== '')) return null;
    const known = ins.filter((t): t is KnownTensor => t !== undefined);
    const dims = broadcast(known.map((t) => t.dims), node);
    const fn = ARITHMETIC[op];
    const [a, b] = [known[0]?.values, known[1]?.values];
    if (fn && a && b && known.length === 2 && product(dims) <= MAX_TRACKED_VALUES) {
      return [{ dims, values: Array.from({ length: product(dims) }, (_, i) => fn(a[a.length === 1 ? 0 : i]!, b[b.length === 1 ? 0 : i]!)) }];
    }
    return [{ dims }];
  }
  switch (op) {
    case 'Conv': {
      const w = ins[1];
      if (!w) return null;
      return [{ dims: [x.dims[0]!, w.dims[0]!, ...windowed(node, x.dims, intsAttr(node, 'kernel_shape') ?? w.dims.slice(2), false)] }];
    }
    case 'ConvTranspose': {
      const w = ins[1];
      if (!w) return null;
      const kernel = intsAttr(node, 'kernel_shape') ?? w.dims.slice(2);
      return [{ dims: [x.dims[0]!, w.dims[1]! * intAttr(node, 'group', 1), ...convTransposeSpatial(node, x.dims, kernel)] }];
    }
    case 'MaxPool':
    case 'AveragePool': {
      const kernel = intsAttr(node, 'kernel_shape');
      if (!kernel) return null;
      const dims = [x.dims[0]!, x.dims[1]!, ...windowed(node, x.dims, kernel, intAttr(node, 'ceil_mode', 0) === 1)];
      return node.outputs.map(() => ({ dims }));
    }
    case 'GlobalAveragePool':
    case 'GlobalMaxPool':
      return [{ dims: [...x.dims.slice(0, 2), ...x.dims.slice(2).map(() => 1)] }];
    case 'Gemm': {
      const b = ins[1];
      if (!b || rank !== 2 || b.dims.length !== 2) return null;
      const m = intAttr(node, 'transA', 0) ? x.dims[1]! : x.dims[0]!;
      const n = intAttr(node, 'transB', 0) ? b.dims[0]! : b.dims[1]!;
      return [{ dims: [m, n] }];
    }
    case 'MatMul':
      return ins[1] ? [{ dims: matmulShape(x.dims, ins[1].dims, node) }] : null;
    case 'Flatten': {
      const axis = intAttr(node, 'axis', 1);
      const a = axis < 0 ? axis + rank : axis;
      return [{ dims: [product(x.dims.slice(0, a)), product(x.dims.slice(a))] }];
    }
    case 'Reshape': {
      const target = valuesOf(1);
      return target ? [{ dims: reshapeTarget(x.dims, target, intAttr(node, 'allowzero', 0) === 1, node), ...(x.values ? { values: x.values } : {}) }] : null;
    }
    case 'Transpose': {
      const perm = intsAttr(node, 'perm') ?? x.dims.map((_, i) => rank - 1 - i);
      return [{ dims: perm.map((p) => x.dims[normAxis(p, rank, node)]!) }];
    }
    case 'Concat': {
      if (ins.some((t) => t === undefined)) return null;
      const all = ins as KnownTensor[];
      const axis = normAxis(intAttr(node, 'axis', 0), rank, node);
      const dims = [...x.dims];
      dims[axis] = all.reduce((s, t) => s + (t.dims[axis] ?? 0), 0);
      const values = all.every((t) => t.values) && rank === 1 ? all.flatMap((t) => t.values!) : undefined;
      return [{ dims, ...(values && values.length <= MAX_TRACKED_VALUES ? { values } : {}) }];
    }
    case 'Squeeze':
    case 'Unsqueeze': {
      const axes = opset >= 13 ? valuesOf(1) : intsAttr(node, 'axes');
      if (op === 'Squeeze' && axes === undefined) return [{ dims: x.dims.filter((d) => d !== 1), ...(x.values ? { values: x.values } : {}) }];
      if (axes === undefined) return null;
      let dims: number[];
      if (op === 'Squeeze') {
        const drop = new Set(axes.map((a) => normAxis(a, rank, node)));
        dims = x.dims.filter((_, i) => !drop.has(i));
      } else {
        const outRank = rank + axes.length;
        const add = new Set(axes.map((a) => normAxis(a, outRank, node)));
        const rest = [...x.dims];
        dims = Array.from({ length: outRank }, (_, i) => (add.has(i) ? 1 : rest.shift()!));
      }
      return [{ dims, ...(x.values ? { values: x.values } : {}) }];
    }
    case 'Shape': {
      const start = intAttr(node, 'start', 0);
      const end = attr(node, 'end')?.i ?? rank;
      const clamp = (v: number) => Math.min(Math.max(v < 0 ? v + rank : v, 0), rank);
      const values = x.dims.slice(clamp(start), clamp(end));
      return [{ dims: [values.length], values }];
    }
    case 'Size':
      return [{ dims: [], values: [product(x.dims)] }];
    case 'Gather': {
      const indices = ins[1];
      if (!indices) return null;
      const axis = normAxis(intAttr(node, 'axis', 0), rank, node);
      const dims = [...x.dims.slice(0, axis), ...indices.dims, ...x.dims.slice(axis + 1)];
      const values = x.values && rank === 1 && indices.values ? indices.values.map((i) => x.values![i < 0 ? i + x.values!.length : i]!) : undefined;
      return [{ dims, ...(values && values.every((v) => v !== undefined) ? { values } : {}) }];
    }
    case 'GatherElements':
      return ins[1] ? [{ dims: ins[1].dims }] : null;
    case 'Pad': {
      const pads = opset >= 11 ? valuesOf(1) : intsAttr(node, 'pads');
      if (!pads) return null;
      const axes = valuesOf(3)?.map((a) => normAxis(a, rank, node)) ?? x.dims.map((_, i) => i);
      const dims = [...x.dims];
      axes.forEach((axis, k) => {
        dims[axis] = dims[axis]! + pads[k]! + pads[k + axes.length]!;
      });
      return [{ dims }];
    }
    case 'Resize':
    case 'Upsample': {
      const sizes = op === 'Resize' ? valuesOf(3) : undefined;
      if (sizes && sizes.length === rank) return [{ dims: sizes }];
      const scales = op === 'Resize' ? valuesOf(2) : (valuesOf(1) ?? attr(node, 'scales')?.floats);
      if (!scales || scales.length !== rank) return null;
      return [{ dims: x.dims.map((d, i) => Math.floor(d * scales[i]!)) }];
    }
    case 'Expand': {
      const shape = valuesOf(1);
      return shape ? [{ dims: broadcast([x.dims, shape], node) }] : null;
    }
    case 'Tile': {
      const repeats = valuesOf(1);
      return repeats && repeats.length === rank ? [{ dims: x.dims.map((d, i) => d * repeats[i]!) }] : null;
    }
    case 'ConstantOfShape': {
      const shape = x.values;
      return shape ? [{ dims: shape }] : null;
    }
    case 'Slice': {
      const [starts, ends] = [valuesOf(1), valuesOf(2)];
      if (!starts || !ends) return null;
      return [{ dims: sliceShape(x.dims, starts, ends, valuesOf(3), valuesOf(4), node) }];
    }
    case 'Split': {
      const axis = normAxis(intAttr(node, 'axis', 0), rank, node);
      const parts = node.outputs.length;
      const equal = Math.ceil(x.dims[axis]! / parts);
      const sizes = (opset >= 13 ? valuesOf(1) : intsAttr(node, 'split'))
        ?? Array.from({ length: parts }, (_, k) => (k < parts - 1 ? equal : x.dims[axis]! - equal * (parts - 1)));
      return sizes.map((size) => ({ dims: x.dims.map((d, i) => (i === axis ? size : d)) }));
    }
    case 'ArgMax':
    case 'ArgMin': {
      const axis = normAxis(intAttr(node, 'axis', 0), rank, node);
      const keep = intAttr(node, 'keepdims', 1) === 1;
      return [{ dims: keep ? x.dims.map((d, i) => (i === axis ? 1 : d)) : x.dims.filter((_, i) => i !== axis) }];
    }
    case 'DepthToSpace':
    case 'SpaceToDepth': {
      const b = intAttr(node, 'blocksize', 1);
      const [n, c, h, w] = x.dims as [number, number, number, number];
      return [{ dims: op === 'DepthToSpace' ? [n, c / (b * b), h * b, w * b] : [n, c * b * b, h / b, w / b] }];
    }
    case 'TopK': {
      const k = valuesOf(1)?.[0];
      if (k === undefined) return null;
      const axis = normAxis(intAttr(node, 'axis', -1), rank, node);
      const dims = x.dims.map((d, i) => (i === axis ? k : d));
      return [{ dims }, { dims }];
    }
    default: {
      if (!REDUCE.test(op)) return null; // Einsum, NonZero and anything data-dependent: unknown
      const fromInput = (op === 'ReduceSum' && opset >= 13) || opset >= 18;
      const axes = fromInput ? valuesOf(1) : intsAttr(node, 'axes');
      const keep = intAttr(node, 'keepdims', 1) === 1;
      const reduced = new Set((axes ?? (intAttr(node, 'noop_with_empty_axes', 0) ? [] : x.dims.map((_, i) => i))).map((a) => normAxis(a, rank, node)));
      return [{ dims: keep ? x.dims.map((d, i) => (reduced.has(i) ? 1 : d)) : x.dims.filter((_, i) => !reduced.has(i)) }];
    }
  }
}

/**
 * Propagates shapes from `inputShapes` (fed inputs with static dims) and the initializers through the
 * graph in node order, calling `visit` for every tensor whose shape becomes known (inputs included).
 * Returns what became known.
 */
export function inferShapes(model: OnnxModel, opset: number, inputShapes: Map<string, number[]>, visit: ShapeVisitor): Map<string, KnownTensor> {
  const known = new Map<string, KnownTensor>();
  for (const t of model.initializers) known.set(t.name, { dims: t.dims, ...(t.values ? { values: t.values } : {}) });
  for (const [name, dims] of inputShapes) {
    known.set(name, { dims });
    visit(name, { dims }, null);
  }
  for (const node of model.nodes) {
    if (node.domain !== '' && node.domain !== 'ai.onnx') continue;
    const outputs = inferNode(node, node.inputs.map((name) => (name === '' ? undefined : known.get(name))), opset);
    if (outputs === null) continue;
    outputs.forEach((tensor, k) => {
      const name = node.outputs[k];
      if (name === undefined || name === '') return;
      if (tensor.dims.some((d) => !Number.isFinite(d) || d < 0 || !Number.isInteger(d))) {
        throw new ShapeError(node, `its output ${JSON.stringify(name)} would have dims [${tensor.dims.join(', ')}]`);
      }
      known.set(name, tensor);
      visit(name, tensor, node);
    });
  }
  return known;
}
