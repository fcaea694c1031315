// The one ONNX reader: walks a ModelProto from a file cursor and returns its skeleton — opsets, graph
// inputs/outputs, nodes with their edges and attributes, initializer headers — with the file span of every
// node and initializer, so derived models can copy those bytes without the whole file in memory.
// Wire-level problems throw OnnxFormatError; what the service accepts is policy (src/security/onnx-inspect.ts).
import { bufferSource, Cursor, expectWire, OnnxFormatError, openFileSource, type ByteSource } from './cursor.js';
import { dataTypeName } from './dtypes.js';
import { ATTRIBUTE, DIMENSION, GRAPH, MODEL, NODE, OPSET, SHAPE, TENSOR_TYPE, TYPE, VALUE_INFO } from './fields.js';
import { MAX_RANK, readPackedVarints, readString, readTensor, readVarintField, type ReadLimits, type TensorHeader } from './tensor.js';
import type { Dim, Span, TensorInfo } from './types.js';
import { WIRE_FIXED32, WIRE_LEN, WIRE_NAMES, WIRE_VARINT } from './wire.js';

export { MAX_RANK, SMALL_TENSOR_ELEMENTS, type ReadLimits, type TensorHeader } from './tensor.js';

export const DEFAULT_READ_LIMITS: ReadLimits = { maxNameBytes: 4096, maxNodes: 100_000, maxInitializers: 100_000 };

/** Values kept per attribute list (ints, floats); longer lists are skipped (no supported op needs them). */
const MAX_ATTRIBUTE_VALUES = 1024;
/** Inputs or outputs of one node; more is a crafted file. */
const MAX_NODE_EDGES = 65_536;

export interface AttributeValue {
  i?: number;
  f?: number;
  s?: string;
  ints?: number[];
  floats?: number[];
  /** tensors embedded in the attribute (t, tensors): Constant values */
  tensors: TensorHeader[];
}

export interface OnnxNode {
  /** position in the graph */
  index: number;
  name: string;
  opType: string;
  domain: string;
  inputs: string[];
  outputs: string[];
  attributes: Map<string, AttributeValue>;
  /** the NodeProto message in the file */
  span: Span;
}

export interface ValueInfo extends TensorInfo {
  /** 'tensor', or what else the type is ('sequence', 'map', ...; 'none' when undeclared) */
  kind: string;
}

export interface OnnxModel {
  bytes: number;
  irVersion: number | null;
  opsetImports: { domain: string; version: number }[];
  producer: { name: string; version: string };
  graphName: string;
  /** the GraphProto payload and the offset of its field key, for rewriting it in a stream */
  graph: Span & { keyOffset: number };
  nodes: OnnxNode[];
  initializers: TensorHeader[];
  /** every declared graph input, initializers listed as inputs (IR < 4) included */
  declaredInputs: ValueInfo[];
  outputs: ValueInfo[];
  sparseInitializers: number;
}

/** Node label for messages: its name, or its position when unnamed. */
export function describeNode(node: Pick<OnnxNode, 'name' | 'opType' | 'index'>): string {
  return `node ${node.name ? JSON.stringify(node.name) : `#${node.index}`}${node.opType ? ` (${node.opType})` : ''}`;
}

async function readAttribute(c: Cursor, end: number, limits: ReadLimits, owner: () => string): Promise<[string, AttributeValue]> {
  let name = '';
  const value: AttributeValue = { tensors: [] };
  while (c.pos < end) {
    const head = await c.head(end, 'AttributeProto');
    switch (head.field) {
      case ATTRIBUTE.name:
        name = await readString(c, head, limits, 'an attribute name');
        break;
      case ATTRIBUTE.i:
        value.i = readVarintField(c, head, end, `attribute ${JSON.stringify(name)}.i`);
        break;
      case ATTRIBUTE.f:
        expectWire(head, WIRE_FIXED32, `attribute ${JSON.stringify(name)}.f`);
        if (c.pos + 4 > end) throw c.overrun(end, 'AttributeProto.f');
        await c.fill(4);
        value.f = c.bytes(4).readFloatLE(0);
        break;
      case ATTRIBUTE.s:
        // Strings of supported ops are short (auto_pad, mode); long ones are skipped, not kept.
        if (head.wire === WIRE_LEN && head.length <= limits.maxNameBytes) value.s = await c.string(head.length);
        else c.skipValue(head, end, 'AttributeProto');
        break;
      case ATTRIBUTE.ints:
        if (head.wire === WIRE_LEN && head.length > MAX_ATTRIBUTE_VALUES * 10) c.skip(head.length);
        else await readPackedVarints(c, head, end, (value.ints ??= []), `attribute ${JSON.stringify(name)} of ${owner()}`, MAX_ATTRIBUTE_VALUES);
        break;
      case ATTRIBUTE.floats:
        if (head.wire === WIRE_LEN && head.length <= MAX_ATTRIBUTE_VALUES * 4 && head.length % 4 === 0) {
          await c.fill(head.length);
          const bytes = c.bytes(head.length);
          value.floats ??= [];
          for (let i = 0; i < bytes.length; i += 4) value.floats.push(bytes.readFloatLE(i));
        } else c.skipValue(head, end, 'AttributeProto');
        break;
      case ATTRIBUTE.t:
      case ATTRIBUTE.tensors: {
        expectWire(head, WIRE_LEN, head.field === ATTRIBUTE.t ? 'AttributeProto.t' : 'AttributeProto.tensors');
        const context = `attribute ${JSON.stringify(name)} of ${owner()}`;
        value.tensors.push(await readTensor(c, c.pos + head.length, limits, context));
        break;
      }
      default:
        c.skipValue(head, end, 'AttributeProto');
    }
  }
  return [name, value];
}

async function readNode(c: Cursor, end: number, limits: ReadLimits, index: number): Promise<OnnxNode> {
  const node: OnnxNode = {
    index, name: '', opType: '', domain: '', inputs: [], outputs: [], attributes: new Map(), span: { offset: c.pos, length: end - c.pos },
  };
  const edge = async (list: string[], head: Parameters<Cursor['skipValue']>[0], what: string): Promise<void> => {
    if (list.length >= MAX_NODE_EDGES) throw new OnnxFormatError('onnx_too_large', `node #${index} has more than ${MAX_NODE_EDGES} ${what}s`);
    list.push(await readString(c, head, limits, `an ${what} name of node #${index}`));
  };
  while (c.pos < end) {
    const head = await c.head(end, `NodeProto #${index}`);
    switch (head.field) {
      case NODE.input:
        await edge(node.inputs, head, 'input');
        break;
      case NODE.output:
        await edge(node.outputs, head, 'output');
        break;
      case NODE.name:
        node.name = await readString(c, head, limits, `the name of node #${index}`);
        break;
      case NODE.opType:
        node.opType = await readString(c, head, limits, `the op_type of node #${index}`);
        break;
      case NODE.domain:
        node.domain = await readString(c, head, limits, `the domain of node #${index}`);
        break;
      case NODE.attribute: {
        expectWire(head, WIRE_LEN, 'NodeProto.attribute');
        const [name, value] = await readAttribute(c, c.pos + head.length, limits, () => describeNode(node));
        node.attributes.set(name, value);
        break;
      }
      default:
        c.skipValue(head, end, 'NodeProto');
    }
  }
  return node;
}

async function readShape(c: Cursor, end: number, limits: ReadLimits, context: string): Promise<Dim[]> {
  const dims: Dim[] = [];
  while (c.pos < end) {
    const head = await c.head(end, `TensorShapeProto (${context})`);
    if (head.field !== SHAPE.dim) {
      c.skipValue(head, end, 'TensorShapeProto');
      continue;
    }
    expectWire(head, WIRE_LEN, 'TensorShapeProto.dim');
    if (dims.length >= MAX_RANK) throw new OnnxFormatError('onnx_absurd_shape', `${context} declares more than ${MAX_RANK} dimensions`);
    const dimEnd = c.pos + head.length;
    let dim: Dim = null;
    while (c.pos < dimEnd) {
      const dh = await c.head(dimEnd, 'TensorShapeProto.Dimension');
      if (dh.field === DIMENSION.value) dim = readVarintField(c, dh, dimEnd, 'TensorShapeProto.Dimension.dim_value');
      else if (dh.field === DIMENSION.param) dim = await readString(c, dh, limits, `a dim_param of ${context}`);
      else c.skipValue(dh, dimEnd, 'TensorShapeProto.Dimension');
    }
    dims.push(dim);
  }
  return dims;
}

const TYPE_KINDS: Record<number, string> = {
  [TYPE.sequenceType]: 'sequence', [TYPE.mapType]: 'map', [TYPE.sparseTensorType]: 'sparse tensor', [TYPE.optionalType]: 'optional',
};

async function readValueInfo(c: Cursor, end: number, limits: ReadLimits, role: string): Promise<ValueInfo> {
  const info: ValueInfo = { name: '', elemType: 0, type: dataTypeName(0), dims: [], kind: 'none' };
  while (c.pos < end) {
    const head = await c.head(end, `ValueInfoProto (${role})`);
    if (head.field === VALUE_INFO.name) {
      info.name = await readString(c, head, limits, `the name of a graph ${role}`);
      continue;
    }
    if (head.field !== VALUE_INFO.type) {
      c.skipValue(head, end, 'ValueInfoProto');
      continue;
    }
    expectWire(head, WIRE_LEN, 'ValueInfoProto.type');
    const typeEnd = c.pos + head.length;
    const context = `graph ${role} ${JSON.stringify(info.name)}`;
    while (c.pos < typeEnd) {
      const th = await c.head(typeEnd, `TypeProto (${context})`);
      if (th.field === TYPE.tensorType) {
        expectWire(th, WIRE_LEN, 'TypeProto.tensor_type');
        info.kind = 'tensor';
        const tensorEnd = c.pos + th.length;
        while (c.pos < tensorEnd) {
          const h = await c.head(tensorEnd, `TypeProto.Tensor (${context})`);
          if (h.field === TENSOR_TYPE.elemType) info.elemType = readVarintField(c, h, tensorEnd, 'TypeProto.Tensor.elem_type');
          else if (h.field === TENSOR_TYPE.shape) {
            expectWire(h, WIRE_LEN, 'TypeProto.Tensor.shape');
            info.dims = await readShape(c, c.pos + h.length, limits, context);
          } else c.skipValue(h, tensorEnd, 'TypeProto.Tensor');
        }
      } else if (TYPE_KINDS[th.field] !== undefined && th.wire === WIRE_LEN) {
        info.kind = TYPE_KINDS[th.field]!;
        c.skip(th.length);
      } else c.skipValue(th, typeEnd, 'TypeProto');
    }
  }
  info.type = dataTypeName(info.elemType);
  return info;
}

async function readGraph(c: Cursor, end: number, limits: ReadLimits, model: OnnxModel): Promise<void> {
  while (c.pos < end) {
    const head = await c.head(end, 'GraphProto');
    switch (head.field) {
      case GRAPH.node:
        expectWire(head, WIRE_LEN, 'GraphProto.node');
        if (model.nodes.length >= limits.maxNodes) throw new OnnxFormatError('onnx_too_large', `the graph has more than ${limits.maxNodes} nodes`);
        model.nodes.push(await readNode(c, c.pos + head.length, limits, model.nodes.length));
        break;
      case GRAPH.name:
        model.graphName = await readString(c, head, limits, 'the graph name');
        break;
      case GRAPH.initializer:
        expectWire(head, WIRE_LEN, 'GraphProto.initializer');
        if (model.initializers.length >= limits.maxInitializers) {
          throw new OnnxFormatError('onnx_too_large', `the graph has more than ${limits.maxInitializers} initializers`);
        }
        model.initializers.push(await readTensor(c, c.pos + head.length, limits, `initializer #${model.initializers.length}`));
        break;
      case GRAPH.sparseInitializer:
        model.sparseInitializers++;
        c.skipValue(head, end, 'GraphProto');
        break;
      case GRAPH.input:
      case GRAPH.output: {
        const role = head.field === GRAPH.input ? 'input' : 'output';
        expectWire(head, WIRE_LEN, `GraphProto.${role}`);
        const info = await readValueInfo(c, c.pos + head.length, limits, role);
        (head.field === GRAPH.input ? model.declaredInputs : model.outputs).push(info);
        break;
      }
      default:
        c.skipValue(head, end, 'GraphProto');
    }
  }
}

const MODEL_FIELD_WIRES: Record<number, number> = {
  [MODEL.irVersion]: WIRE_VARINT, [MODEL.producerName]: WIRE_LEN, [MODEL.producerVersion]: WIRE_LEN, [MODEL.domain]: WIRE_LEN,
  [MODEL.modelVersion]: WIRE_VARINT, [MODEL.docString]: WIRE_LEN, [MODEL.graph]: WIRE_LEN, [MODEL.opsetImport]: WIRE_LEN,
  [MODEL.metadataProps]: WIRE_LEN, [MODEL.trainingInfo]: WIRE_LEN, [MODEL.functions]: WIRE_LEN,
};

async function readModelFrom(c: Cursor, limits: ReadLimits): Promise<OnnxModel> {
  const end = c.size;
  const model: OnnxModel = {
    bytes: c.size, irVersion: null, opsetImports: [], producer: { name: '', version: '' }, graphName: '',
    graph: { keyOffset: -1, offset: -1, length: 0 }, nodes: [], initializers: [], declaredInputs: [], outputs: [], sparseInitializers: 0,
  };
  while (c.pos < end) {
    const head = await c.head(end, 'ModelProto');
    // Being strict at the top level is what tells a random or foreign file from a model: unknown
    // fields are legal protobuf, but every ONNX writer emits only these.
    if (MODEL_FIELD_WIRES[head.field] !== head.wire) {
      throw new OnnxFormatError(
        'onnx_not_protobuf',
        `byte ${head.at} holds field ${head.field} (${WIRE_NAMES[head.wire]}), which is not part of an ONNX ModelProto: the file is not an ONNX model; export it with torch.onnx.export or onnx.save_model`,
      );
    }
    switch (head.field) {
      case MODEL.irVersion:
        model.irVersion = c.varint(end, 'ModelProto.ir_version');
        break;
      case MODEL.producerName:
        model.producer.name = await readString(c, head, limits, 'producer_name');
        break;
      case MODEL.producerVersion:
        model.producer.version = await readString(c, head, limits, 'producer_version');
        break;
      case MODEL.graph:
        if (model.graph.offset >= 0) throw new OnnxFormatError('onnx_not_a_model', 'the file holds two graphs; an ONNX model has exactly one');
        model.graph = { keyOffset: head.at, offset: c.pos, length: head.length };
        await readGraph(c, c.pos + head.length, limits, model);
        break;
      case MODEL.opsetImport: {
        const entryEnd = c.pos + head.length;
        const entry = { domain: '', version: 0 };
        while (c.pos < entryEnd) {
          const oh = await c.head(entryEnd, 'OperatorSetIdProto');
          if (oh.field === OPSET.domain) entry.domain = await readString(c, oh, limits, 'an opset domain');
          else if (oh.field === OPSET.version) entry.version = readVarintField(c, oh, entryEnd, 'OperatorSetIdProto.version');
          else c.skipValue(oh, entryEnd, 'OperatorSetIdProto');
        }
        model.opsetImports.push(entry);
        break;
      }
      default:
        c.skipValue(head, end, 'ModelProto');
    }
  }
  if (model.graph.offset < 0) {
    throw new OnnxFormatError('onnx_not_a_model', 'the file parses as protobuf but holds no graph: it is not an ONNX model (or an empty one)');
  }
  return model;
}

/** Reads a model's skeleton from a source; the source stays open (the caller closes it). */
export function readModel(source: ByteSource, limits: ReadLimits = DEFAULT_READ_LIMITS): Promise<OnnxModel> {
  return readModelFrom(new Cursor(source), limits);
}

/** Reads the skeleton of the model file at `path` in one pass through a 1 MiB window. */
export async function readModelFile(path: string, limits: ReadLimits = DEFAULT_READ_LIMITS): Promise<OnnxModel> {
  const source = await openFileSource(path);
  try {
    return await readModel(source, limits);
  } finally {
    await source.close();
  }
}

/** The same for a model already in memory (a small derived model). */
export function readModelBytes(bytes: Uint8Array, limits: ReadLimits = DEFAULT_READ_LIMITS): Promise<OnnxModel> {
  return readModel(bufferSource(bytes), limits);
}

/** Graph inputs that are not initializers: what a caller feeds. Before IR 4 exporters listed weights as inputs too. */
export function fedInputs(model: OnnxModel): ValueInfo[] {
  const initializers = new Set(model.initializers.map((t) => t.name));
  return model.declaredInputs.filter((i) => !initializers.has(i.name));
}
