// What verification and profiling need from an ONNX file without the Python engine: nodes, initializer
// shapes, declared inputs/outputs (through the one streaming reader, src/onnx); params and MACs from shapes
// observed by onnxruntime itself; and small derived models (extra graph outputs, single-layer subgraphs)
// whose unchanged bytes are copied from the file, never holding the whole model in memory.
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as ort from 'onnxruntime-node';
import {
  bufferSource, elementBytes, elementBytesByName, encode, ELEMENT_TYPES, fedInputs, fields, FLOAT32, openFileSource, readBytes,
  readModel, type ByteSource, type OnnxModel, type OnnxNode, type Span, type TensorInfo,
} from '../onnx/index.js';

export type { OnnxNode, TensorInfo } from '../onnx/index.js';
export const ONNX_FLOAT = FLOAT32;

export interface InitializerInfo {
  name: string;
  dims: number[];
  dataType: number;
  elements: number;
  bytes: number;
  /** the TensorProto message in the file */
  span: Span;
  /** offset of the tensor's raw_data bytes within the file; null when stored otherwise */
  rawDataOffset: number | null;
}

export interface OnnxModelInfo {
  /** where the model's bytes are: a file, or memory for small derived models */
  location: { path: string } | { bytes: Uint8Array };
  irVersion: number;
  opsetImports: { domain: string; version: number }[];
  /** the GraphProto payload in the file, and where its field key starts */
  graph: OnnxModel['graph'];
  size: number;
  nodes: OnnxNode[];
  initializers: Map<string, InitializerInfo>;
  /** graph inputs that are not initializers: what a caller must feed */
  inputs: TensorInfo[];
  outputs: TensorInfo[];
}

function openLocation(model: OnnxModelInfo): Promise<ByteSource> {
  return 'path' in model.location ? openFileSource(model.location.path) : Promise.resolve(bufferSource(model.location.bytes));
}

async function infoFrom(source: ByteSource, location: OnnxModelInfo['location']): Promise<OnnxModelInfo> {
  const model = await readModel(source);
  if (model.nodes.length === 0) throw new Error('the graph has no nodes');
  const initializers = new Map<string, InitializerInfo>();
  for (const t of model.initializers) {
    const elements = t.dims.reduce((a, b) => a * b, 1);
    initializers.set(t.name, {
      name: t.name, dims: t.dims, dataType: t.dataType, elements, bytes: elements * elementBytes(t.dataType), span: t.span, rawDataOffset: t.rawDataOffset,
    });
  }
  const strip = ({ name, elemType, type, dims }: TensorInfo): TensorInfo => ({ name, elemType, type, dims });
  return {
    location, irVersion: model.irVersion ?? 0, opsetImports: model.opsetImports, graph: model.graph, size: model.bytes,
    nodes: model.nodes, initializers, inputs: fedInputs(model).map(strip), outputs: model.outputs.map(strip),
  };
}

/** Reads the model file's skeleton through a 1 MiB window; tensor payloads stay on disk. */
export async function readOnnxModel(path: string): Promise<OnnxModelInfo> {
  const source = await openFileSource(path);
  try {
    return await infoFrom(source, { path });
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  } finally {
    await source.close();
  }
}

/** The same for a model already in memory (a derived subgraph). */
export function parseOnnxModel(bytes: Uint8Array): Promise<OnnxModelInfo> {
  return infoFrom(bufferSource(bytes), { bytes });
}

// ---------------------------------------------------------------- derived models

const COPY_CHUNK = 1 << 20;

async function copyRange(source: ByteSource, from: number, to: number, write: (chunk: Buffer) => Promise<void>): Promise<void> {
  for (let at = from; at < to; at += COPY_CHUNK) await write(await readBytes(source, at, Math.min(COPY_CHUNK, to - at)));
}

function encodeValueInfo(info: Pick<TensorInfo, 'name' | 'elemType' | 'dims'> | { name: string }): Buffer {
  const { VALUE_INFO, TYPE, TENSOR_TYPE, SHAPE, DIMENSION } = fields;
  if (!('dims' in info) || info.elemType === 0) return encode.bytes(VALUE_INFO.name, info.name);
  const dims = info.dims.map((d) => encode.message(SHAPE.dim, typeof d === 'number' ? encode.varint(DIMENSION.value, d) : d === null ? Buffer.alloc(0) : encode.bytes(DIMENSION.param, d)));
  // no dims: the shape stays undeclared (any rank), rather than declaring a scalar
  const shape = dims.length > 0 ? [encode.message(TENSOR_TYPE.shape, ...dims)] : [];
  const tensorType = Buffer.concat([encode.varint(TENSOR_TYPE.elemType, info.elemType), ...shape]);
  return Buffer.concat([encode.bytes(VALUE_INFO.name, info.name), encode.message(VALUE_INFO.type, encode.message(TYPE.tensorType, tensorType))]);
}

/**
 * Writes to `target` a copy of the model whose graph also outputs the named tensors, streaming the
 * original bytes through. Outputs are declared by name only: onnxruntime infers their types, which is
 * what lets one run observe every intermediate shape. Protobuf messages concatenate, so appended output
 * fields extend the graph's list; only the graph's length prefix changes.
 */
export async function writeWithExtraOutputs(model: OnnxModelInfo, names: string[], target: string): Promise<void> {
  const extra = Buffer.concat(names.map((name) => encode.message(fields.GRAPH.output, encodeValueInfo({ name }))));
  const source = await openLocation(model);
  const out = await open(target, 'w');
  try {
    const write = async (chunk: Buffer): Promise<void> => {
      await out.write(chunk);
    };
    const { keyOffset, offset, length } = model.graph;
    await copyRange(source, 0, keyOffset, write);
    await write(encode.lengthHeader(fields.MODEL.graph, length + extra.length));
    await copyRange(source, offset, offset + length, write);
    await write(extra);
    await copyRange(source, offset + length, model.size, write);
  } finally {
    await out.close();
    await source.close();
  }
}

/**
 * A standalone model of some of the model's nodes: their NodeProto and initializer bytes copied
 * verbatim from the file, fed by `inputs` (typed and shaped) and producing `outputs`.
 */
export async function buildSubgraphModel(
  model: OnnxModelInfo, nodes: OnnxNode[], inputs: Pick<TensorInfo, 'name' | 'elemType' | 'dims'>[], outputs: string[],
): Promise<Uint8Array> {
  const { GRAPH, MODEL, OPSET } = fields;
  const source = await openLocation(model);
  const parts: Buffer[] = [];
  try {
    for (const node of nodes) parts.push(encode.bytes(GRAPH.node, await readBytes(source, node.span.offset, node.span.length)));
    parts.push(encode.bytes(GRAPH.name, 'subgraph'));
    for (const name of new Set(nodes.flatMap((n) => n.inputs))) {
      const init = model.initializers.get(name);
      if (init) parts.push(encode.bytes(GRAPH.initializer, await readBytes(source, init.span.offset, init.span.length)));
    }
  } finally {
    await source.close();
  }
  for (const input of inputs) parts.push(encode.message(GRAPH.input, encodeValueInfo(input)));
  for (const name of outputs) parts.push(encode.message(GRAPH.output, encodeValueInfo({ name })));
  return Buffer.concat([
    encode.varint(MODEL.irVersion, model.irVersion),
    ...model.opsetImports.map((o) => encode.message(MODEL.opsetImport, encode.bytes(OPSET.domain, o.domain), encode.varint(OPSET.version, o.version))),
    encode.message(MODEL.graph, ...parts),
  ]);
}

// ---------------------------------------------------------------- shapes and costs

export interface ObservedTensor {
  dims: number[];
  /** bytes per element of the observed tensor */
  elementBytes: number;
}

/**
 * Runs the model once with every node output exposed, so the shapes are those the runtime really
 * produces at this input size (no shape inference of our own to disagree with it). Initializers
 * and the fed inputs are included in the returned map.
 */
export async function observeTensorShapes(
  model: OnnxModelInfo,
  feeds: Record<string, ort.Tensor>,
  options: ort.InferenceSession.SessionOptions,
): Promise<Map<string, ObservedTensor>> {
  const declared = new Set(model.outputs.map((o) => o.name));
  const extra = [...new Set(model.nodes.flatMap((n) => n.outputs))].filter((n) => n !== '' && !declared.has(n));
  const dir = await mkdtemp(join(tmpdir(), 'tuckerize-shapes-'));
  const shapes = new Map<string, ObservedTensor>();
  try {
    const path = join(dir, 'model.onnx');
    await writeWithExtraOutputs(model, extra, path);
    const session = await ort.InferenceSession.create(path, options);
    try {
      const results = await session.run(feeds);
      for (const [name, value] of Object.entries(results)) {
        shapes.set(name, { dims: [...value.dims], elementBytes: elementBytesByName(value.type) });
        value.dispose();
      }
    } finally {
      await session.release();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  for (const [name, tensor] of Object.entries(feeds)) {
    shapes.set(name, { dims: [...tensor.dims], elementBytes: elementBytesByName(tensor.type) });
  }
  for (const init of model.initializers.values()) {
    shapes.set(init.name, { dims: init.dims, elementBytes: elementBytes(init.dataType) });
  }
  return shapes;
}

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);
/** Elements of one sample: everything but the leading (batch) dimension. */
const perSample = (dims: readonly number[]): number => product(dims.slice(1));

/**
 * Multiply-accumulates of one Conv, ConvTranspose, Gemm or MatMul node per sample (one image of the
 * batch) at the observed shapes; 0 for other ops (element-wise ops, pooling and normalisation are
 * memory-bound and excluded, as in the paper). The same formulas as the engine's metrics.py, which is
 * the reference (test/onnx-cost.test.ts compares the two).
 */
export function nodeMacs(node: OnnxNode, shapes: Map<string, ObservedTensor>): number {
  const out = shapes.get(node.outputs[0] ?? '');
  const a = shapes.get(node.inputs[0] ?? '');
  const b = shapes.get(node.inputs[1] ?? '');
  if (!out || !a || !b) return 0;
  switch (node.opType) {
    case 'Conv':
      // each output element accumulates (C_in / group) · kh · kw products: the weight's dims after the first
      return perSample(out.dims) * perSample(b.dims);
    case 'ConvTranspose':
      // each input element is scattered through (C_out / group) · kh · kw products
      return perSample(a.dims) * perSample(b.dims);
    case 'Gemm':
    case 'MatMul': {
      const transA = node.opType === 'Gemm' && node.attributes.get('transA')?.i === 1;
      const inner = (transA ? a.dims[0] : a.dims[a.dims.length - 1]) ?? 0;
      // a vector·matrix product has no batch dimension
      return (out.dims.length === 1 ? out.dims[0]! : perSample(out.dims)) * inner;
    }
    default:
      return 0;
  }
}

export interface NodeCost {
  name: string;
  opType: string;
  macs: number;
}

export interface ModelCost {
  /** elements of floating-point initializers (weights, biases, normalisation statistics), Identity aliases counted again */
  params: number;
  /** bytes of all initializers */
  weightBytes: number;
  /** per sample (one image of the batch) */
  macs: number;
  /** bytes of the fed inputs per sample */
  inputBytes: number;
  /** bytes of every tensor a node produces (intermediate activations and the outputs) per sample */
  activationBytes: number;
  /** the graph's declared outputs, a subset of activationBytes */
  outputBytes: number;
  perNode: NodeCost[];
}

/**
 * Floating-point initializer elements. torch.onnx.export stores equal tensors once behind Identity nodes
 * (the zero biases of a fresh network); they are still separate parameters, as the engine counts them.
 */
export function paramCount(model: OnnxModelInfo): number {
  const floats = new Map<string, number>();
  for (const init of model.initializers.values()) if (ELEMENT_TYPES[init.dataType]?.float) floats.set(init.name, init.elements);
  let total = [...floats.values()].reduce((a, b) => a + b, 0);
  for (const node of model.nodes) {
    const aliased = node.opType === 'Identity' ? floats.get(node.inputs[0] ?? '') : undefined;
    if (aliased !== undefined && node.outputs[0] !== undefined) {
      floats.set(node.outputs[0], aliased);
      total += aliased;
    }
  }
  return total;
}

/** Costs per sample (one image of the batch the shapes were observed at), as the engine counts them. */
export function modelCost(model: OnnxModelInfo, shapes: Map<string, ObservedTensor>): ModelCost {
  let weightBytes = 0;
  for (const init of model.initializers.values()) weightBytes += init.bytes;
  const batch = shapes.get(model.inputs[0]?.name ?? '')?.dims[0] ?? 1;
  const bytesOf = (name: string): number => {
    const t = shapes.get(name);
    return t ? (product(t.dims) * t.elementBytes) / Math.max(1, batch) : 0;
  };
  const perNode = model.nodes.map((n) => ({ name: n.name, opType: n.opType, macs: nodeMacs(n, shapes) }));
  const produced = new Set(model.nodes.flatMap((n) => n.outputs).filter((n) => n !== ''));
  return {
    params: paramCount(model),
    weightBytes,
    macs: perNode.reduce((s, n) => s + n.macs, 0),
    inputBytes: model.inputs.reduce((s, i) => s + bytesOf(i.name), 0),
    activationBytes: [...produced].reduce((s, name) => s + bytesOf(name), 0),
    outputBytes: model.outputs.reduce((s, o) => s + bytesOf(o.name), 0),
    perNode,
  };
}
