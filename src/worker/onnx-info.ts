// Reads what verification and profiling need from an ONNX file without the Python engine: nodes,
// initializer shapes, declared inputs/outputs; counts params and MACs from shapes observed by
// onnxruntime itself; and writes small derived models (extra graph outputs, single-layer subgraphs)
// by copying the original protobuf bytes of nodes and initializers verbatim.
//
// Only the protobuf fields listed below are decoded; everything else is skipped by wire type, so
// files from any opset or producer parse. Field numbers are from onnx/onnx.proto3.
import { readFile } from 'node:fs/promises';
import * as ort from 'onnxruntime-node';

const MODEL = { irVersion: 1, opsetImport: 8, graph: 7 } as const;
const GRAPH = { node: 1, initializer: 5, input: 11, output: 12 } as const;
const NODE = { input: 1, output: 2, name: 3, opType: 4, attribute: 5, domain: 7 } as const;
const ATTR = { name: 1, f: 2, i: 3, s: 4, ints: 8 } as const;
const TENSOR = { dims: 1, dataType: 2, name: 8, rawData: 9 } as const;
const VALUE_INFO = { name: 1, type: 2 } as const;
const TYPE = { tensorType: 1 } as const;
const TENSOR_TYPE = { elemType: 1, shape: 2 } as const;
const SHAPE = { dim: 1 } as const;
const DIM = { value: 1, param: 2 } as const;

/** Element sizes in bytes by TensorProto.DataType; string (8) and complex types are not sized. */
const ELEMENT_BYTES: Record<number, number> = {
  1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2,
};
const FLOAT_TYPES = new Set([1, 10, 11, 16]);
export const ONNX_FLOAT = 1;

export class OnnxParseError extends Error {
  override name = 'OnnxParseError';
}

export type Dim = number | string;

export interface ValueInfo {
  name: string;
  /** TensorProto.DataType; 0 when the file does not declare it */
  elemType: number;
  /** null when the file declares no shape at all */
  shape: Dim[] | null;
}

export interface AttributeValue {
  i?: number;
  f?: number;
  s?: string;
  ints?: number[];
}

export interface OnnxNode {
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attributes: Map<string, AttributeValue>;
  /** The node's serialized NodeProto, copied verbatim into derived models */
  raw: Uint8Array;
}

export interface InitializerInfo {
  name: string;
  dims: number[];
  dataType: number;
  elements: number;
  bytes: number;
  raw: Uint8Array;
  /** offset of the tensor's raw_data bytes within the file; null when stored otherwise */
  rawDataOffset: number | null;
}

export interface OnnxModelInfo {
  irVersion: number;
  /** serialized OperatorSetIdProto entries, copied verbatim into derived models */
  opsetImportsRaw: Uint8Array[];
  nodes: OnnxNode[];
  initializers: Map<string, InitializerInfo>;
  /** graph inputs that are not initializers: what a caller must feed */
  inputs: ValueInfo[];
  outputs: ValueInfo[];
  /** the whole file, kept so derived models can be built from it */
  bytes: Uint8Array;
}

// ---------------------------------------------------------------- protobuf wire format

class Reader {
  pos: number;
  constructor(readonly buf: Uint8Array, start = 0, readonly end = buf.length) {
    this.pos = start;
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  varint(): bigint {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (this.pos >= this.end) throw new OnnxParseError(`truncated varint at byte ${this.pos}`);
      const byte = this.buf[this.pos++]!;
      result |= BigInt(byte & 0x7f) << shift;
      if ((byte & 0x80) === 0) return result;
      shift += 7n;
      if (shift > 63n) throw new OnnxParseError(`varint longer than 10 bytes at byte ${this.pos}`);
    }
  }

  /** int64 fields: negative values arrive as 10-byte two's-complement varints */
  int(): number {
    return Number(BigInt.asIntN(64, this.varint()));
  }

  bytes(): Uint8Array {
    const length = Number(this.varint());
    const start = this.pos;
    if (start + length > this.end) {
      throw new OnnxParseError(`length-delimited field of ${length} bytes runs past the end of its message at byte ${start}`);
    }
    this.pos += length;
    return this.buf.subarray(start, start + length);
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0: this.varint(); return;
      case 1: this.advance(8); return;
      case 2: this.bytes(); return;
      case 5: this.advance(4); return;
      default: throw new OnnxParseError(`unsupported protobuf wire type ${wireType} at byte ${this.pos}`);
    }
  }

  private advance(n: number): void {
    if (this.pos + n > this.end) throw new OnnxParseError(`truncated fixed-width field at byte ${this.pos}`);
    this.pos += n;
  }

  /** Iterates the fields of the current message; the callback must consume the value or call skip. */
  fields(onField: (field: number, wireType: number, start: number) => void): void {
    while (!this.done()) {
      const start = this.pos;
      const key = Number(this.varint());
      const field = key >>> 3;
      const wireType = key & 7;
      if (field === 0) throw new OnnxParseError(`invalid protobuf field number 0 at byte ${start}`);
      onField(field, wireType, start);
    }
  }
}

const textDecoder = new TextDecoder('utf-8', { fatal: false });
const str = (b: Uint8Array): string => textDecoder.decode(b);

/** Repeated int64 may be packed (wire type 2) or not (wire type 0). */
function readInts(r: Reader, wireType: number, into: number[]): void {
  if (wireType === 2) {
    const sub = r.bytes();
    const pr = new Reader(sub);
    while (!pr.done()) into.push(pr.int());
  } else {
    into.push(r.int());
  }
}

function parseAttribute(buf: Uint8Array): [string, AttributeValue] {
  const r = new Reader(buf);
  let name = '';
  const value: AttributeValue = {};
  r.fields((field, wt) => {
    if (field === ATTR.name && wt === 2) name = str(r.bytes());
    else if (field === ATTR.i && wt === 0) value.i = r.int();
    else if (field === ATTR.f && wt === 5) {
      value.f = new DataView(buf.buffer, buf.byteOffset + r.pos, 4).getFloat32(0, true);
      r.skip(5);
    } else if (field === ATTR.s && wt === 2) value.s = str(r.bytes());
    else if (field === ATTR.ints) readInts(r, wt, (value.ints ??= []));
    else r.skip(wt);
  });
  return [name, value];
}

function parseNode(buf: Uint8Array): OnnxNode {
  const r = new Reader(buf);
  const node: OnnxNode = { name: '', opType: '', domain: '', inputs: [], outputs: [], attributes: new Map(), raw: buf };
  r.fields((field, wt) => {
    if (wt !== 2) return r.skip(wt);
    const value = r.bytes();
    if (field === NODE.input) node.inputs.push(str(value));
    else if (field === NODE.output) node.outputs.push(str(value));
    else if (field === NODE.name) node.name = str(value);
    else if (field === NODE.opType) node.opType = str(value);
    else if (field === NODE.domain) node.domain = str(value);
    else if (field === NODE.attribute) {
      const [name, attr] = parseAttribute(value);
      node.attributes.set(name, attr);
    }
  });
  return node;
}

function parseInitializer(buf: Uint8Array): InitializerInfo {
  const r = new Reader(buf);
  const dims: number[] = [];
  let dataType = 0;
  let name = '';
  let rawDataOffset: number | null = null;
  r.fields((field, wt) => {
    if (field === TENSOR.dims) readInts(r, wt, dims);
    else if (field === TENSOR.dataType && wt === 0) dataType = r.int();
    else if (field === TENSOR.name && wt === 2) name = str(r.bytes());
    else if (field === TENSOR.rawData && wt === 2) rawDataOffset = r.bytes().byteOffset; // within the ArrayBuffer; made file-relative by the caller
    else r.skip(wt);
  });
  const elements = dims.reduce((a, b) => a * b, 1);
  return { name, dims, dataType, elements, bytes: elements * (ELEMENT_BYTES[dataType] ?? 0), raw: buf, rawDataOffset };
}

function parseValueInfo(buf: Uint8Array): ValueInfo {
  const info: ValueInfo = { name: '', elemType: 0, shape: null };
  const r = new Reader(buf);
  r.fields((field, wt) => {
    if (field === VALUE_INFO.name && wt === 2) info.name = str(r.bytes());
    else if (field === VALUE_INFO.type && wt === 2) {
      const tr = new Reader(r.bytes());
      tr.fields((tf, twt) => {
        if (tf !== TYPE.tensorType || twt !== 2) return tr.skip(twt);
        const ttr = new Reader(tr.bytes());
        ttr.fields((ttf, ttwt) => {
          if (ttf === TENSOR_TYPE.elemType && ttwt === 0) info.elemType = ttr.int();
          else if (ttf === TENSOR_TYPE.shape && ttwt === 2) {
            info.shape = [];
            const sr = new Reader(ttr.bytes());
            sr.fields((sf, swt) => {
              if (sf !== SHAPE.dim || swt !== 2) return sr.skip(swt);
              const dr = new Reader(sr.bytes());
              let dim: Dim = '?';
              dr.fields((df, dwt) => {
                if (df === DIM.value && dwt === 0) dim = dr.int();
                else if (df === DIM.param && dwt === 2) dim = str(dr.bytes()) || '?';
                else dr.skip(dwt);
              });
              info.shape!.push(dim);
            });
          } else ttr.skip(ttwt);
        });
      });
    } else r.skip(wt);
  });
  return info;
}

/** Parses an ONNX ModelProto; throws OnnxParseError on malformed or truncated bytes. */
export function parseOnnxModel(bytes: Uint8Array): OnnxModelInfo {
  const model: OnnxModelInfo = {
    irVersion: 0, opsetImportsRaw: [], nodes: [], initializers: new Map(), inputs: [], outputs: [], bytes,
  };
  let graphBytes: Uint8Array | null = null;
  const r = new Reader(bytes);
  r.fields((field, wt) => {
    if (field === MODEL.irVersion && wt === 0) model.irVersion = r.int();
    else if (field === MODEL.opsetImport && wt === 2) model.opsetImportsRaw.push(r.bytes());
    else if (field === MODEL.graph && wt === 2) graphBytes = r.bytes();
    else r.skip(wt);
  });
  if (graphBytes === null) throw new OnnxParseError('the file has no graph (ModelProto field 7): not an ONNX model');
  const declaredInputs: ValueInfo[] = [];
  const g = new Reader(graphBytes);
  g.fields((field, wt) => {
    if (wt !== 2) return g.skip(wt);
    const value = g.bytes();
    if (field === GRAPH.node) model.nodes.push(parseNode(value));
    else if (field === GRAPH.initializer) {
      const init = parseInitializer(value);
      if (init.rawDataOffset !== null) init.rawDataOffset -= bytes.byteOffset;
      model.initializers.set(init.name, init);
    } else if (field === GRAPH.input) declaredInputs.push(parseValueInfo(value));
    else if (field === GRAPH.output) model.outputs.push(parseValueInfo(value));
  });
  // Before IR 4 initializers were also listed as graph inputs; they are not something to feed.
  model.inputs = declaredInputs.filter((v) => !model.initializers.has(v.name));
  if (model.nodes.length === 0) throw new OnnxParseError('the graph has no nodes');
  return model;
}

export async function readOnnxModel(path: string): Promise<OnnxModelInfo> {
  const file = await readFile(path);
  // A view, not a copy: models run to hundreds of megabytes.
  const bytes = new Uint8Array(file.buffer, file.byteOffset, file.byteLength);
  try {
    return parseOnnxModel(bytes);
  } catch (err) {
    if (err instanceof OnnxParseError) throw new OnnxParseError(`${path}: ${err.message}`);
    throw err;
  }
}

// ---------------------------------------------------------------- writing derived models

class Writer {
  private chunks: Uint8Array[] = [];
  private length = 0;

  private push(chunk: Uint8Array): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
  }

  varint(value: number | bigint): void {
    let v = BigInt.asUintN(64, BigInt(value));
    const out: number[] = [];
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      out.push(byte);
    } while (v !== 0n);
    this.push(Uint8Array.from(out));
  }

  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }

  intField(field: number, value: number): void {
    this.tag(field, 0);
    this.varint(value);
  }

  bytesField(field: number, value: Uint8Array): void {
    this.tag(field, 2);
    this.varint(value.length);
    this.push(value);
  }

  raw(value: Uint8Array): void {
    this.push(value);
  }

  stringField(field: number, value: string): void {
    this.bytesField(field, new TextEncoder().encode(value));
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.length);
    let offset = 0;
    for (const chunk of this.chunks) {
      out.set(chunk, offset);
      offset += chunk.length;
    }
    return out;
  }
}

function encodeValueInfo(info: ValueInfo): Uint8Array {
  const w = new Writer();
  w.stringField(VALUE_INFO.name, info.name);
  if (info.elemType !== 0) {
    const tensorType = new Writer();
    tensorType.intField(TENSOR_TYPE.elemType, info.elemType);
    if (info.shape !== null) {
      const shape = new Writer();
      for (const d of info.shape) {
        const dim = new Writer();
        if (typeof d === 'number') dim.intField(DIM.value, d);
        else dim.stringField(DIM.param, d);
        shape.bytesField(SHAPE.dim, dim.finish());
      }
      tensorType.bytesField(TENSOR_TYPE.shape, shape.finish());
    }
    const type = new Writer();
    type.bytesField(TYPE.tensorType, tensorType.finish());
    w.bytesField(VALUE_INFO.type, type.finish());
  }
  return w.finish();
}

/**
 * A copy of the model whose graph also outputs the named tensors. Outputs are declared by name only:
 * onnxruntime infers their types, which is what lets one run observe every intermediate shape.
 */
export function withExtraOutputs(model: OnnxModelInfo, names: string[]): Uint8Array {
  const extra = new Writer();
  for (const name of names) extra.bytesField(GRAPH.output, encodeValueInfo({ name, elemType: 0, shape: null }));
  const extraBytes = extra.finish();
  const out = new Writer();
  const r = new Reader(model.bytes);
  r.fields((field, wt, start) => {
    if (field === MODEL.graph && wt === 2) {
      const graph = r.bytes();
      // Protobuf messages concatenate: appended repeated fields extend the graph's output list.
      const merged = new Uint8Array(graph.length + extraBytes.length);
      merged.set(graph, 0);
      merged.set(extraBytes, graph.length);
      out.bytesField(MODEL.graph, merged);
    } else {
      r.skip(wt);
      out.raw(model.bytes.subarray(start, r.pos));
    }
  });
  return out.finish();
}

/**
 * A standalone model of some of the model's nodes: their NodeProto and initializer bytes copied
 * verbatim, fed by `inputs` (typed and shaped) and producing `outputs`.
 */
export function buildSubgraphModel(model: OnnxModelInfo, nodes: OnnxNode[], inputs: ValueInfo[], outputs: string[]): Uint8Array {
  const graph = new Writer();
  for (const node of nodes) graph.bytesField(GRAPH.node, node.raw);
  graph.stringField(2, 'subgraph');
  const used = new Set(nodes.flatMap((n) => n.inputs));
  for (const name of used) {
    const init = model.initializers.get(name);
    if (init) graph.bytesField(GRAPH.initializer, init.raw);
  }
  for (const input of inputs) graph.bytesField(GRAPH.input, encodeValueInfo(input));
  for (const name of outputs) graph.bytesField(GRAPH.output, encodeValueInfo({ name, elemType: 0, shape: null }));
  const out = new Writer();
  out.intField(MODEL.irVersion, model.irVersion);
  for (const opset of model.opsetImportsRaw) out.bytesField(MODEL.opsetImport, opset);
  out.bytesField(MODEL.graph, graph.finish());
  return out.finish();
}

// ---------------------------------------------------------------- shapes and costs

export interface ObservedTensor {
  dims: number[];
  /** bytes per element of the observed tensor */
  elementBytes: number;
}

const ORT_ELEMENT_BYTES: Record<string, number> = {
  float32: 4, float16: 2, float64: 8, int8: 1, uint8: 1, int16: 2, uint16: 2, int32: 4, uint32: 4,
  int64: 8, uint64: 8, bool: 1,
};

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
  const session = await ort.InferenceSession.create(withExtraOutputs(model, extra), options);
  const shapes = new Map<string, ObservedTensor>();
  try {
    const results = await session.run(feeds);
    for (const [name, value] of Object.entries(results)) {
      shapes.set(name, { dims: [...value.dims], elementBytes: ORT_ELEMENT_BYTES[value.type] ?? 0 });
      value.dispose();
    }
  } finally {
    await session.release();
  }
  for (const [name, tensor] of Object.entries(feeds)) {
    shapes.set(name, { dims: [...tensor.dims], elementBytes: ORT_ELEMENT_BYTES[tensor.type] ?? 0 });
  }
  for (const init of model.initializers.values()) {
    shapes.set(init.name, { dims: init.dims, elementBytes: ELEMENT_BYTES[init.dataType] ?? 0 });
  }
  return shapes;
}

const product = (dims: readonly number[]): number => dims.reduce((a, b) => a * b, 1);

/**
 * Multiply-accumulates of one Conv, Gemm or MatMul node at the observed shapes; 0 for other ops
 * (element-wise ops, pooling and normalisation are memory-bound and excluded, as in the paper).
 */
export function nodeMacs(node: OnnxNode, shapes: Map<string, ObservedTensor>): number {
  const out = shapes.get(node.outputs[0] ?? '');
  const a = shapes.get(node.inputs[0] ?? '');
  const b = shapes.get(node.inputs[1] ?? '');
  if (!out || !a || !b) return 0;
  switch (node.opType) {
    case 'Conv':
      // each output element accumulates (C_in / group) · kh · kw products: the weight's dims after the first
      return product(out.dims) * product(b.dims.slice(1));
    case 'Gemm': {
      const transA = node.attributes.get('transA')?.i === 1;
      const k = transA ? a.dims[0] : a.dims[a.dims.length - 1];
      return product(out.dims) * (k ?? 0);
    }
    case 'MatMul':
      return product(out.dims) * (a.dims[a.dims.length - 1] ?? 0);
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
  /** elements of floating-point initializers (weights, biases, normalisation statistics) */
  params: number;
  /** bytes of all initializers */
  weightBytes: number;
  macs: number;
  /** bytes of the fed inputs */
  inputBytes: number;
  /** bytes of every tensor a node produces (intermediate activations and the outputs) */
  activationBytes: number;
  /** the graph's declared outputs, a subset of activationBytes */
  outputBytes: number;
  perNode: NodeCost[];
}

export function modelCost(model: OnnxModelInfo, shapes: Map<string, ObservedTensor>): ModelCost {
  let params = 0;
  let weightBytes = 0;
  for (const init of model.initializers.values()) {
    if (FLOAT_TYPES.has(init.dataType)) params += init.elements;
    weightBytes += init.bytes;
  }
  const bytesOf = (name: string): number => {
    const t = shapes.get(name);
    return t ? product(t.dims) * t.elementBytes : 0;
  };
  const perNode = model.nodes.map((n) => ({ name: n.name, opType: n.opType, macs: nodeMacs(n, shapes) }));
  const produced = new Set(model.nodes.flatMap((n) => n.outputs).filter((n) => n !== ''));
  return {
    params,
    weightBytes,
    macs: perNode.reduce((s, n) => s + n.macs, 0),
    inputBytes: model.inputs.reduce((s, i) => s + bytesOf(i.name), 0),
    activationBytes: [...produced].reduce((s, name) => s + bytesOf(name), 0),
    outputBytes: model.outputs.reduce((s, o) => s + bytesOf(o.name), 0),
    perNode,
  };
}
