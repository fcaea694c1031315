// Inspects an uploaded .onnx file before anything else touches it (onnxruntime, the engine): limits and
// policy on top of the one streaming reader (src/onnx), which walks the file from disk keeping only the
// model's skeleton, so a 600 MB model costs a few reads and a few kilobytes of memory. Nothing here
// executes or allocates according to what the file declares.
import { stat } from 'node:fs/promises';
import { fedInputs, OnnxFormatError, readModelFile, type OnnxModel, type OnnxNode, type ReadLimits, type TensorHeader, type TensorInfo, type ValueInfo } from '../onnx/index.js';
import { ELEMENT_TYPES } from '../onnx/dtypes.js';
import { inferShapes, ShapeError } from '../onnx/shapes.js';
import { InputRejected, quote } from './rejection.js';
/**
 * Ops the engine's interpreter can run (engine/tuckerize/interpret.py: its `OPS` table plus Constant, which
 * it folds into buffers), default ONNX domain only. test/security-onnx.test.ts fails when they drift apart.
 */
export const SUPPORTED_OPS: ReadonlySet<string> = new Set([
  'Abs', 'Add', 'And', 'ArgMax', 'ArgMin', 'AveragePool', 'BatchNormalization', 'Cast', 'CastLike', 'Ceil',
  'Celu', 'Clip', 'Concat', 'Constant', 'ConstantOfShape', 'Conv', 'ConvTranspose', 'Cos', 'DepthToSpace',
  'Div', 'Dropout', 'Einsum', 'Elu', 'Equal', 'Erf', 'Exp', 'Expand', 'Flatten', 'Floor', 'Gather',
  'GatherElements', 'Gelu', 'Gemm', 'GlobalAveragePool', 'GlobalMaxPool', 'Greater', 'GreaterOrEqual',
  'HardSigmoid', 'HardSwish', 'Hardmax', 'Identity', 'InstanceNormalization', 'IsInf', 'IsNaN', 'LRN',
  'LayerNormalization', 'LeakyRelu', 'Less', 'LessOrEqual', 'Log', 'LogSoftmax', 'MatMul', 'Max', 'MaxPool',
  'Mean', 'Min', 'Mish', 'Mod', 'Mul', 'Neg', 'NonZero', 'Not', 'Or', 'PRelu', 'Pad', 'Pow', 'Range',
  'Reciprocal', 'ReduceL1', 'ReduceL2', 'ReduceLogSum', 'ReduceLogSumExp', 'ReduceMax', 'ReduceMean',
  'ReduceMin', 'ReduceProd', 'ReduceSum', 'ReduceSumSquare', 'Relu', 'Reshape', 'Resize', 'Round', 'Selu',
  'Shape', 'Sigmoid', 'Sign', 'Sin', 'Size', 'Slice', 'Softmax', 'Softplus', 'Softsign', 'SpaceToDepth',
  'Split', 'Sqrt', 'Squeeze', 'Sub', 'Sum', 'Tanh', 'ThresholdedRelu', 'Tile', 'TopK', 'Transpose', 'Unsqueeze',
  'Upsample', 'Where', 'Xor',
]);

export const MIN_OPSET = 11;
export const MAX_OPSET = 21;

/** The reader's own limits (names, node and initializer counts) plus what the service accepts. */
export interface OnnxLimits extends ReadLimits {
  /** Largest dimension a graph input/output or initializer may declare. */
  maxDim: number;
  /**
   * Largest element count of one tensor: an initializer, a graph input, or an activation as the upload
   * shape inference computes it at batch 1 (ONNX_MAX_TENSOR_ELEMENTS).
   */
  maxTensorElements: number;
  /** Bounds on the window attributes of Conv, ConvTranspose and the pools. */
  maxStride: number;
  maxDilation: number;
  maxPad: number;
}

export const DEFAULT_ONNX_LIMITS: OnnxLimits = {
  maxDim: 1_000_000,
  // VGG-16's fc6 holds 102.8 M weights; twice that leaves room without admitting absurd tensors. Its
  // largest activation at 224×224 is 3.2 M elements.
  maxTensorElements: 200_000_000,
  // Exported vision nets use strides up to 32 (patch embeddings), dilations up to 36 (ASPP) and pads
  // about half a kernel; these bounds are far above that and far below what exhausts a worker.
  maxStride: 1024,
  maxDilation: 1024,
  maxPad: 4096,
  maxNodes: 100_000,
  maxInitializers: 100_000,
  maxNameBytes: 4096,
};

export type { Dim, TensorInfo } from '../onnx/index.js';
export type NodeInfo = OnnxNode;

export interface InitializerInfo {
  name: string;
  dims: number[];
  dataType: number;
  elements: number;
}

export interface OnnxSummary {
  bytes: number;
  irVersion: number;
  /** Version of the default (ai.onnx) operator set. */
  opset: number;
  opsetImports: { domain: string; version: number }[];
  producer: { name: string; version: string };
  graphName: string;
  /** Graph inputs that are not initializers: what a caller feeds. */
  inputs: TensorInfo[];
  outputs: TensorInfo[];
  nodes: NodeInfo[];
  /** op type → number of nodes */
  opCounts: Record<string, number>;
  initializers: InitializerInfo[];
  /** Total initializer elements (weights and biases), for the model record. */
  params: number;
  /** The whole skeleton, for the upload shape inference. */
  model: OnnxModel;
}

/**
 * Checks a tensor header against the limits and against the bytes it stores, so a declared shape can
 * never promise more data than the file holds. Returns the element count.
 */
function checkTensor(t: TensorHeader, limits: OnnxLimits, context: string): number {
  if (t.external) {
    const where = t.externalLocation === null ? '' : ` in ${quote(t.externalLocation)}`;
    throw new InputRejected(
      'onnx_external_data',
      `${context} keeps its data in an external file${where}; external data is not accepted: save the model with all tensors embedded (onnx.save_model(model, path, save_as_external_data=False)) and upload one .onnx file`,
    );
  }
  const type = ELEMENT_TYPES[t.dataType];
  if (type === undefined) {
    throw new InputRejected('onnx_data_type', `${context} has data_type ${t.dataType}, which is not an ONNX tensor type`);
  }
  let elements = 1;
  for (const d of t.dims) {
    if (d < 0 || d > limits.maxDim) {
      throw new InputRejected('onnx_absurd_shape', `${context} declares dims [${t.dims.join(', ')}]: each dimension must be between 0 and ${limits.maxDim}`);
    }
    elements *= d;
  }
  if (elements > limits.maxTensorElements) {
    throw new InputRejected(
      'onnx_absurd_shape',
      `${context} declares dims [${t.dims.join(', ')}] = ${elements} elements, over the limit of ${limits.maxTensorElements} elements per tensor`,
    );
  }
  if (t.storedFields.length > 1) {
    throw new InputRejected('onnx_initializer_size', `${context} stores its data in several fields (${t.storedFields.join(', ')}); a tensor uses exactly one`);
  }
  const { name: typeName, bytes: width } = type;
  let storedElements = t.storedElements;
  if (t.rawBytes !== null) {
    const expectedBytes = Math.ceil(elements * width);
    if (width === 0 || t.rawBytes !== expectedBytes) {
      throw new InputRejected(
        'onnx_initializer_size',
        `${context} declares dims [${t.dims.join(', ')}] of ${typeName} (${expectedBytes} bytes) but its raw_data holds ${t.rawBytes} bytes`,
      );
    }
    storedElements = elements;
  }
  if (storedElements !== elements && !(width < 1 && storedElements === Math.ceil(elements * width))) {
    throw new InputRejected(
      'onnx_initializer_size',
      `${context} declares dims [${t.dims.join(', ')}] (${elements} elements) but stores ${storedElements} elements${t.storedFields.length ? ` in ${t.storedFields[0]}` : ''}`,
    );
  }
  return elements;
}

function describeNode(node: OnnxNode): string {
  return `node ${node.name ? quote(node.name) : `#${node.index}`}${node.opType ? ` (${node.opType})` : ''}`;
}

/** Graph inputs and outputs must be tensors whose declared dimensions are sane. */
function checkValueInfo(info: ValueInfo, role: string, limits: OnnxLimits): void {
  const context = `graph ${role} ${quote(info.name)}`;
  info.dims.forEach((d, i) => {
    if (typeof d === 'number' && (d < 0 || d > limits.maxDim)) {
      throw new InputRejected('onnx_absurd_shape', `${context} declares dimension ${i} = ${d}: each dimension must be between 0 and ${limits.maxDim}`);
    }
  });
  if (info.kind !== 'tensor') {
    throw new InputRejected('onnx_io', `${context} is a ${info.kind === 'none' ? 'value without a type' : info.kind}; the service compresses models whose inputs and outputs are tensors`);
  }
}

const tensorInfo = ({ name, elemType, type, dims }: ValueInfo): TensorInfo => ({ name, elemType, type, dims });

function checkModel(model: OnnxModel, limits: OnnxLimits): OnnxSummary {
  const initializers: InitializerInfo[] = model.initializers.map((t) => ({
    name: t.name, dims: t.dims, dataType: t.dataType, elements: checkTensor(t, limits, `initializer ${quote(t.name)}`),
  }));
  for (const node of model.nodes) {
    for (const [name, attribute] of node.attributes) {
      for (const t of attribute.tensors) checkTensor(t, limits, `the tensor in attribute ${quote(name)} of ${describeNode(node)}`);
    }
  }
  if (model.sparseInitializers > 0) {
    throw new InputRejected('onnx_sparse_initializer', 'the graph has a sparse initializer; the engine needs dense weights: densify it (onnx.numpy_helper) before uploading');
  }
  for (const input of model.declaredInputs) checkValueInfo(input, 'input', limits);
  for (const output of model.outputs) checkValueInfo(output, 'output', limits);

  const irVersion = model.irVersion;
  if (irVersion === null || irVersion < 3) {
    throw new InputRejected('onnx_ir_version', `ir_version is ${irVersion ?? 'missing'}; the service needs ONNX IR version 3 or later (opset-based models); re-export the model with a current exporter`);
  }
  const defaultOpset = model.opsetImports.find((o) => o.domain === '' || o.domain === 'ai.onnx');
  if (defaultOpset === undefined) {
    throw new InputRejected('onnx_opset', 'the model imports no version of the default ONNX operator set (ai.onnx); re-export it with opset 13');
  }
  if (defaultOpset.version < MIN_OPSET || defaultOpset.version > MAX_OPSET) {
    throw new InputRejected(
      'onnx_opset',
      `the model uses ONNX opset ${defaultOpset.version}; supported opsets are ${MIN_OPSET} to ${MAX_OPSET}: re-export with opset_version=13 (torch.onnx.export) or convert it with onnx.version_converter`,
    );
  }

  checkOps(model.nodes);

  const inputs = fedInputs(model);
  if (inputs.length === 0) throw new InputRejected('onnx_io', 'the graph declares no input besides its weights; a model needs at least one input tensor');
  if (model.outputs.length === 0) throw new InputRejected('onnx_io', 'the graph declares no output');

  checkShapes(model, defaultOpset.version, inputs, limits);

  const opCounts: Record<string, number> = {};
  for (const n of model.nodes) opCounts[n.opType] = (opCounts[n.opType] ?? 0) + 1;
  return {
    bytes: model.bytes,
    irVersion,
    opset: defaultOpset.version,
    opsetImports: model.opsetImports,
    producer: model.producer,
    graphName: model.graphName,
    inputs: inputs.map(tensorInfo),
    outputs: model.outputs.map(tensorInfo),
    nodes: model.nodes,
    opCounts,
    initializers,
    params: initializers.reduce((sum, i) => sum + i.elements, 0),
    model,
  };
}

const WINDOW_OPS = new Set(['Conv', 'ConvTranspose', 'MaxPool', 'AveragePool']);

/** Window attributes within bounds: what exporters write is small; what is not exhausts memory or time. */
function checkWindowAttributes(node: OnnxNode, limits: OnnxLimits): void {
  const bounds: [string, number, number][] = [
    ['strides', 1, limits.maxStride], ['dilations', 1, limits.maxDilation], ['pads', 0, limits.maxPad],
    ['output_padding', 0, limits.maxStride],
  ];
  for (const [name, min, max] of bounds) {
    const values = node.attributes.get(name)?.ints;
    if (values?.some((v) => v < min || v > max)) {
      throw new InputRejected(
        'onnx_absurd_attribute',
        `${describeNode(node)} has ${name} [${values.join(', ')}]: each must be between ${min} and ${max}; re-export the model with the layer's real settings`,
      );
    }
  }
}

/**
 * Upload-time shape inference: the declared input shapes (a symbolic batch taken as 1) propagated through
 * the graph; every input and activation must stay within maxTensorElements, and every op must fit its
 * input. Inputs with other symbolic dimensions cannot be followed; the job's inputShape is checked when
 * a job is created.
 */
function checkShapes(model: OnnxModel, opset: number, inputs: TensorInfo[], limits: OnnxLimits): void {
  for (const node of model.nodes) if (WINDOW_OPS.has(node.opType)) checkWindowAttributes(node, limits);
  const inputShapes = new Map<string, number[]>();
  for (const input of inputs) {
    // Some exporters write 0 for a dimension they do not know; it is treated as symbolic.
    const dims = input.dims.map((d, i) => (typeof d === 'number' && d > 0 ? d : i === 0 ? 1 : null));
    if (dims.every((d): d is number => d !== null)) inputShapes.set(input.name, dims);
  }
  const overLimit = (dims: number[]): number | null => {
    const elements = dims.reduce((a, b) => a * b, 1);
    return elements > limits.maxTensorElements ? elements : null;
  };
  try {
    inferShapes(model, opset, inputShapes, (name, { dims }, producer) => {
      const elements = overLimit(dims);
      if (elements === null) return;
      const what = producer === null ? `graph input ${quote(name)} declares` : `${describeNode(producer)} produces ${quote(name)} of`;
      throw new InputRejected(
        'onnx_absurd_shape',
        `${what} dims [${dims.join(', ')}] = ${elements} elements at batch 1, over the limit of ${limits.maxTensorElements} elements per tensor; `
          + 'a model this large would exhaust a worker\'s memory: check the input size and the layer settings',
      );
    });
  } catch (err) {
    if (!(err instanceof ShapeError)) throw err;
    throw new InputRejected('onnx_invalid_shape', `${describeNode(err.node)} cannot run at the declared input shapes: ${err.detail}`);
  }
}

const NODES_NAMED_PER_OP = 3;

function checkOps(nodes: NodeInfo[]): void {
  const unsupported = new Map<string, string[]>();
  for (const [index, node] of nodes.entries()) {
    const inDefaultDomain = node.domain === '' || node.domain === 'ai.onnx';
    if (inDefaultDomain && SUPPORTED_OPS.has(node.opType)) continue;
    const op = inDefaultDomain ? node.opType || '(empty op_type)' : `${node.domain}::${node.opType}`;
    const names = unsupported.get(op) ?? [];
    names.push(node.name ? quote(node.name, 60) : `#${index}`);
    unsupported.set(op, names);
  }
  if (unsupported.size === 0) return;
  const listed = [...unsupported.entries()].map(([op, names]) => {
    const shown = names.slice(0, NODES_NAMED_PER_OP).join(', ');
    const more = names.length > NODES_NAMED_PER_OP ? ` and ${names.length - NODES_NAMED_PER_OP} more` : '';
    return `${op} (node${names.length > 1 ? 's' : ''} ${shown}${more})`;
  });
  throw new InputRejected(
    'onnx_unsupported_op',
    `the engine cannot run ${unsupported.size === 1 ? 'op' : 'ops'} ${listed.join('; ')}; re-export the model without ${unsupported.size === 1 ? 'it' : 'them'} (constant folding often removes shape ops) — docs/security.md lists the ${SUPPORTED_OPS.size} ops the engine runs`,
  );
}

/**
 * Reads the model at `path` and returns its skeleton, or throws InputRejected naming what is wrong.
 */
export async function inspectOnnx(path: string, limits: OnnxLimits = DEFAULT_ONNX_LIMITS): Promise<OnnxSummary> {
  if ((await stat(path)).size === 0) throw new InputRejected('onnx_empty', 'the uploaded file is empty; upload a .onnx model');
  let model: OnnxModel;
  try {
    model = await readModelFile(path, limits);
  } catch (err) {
    if (err instanceof OnnxFormatError) throw new InputRejected(err.code, err.detail);
    throw err;
  }
  return checkModel(model, limits);
}
