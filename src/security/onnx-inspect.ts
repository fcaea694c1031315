// Inspects an uploaded .onnx file before anything else touches it (onnxruntime, the engine): a small
// protobuf wire-format reader walks the file from disk, keeping only the model's skeleton (opsets, graph
// inputs/outputs, node op types, initializer headers) and skipping tensor payloads by seeking, so a 600 MB
// model costs a few reads and a few kilobytes of memory. Field numbers are those of onnx/onnx.proto.
import { open, type FileHandle } from 'node:fs/promises';
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

export interface OnnxLimits {
  /** Largest dimension a graph input/output or initializer may declare. */
  maxDim: number;
  /** Largest element count of one initializer. */
  maxInitializerElements: number;
  maxNodes: number;
  maxInitializers: number;
  /** Longest node/tensor/op name, in bytes; longer strings are a sign of a crafted file. */
  maxNameBytes: number;
}

export const DEFAULT_ONNX_LIMITS: OnnxLimits = {
  maxDim: 1_000_000,
  // VGG-16's fc6 holds 102.8 M weights; twice that leaves room without admitting absurd tensors.
  maxInitializerElements: 200_000_000,
  maxNodes: 100_000,
  maxInitializers: 100_000,
  maxNameBytes: 4096,
};

export type Dim = number | string | null;

export interface TensorInfo {
  name: string;
  /** ONNX TensorProto.DataType code */
  elemType: number;
  /** 'float32', 'int64', ... or 'unknown(N)' */
  elemTypeName: string;
  /** A number, a symbolic name (dim_param) or null when the dimension is not declared. */
  dims: Dim[];
}

export interface NodeInfo {
  name: string;
  opType: string;
  domain: string;
}

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
}

// TensorProto.DataType → [name, bytes per element]; 4-bit types pack two elements per byte.
const DATA_TYPES: Record<number, [string, number]> = {
  1: ['float32', 4],
  2: ['uint8', 1],
  3: ['int8', 1],
  4: ['uint16', 2],
  5: ['int16', 2],
  6: ['int32', 4],
  7: ['int64', 8],
  8: ['string', 0],
  9: ['bool', 1],
  10: ['float16', 2],
  11: ['float64', 8],
  12: ['uint32', 4],
  13: ['uint64', 8],
  14: ['complex64', 8],
  15: ['complex128', 16],
  16: ['bfloat16', 2],
  17: ['float8e4m3fn', 1],
  18: ['float8e4m3fnuz', 1],
  19: ['float8e5m2', 1],
  20: ['float8e5m2fnuz', 1],
  21: ['uint4', 0.5],
  22: ['int4', 0.5],
  23: ['float4e2m1', 0.5],
};

export function dataTypeName(code: number): string {
  return DATA_TYPES[code]?.[0] ?? `unknown(${code})`;
}

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;
const WIRE_NAMES = ['varint', 'fixed64', 'length-delimited', 'group start', 'group end', 'fixed32', '6', '7'];

const BUFFER_BYTES = 1 << 20;
/** Enough for a field key and a varint value: each at most 10 bytes. */
const FIELD_HEAD_BYTES = 20;

/**
 * A forward-only window over the file. `pos` is an absolute offset; bytes are read from disk only when
 * the window runs dry, so the parser's hot loop stays synchronous.
 */
class FileCursor {
  pos = 0;
  private readonly buf = Buffer.allocUnsafe(BUFFER_BYTES);
  private bufStart = 0;
  private bufLen = 0;

  constructor(
    private readonly file: FileHandle,
    readonly size: number,
  ) {}

  buffered(): number {
    return this.bufStart + this.bufLen - this.pos;
  }

  /** Makes min(n, bytes left in the file) bytes available from `pos` on; n ≤ BUFFER_BYTES. */
  async fill(n: number): Promise<void> {
    const want = Math.min(n, this.size - this.pos);
    if (this.buffered() >= want) return;
    const keepFrom = this.pos - this.bufStart;
    const kept = Math.max(0, this.bufLen - keepFrom);
    if (kept > 0) this.buf.copy(this.buf, 0, keepFrom, this.bufLen);
    this.bufStart = this.pos;
    this.bufLen = kept;
    while (this.bufLen < want) {
      const { bytesRead } = await this.file.read(this.buf, this.bufLen, BUFFER_BYTES - this.bufLen, this.pos + this.bufLen);
      if (bytesRead === 0) break;
      this.bufLen += bytesRead;
    }
  }

  /** Reads a varint that must end before `end`; returns it as a signed 64-bit value (approximate past 2^53). */
  varint(end: number, what: string): number {
    let result = 0;
    let scale = 1;
    let big: bigint | null = null;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= end) throw this.overrun(end, what);
      if (this.buffered() <= 0) throw new Error(`internal: varint read without a filled buffer at byte ${this.pos}`);
      const byte = this.buf[this.pos - this.bufStart]!;
      this.pos++;
      if (i < 7) {
        result += (byte & 0x7f) * scale;
        scale *= 128;
      } else {
        big ??= BigInt(result);
        big += BigInt(byte & 0x7f) << BigInt(7 * i);
      }
      if ((byte & 0x80) === 0) {
        return big === null ? result : Number(BigInt.asIntN(64, big));
      }
    }
    throw new InputRejected('onnx_not_protobuf', `${what} at byte ${this.pos - 10} is a varint longer than 10 bytes: the file is not a protobuf (ONNX) model`);
  }

  bytes(n: number): Buffer {
    const start = this.pos - this.bufStart;
    this.pos += n;
    return this.buf.subarray(start, start + n);
  }

  /** Advances past `n` bytes; scanning them is up to the caller when it needs their content. */
  skip(n: number): void {
    this.pos += n;
  }

  overrun(end: number, what: string): InputRejected {
    if (end >= this.size) {
      return new InputRejected(
        'onnx_truncated',
        `the file ends (after ${this.size} bytes) in the middle of ${what}: it is truncated or not an ONNX model; upload the complete file`,
      );
    }
    return new InputRejected('onnx_not_protobuf', `${what} at byte ${this.pos} runs past the end of its enclosing message: the file is corrupt or not an ONNX model`);
  }
}

interface FieldHead {
  field: number;
  wire: number;
  /** For WIRE_LEN: the payload length, already checked to fit in the enclosing message. */
  length: number;
}

/** Reads one field key (and the length of a length-delimited field). */
async function readHead(c: FileCursor, end: number, message: string): Promise<FieldHead> {
  if (c.buffered() < FIELD_HEAD_BYTES) await c.fill(FIELD_HEAD_BYTES);
  const at = c.pos;
  const key = c.varint(end, `a field key of ${message}`);
  const field = Math.floor(key / 8);
  const wire = key & 7;
  if (field <= 0 || wire === 3 || wire === 4 || wire > 5) {
    throw new InputRejected(
      'onnx_not_protobuf',
      `byte ${at} holds field number ${field} with wire type ${WIRE_NAMES[wire]} inside ${message}: the file is not a protobuf-encoded ONNX model`,
    );
  }
  let length = 0;
  if (wire === WIRE_LEN) {
    length = c.varint(end, `the length of field ${field} of ${message}`);
    if (length < 0) {
      throw new InputRejected('onnx_not_protobuf', `field ${field} of ${message} at byte ${at} declares a negative length: the file is not a protobuf (ONNX) model`);
    }
    if (c.pos + length > end) {
      if (c.pos + length > c.size) {
        throw new InputRejected(
          'onnx_truncated',
          `field ${field} of ${message} at byte ${at} declares ${length} bytes but the file ends after ${c.size} bytes: the upload is truncated (or not an ONNX model)`,
        );
      }
      throw new InputRejected('onnx_not_protobuf', `field ${field} of ${message} at byte ${at} declares ${length} bytes, more than its enclosing message holds: the file is corrupt`);
    }
  }
  return { field, wire, length };
}

function skipValue(c: FileCursor, head: FieldHead, end: number, message: string): void {
  switch (head.wire) {
    case WIRE_VARINT:
      c.varint(end, `field ${head.field} of ${message}`);
      return;
    case WIRE_FIXED64:
    case WIRE_FIXED32: {
      const n = head.wire === WIRE_FIXED64 ? 8 : 4;
      if (c.pos + n > end) throw c.overrun(end, `field ${head.field} of ${message}`);
      c.skip(n);
      return;
    }
    default:
      c.skip(head.length);
  }
}

function expectWire(head: FieldHead, wire: number, what: string): void {
  if (head.wire !== wire) {
    throw new InputRejected(
      'onnx_not_protobuf',
      `${what} (field ${head.field}) is encoded as ${WIRE_NAMES[head.wire]}, not ${WIRE_NAMES[wire]}: the file is not a valid ONNX model`,
    );
  }
}

async function readString(c: FileCursor, head: FieldHead, limits: OnnxLimits, what: string): Promise<string> {
  expectWire(head, WIRE_LEN, what);
  if (head.length > limits.maxNameBytes) {
    throw new InputRejected('onnx_too_large', `${what} is ${head.length} bytes long (limit ${limits.maxNameBytes}): names this long are not produced by exporters`);
  }
  await c.fill(head.length);
  return c.bytes(head.length).toString('utf8');
}

async function readVarintField(c: FileCursor, head: FieldHead, end: number, name: string, message: string): Promise<number> {
  expectWire(head, WIRE_VARINT, `${message}.${name}`);
  return c.varint(end, `${message}.${name}`);
}

/** Packed repeated int64 (dims) — exporters write them packed, older ones unpacked; both are legal. */
async function readPackedVarints(c: FileCursor, head: FieldHead, messageEnd: number, out: number[], what: string, maxCount: number): Promise<void> {
  if (head.wire === WIRE_VARINT) {
    if (out.length >= maxCount) throw new InputRejected('onnx_absurd_shape', `${what} lists more than ${maxCount} values`);
    out.push(c.varint(messageEnd, what));
    return;
  }
  expectWire(head, WIRE_LEN, what);
  const end = c.pos + head.length;
  while (c.pos < end) {
    if (out.length >= maxCount) throw new InputRejected('onnx_absurd_shape', `${what} lists more than ${maxCount} values`);
    if (c.buffered() < 10) await c.fill(FIELD_HEAD_BYTES);
    out.push(c.varint(end, what));
  }
}

/** Counts the varints in a packed field without decoding them: one per byte with the high bit clear. */
async function countPackedVarints(c: FileCursor, length: number): Promise<number> {
  let count = 0;
  let left = length;
  while (left > 0) {
    await c.fill(Math.min(left, BUFFER_BYTES));
    const chunk = c.bytes(Math.min(left, c.buffered()));
    for (const byte of chunk) if ((byte & 0x80) === 0) count++;
    left -= chunk.length;
  }
  return count;
}

const MAX_RANK = 64;

interface TensorHeader {
  name: string;
  dims: number[];
  dataType: number;
  external: boolean;
  externalLocation: string | null;
  /** Elements actually stored, per storage field (raw_data counted in bytes). */
  rawBytes: number | null;
  storedElements: number;
  storedFields: string[];
}

async function parseTensor(c: FileCursor, end: number, limits: OnnxLimits, context: string): Promise<TensorHeader> {
  const t: TensorHeader = { name: '', dims: [], dataType: 0, external: false, externalLocation: null, rawBytes: null, storedElements: 0, storedFields: [] };
  const msg = `TensorProto (${context})`;
  const stored = (field: string, elements: number): void => {
    t.storedElements += elements;
    if (!t.storedFields.includes(field)) t.storedFields.push(field);
  };
  while (c.pos < end) {
    const head = await readHead(c, end, msg);
    switch (head.field) {
      case 1:
        await readPackedVarints(c, head, end, t.dims, `dims of ${context}`, MAX_RANK);
        break;
      case 2:
        t.dataType = await readVarintField(c, head, end, 'data_type', msg);
        break;
      case 8:
        t.name = await readString(c, head, limits, `the name of ${context}`);
        break;
      case 9:
        expectWire(head, WIRE_LEN, `raw_data of ${context}`);
        t.rawBytes = (t.rawBytes ?? 0) + head.length;
        c.skip(head.length);
        if (!t.storedFields.includes('raw_data')) t.storedFields.push('raw_data');
        break;
      case 4: // float_data: fixed32
      case 10: {
        // double_data: fixed64
        const width = head.field === 4 ? 4 : 8;
        const field = head.field === 4 ? 'float_data' : 'double_data';
        if (head.wire === WIRE_LEN) {
          if (head.length % width !== 0) {
            throw new InputRejected('onnx_not_protobuf', `${field} of ${context} holds ${head.length} bytes, not a multiple of ${width}: the file is corrupt`);
          }
          stored(field, head.length / width);
          c.skip(head.length);
        } else {
          expectWire(head, width === 4 ? WIRE_FIXED32 : WIRE_FIXED64, `${field} of ${context}`);
          skipValue(c, head, end, msg);
          stored(field, 1);
        }
        break;
      }
      case 5: // int32_data, int64_data, uint64_data: varints
      case 7:
      case 11: {
        const field = head.field === 5 ? 'int32_data' : head.field === 7 ? 'int64_data' : 'uint64_data';
        if (head.wire === WIRE_LEN) {
          stored(field, await countPackedVarints(c, head.length));
        } else {
          expectWire(head, WIRE_VARINT, `${field} of ${context}`);
          skipValue(c, head, end, msg);
          stored(field, 1);
        }
        break;
      }
      case 6:
        expectWire(head, WIRE_LEN, `string_data of ${context}`);
        c.skip(head.length);
        stored('string_data', 1);
        break;
      case 13: {
        expectWire(head, WIRE_LEN, `external_data of ${context}`);
        t.external = true;
        const entryEnd = c.pos + head.length;
        while (c.pos < entryEnd) {
          const kv = await readHead(c, entryEnd, 'StringStringEntryProto');
          if (kv.field === 1 && kv.wire === WIRE_LEN && kv.length <= limits.maxNameBytes) {
            await c.fill(kv.length);
            const key = c.bytes(kv.length).toString('utf8');
            if (key === 'location') {
              const value = await readHead(c, entryEnd, 'StringStringEntryProto');
              if (value.field === 2 && value.wire === WIRE_LEN && value.length <= limits.maxNameBytes) {
                await c.fill(value.length);
                t.externalLocation = c.bytes(value.length).toString('utf8');
              } else {
                skipValue(c, value, entryEnd, 'StringStringEntryProto');
              }
            }
          } else {
            skipValue(c, kv, entryEnd, 'StringStringEntryProto');
          }
        }
        break;
      }
      case 14:
        if ((await readVarintField(c, head, end, 'data_location', msg)) === 1) t.external = true;
        break;
      default:
        skipValue(c, head, end, msg);
    }
  }
  return t;
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
  const type = DATA_TYPES[t.dataType];
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
  if (elements > limits.maxInitializerElements) {
    throw new InputRejected(
      'onnx_absurd_shape',
      `${context} declares dims [${t.dims.join(', ')}] = ${elements} elements, over the limit of ${limits.maxInitializerElements} elements per tensor`,
    );
  }
  if (t.storedFields.length > 1) {
    throw new InputRejected('onnx_initializer_size', `${context} stores its data in several fields (${t.storedFields.join(', ')}); a tensor uses exactly one`);
  }
  const [typeName, width] = type;
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

async function parseTypeProto(c: FileCursor, end: number, limits: OnnxLimits, context: string): Promise<{ elemType: number; dims: Dim[]; kind: string }> {
  let elemType = 0;
  let dims: Dim[] = [];
  let kind = 'none';
  while (c.pos < end) {
    const head = await readHead(c, end, `TypeProto (${context})`);
    if (head.field === 1) {
      expectWire(head, WIRE_LEN, 'TypeProto.tensor_type');
      kind = 'tensor';
      const tensorEnd = c.pos + head.length;
      while (c.pos < tensorEnd) {
        const th = await readHead(c, tensorEnd, `TypeProto.Tensor (${context})`);
        if (th.field === 1) {
          elemType = await readVarintField(c, th, tensorEnd, 'elem_type', 'TypeProto.Tensor');
        } else if (th.field === 2) {
          expectWire(th, WIRE_LEN, 'TypeProto.Tensor.shape');
          dims = await parseShape(c, c.pos + th.length, limits, context);
        } else {
          skipValue(c, th, tensorEnd, 'TypeProto.Tensor');
        }
      }
    } else if (head.field === 4 || head.field === 5 || head.field === 8 || head.field === 9) {
      kind = { 4: 'sequence', 5: 'map', 8: 'sparse tensor', 9: 'optional' }[head.field]!;
      c.skip(head.length);
    } else {
      skipValue(c, head, end, 'TypeProto');
    }
  }
  return { elemType, dims, kind };
}

async function parseShape(c: FileCursor, end: number, limits: OnnxLimits, context: string): Promise<Dim[]> {
  const dims: Dim[] = [];
  while (c.pos < end) {
    const head = await readHead(c, end, `TensorShapeProto (${context})`);
    if (head.field !== 1) {
      skipValue(c, head, end, 'TensorShapeProto');
      continue;
    }
    expectWire(head, WIRE_LEN, 'TensorShapeProto.dim');
    if (dims.length >= MAX_RANK) throw new InputRejected('onnx_absurd_shape', `${context} declares more than ${MAX_RANK} dimensions`);
    const dimEnd = c.pos + head.length;
    let dim: Dim = null;
    while (c.pos < dimEnd) {
      const dh = await readHead(c, dimEnd, 'TensorShapeProto.Dimension');
      if (dh.field === 1) {
        const value = await readVarintField(c, dh, dimEnd, 'dim_value', 'TensorShapeProto.Dimension');
        if (value < 0 || value > limits.maxDim) {
          throw new InputRejected('onnx_absurd_shape', `${context} declares dimension ${dims.length} = ${value}: each dimension must be between 0 and ${limits.maxDim}`);
        }
        dim = value;
      } else if (dh.field === 2) {
        dim = await readString(c, dh, limits, `a dim_param of ${context}`);
      } else {
        skipValue(c, dh, dimEnd, 'TensorShapeProto.Dimension');
      }
    }
    dims.push(dim);
  }
  return dims;
}

async function parseValueInfo(c: FileCursor, end: number, limits: OnnxLimits, role: string): Promise<TensorInfo> {
  let name = '';
  let type: { elemType: number; dims: Dim[]; kind: string } = { elemType: 0, dims: [], kind: 'none' };
  while (c.pos < end) {
    const head = await readHead(c, end, `ValueInfoProto (${role})`);
    if (head.field === 1) name = await readString(c, head, limits, `the name of a graph ${role}`);
    else if (head.field === 2) {
      expectWire(head, WIRE_LEN, 'ValueInfoProto.type');
      type = await parseTypeProto(c, c.pos + head.length, limits, `graph ${role} ${quote(name)}`);
    } else skipValue(c, head, end, 'ValueInfoProto');
  }
  if (type.kind !== 'tensor') {
    throw new InputRejected('onnx_io', `graph ${role} ${quote(name)} is a ${type.kind === 'none' ? 'value without a type' : type.kind}; the service compresses models whose inputs and outputs are tensors`);
  }
  return { name, elemType: type.elemType, elemTypeName: dataTypeName(type.elemType), dims: type.dims };
}

async function parseNode(c: FileCursor, end: number, limits: OnnxLimits, index: number): Promise<NodeInfo> {
  const node: NodeInfo = { name: '', opType: '', domain: '' };
  while (c.pos < end) {
    const head = await readHead(c, end, `NodeProto #${index}`);
    switch (head.field) {
      case 3:
        node.name = await readString(c, head, limits, `the name of node #${index}`);
        break;
      case 4:
        node.opType = await readString(c, head, limits, `the op_type of node #${index}`);
        break;
      case 7:
        node.domain = await readString(c, head, limits, `the domain of node #${index}`);
        break;
      case 5:
        expectWire(head, WIRE_LEN, 'NodeProto.attribute');
        await parseAttribute(c, c.pos + head.length, limits, () => describeNode(node, index));
        break;
      default:
        skipValue(c, head, end, 'NodeProto');
    }
  }
  return node;
}

function describeNode(node: NodeInfo, index: number): string {
  return `node ${node.name ? quote(node.name) : `#${index}`}${node.opType ? ` (${node.opType})` : ''}`;
}

/** Attributes matter only where they embed tensors (Constant's value): those must not point outside the file. */
async function parseAttribute(c: FileCursor, end: number, limits: OnnxLimits, owner: () => string): Promise<void> {
  let name = '';
  while (c.pos < end) {
    const head = await readHead(c, end, 'AttributeProto');
    if (head.field === 1) name = await readString(c, head, limits, 'an attribute name');
    else if (head.field === 5 || head.field === 10) {
      expectWire(head, WIRE_LEN, head.field === 5 ? 'AttributeProto.t' : 'AttributeProto.tensors');
      const context = `attribute ${quote(name)} of ${owner()}`;
      const t = await parseTensor(c, c.pos + head.length, limits, context);
      checkTensor(t, limits, `the tensor in ${context}`);
    } else skipValue(c, head, end, 'AttributeProto');
  }
}

interface GraphParts {
  name: string;
  inputs: TensorInfo[];
  outputs: TensorInfo[];
  nodes: NodeInfo[];
  initializers: InitializerInfo[];
}

async function parseGraph(c: FileCursor, end: number, limits: OnnxLimits): Promise<GraphParts> {
  const g: GraphParts = { name: '', inputs: [], outputs: [], nodes: [], initializers: [] };
  while (c.pos < end) {
    const head = await readHead(c, end, 'GraphProto');
    switch (head.field) {
      case 1:
        expectWire(head, WIRE_LEN, 'GraphProto.node');
        if (g.nodes.length >= limits.maxNodes) throw new InputRejected('onnx_too_large', `the graph has more than ${limits.maxNodes} nodes`);
        g.nodes.push(await parseNode(c, c.pos + head.length, limits, g.nodes.length));
        break;
      case 2:
        g.name = await readString(c, head, limits, 'the graph name');
        break;
      case 5: {
        expectWire(head, WIRE_LEN, 'GraphProto.initializer');
        if (g.initializers.length >= limits.maxInitializers) {
          throw new InputRejected('onnx_too_large', `the graph has more than ${limits.maxInitializers} initializers`);
        }
        const index = g.initializers.length;
        const t = await parseTensor(c, c.pos + head.length, limits, `initializer #${index}`);
        const elements = checkTensor(t, limits, `initializer ${quote(t.name)}`);
        g.initializers.push({ name: t.name, dims: t.dims, dataType: t.dataType, elements });
        break;
      }
      case 15:
        throw new InputRejected('onnx_sparse_initializer', 'the graph has a sparse initializer; the engine needs dense weights: densify it (onnx.numpy_helper) before uploading');
      case 11:
      case 12: {
        expectWire(head, WIRE_LEN, head.field === 11 ? 'GraphProto.input' : 'GraphProto.output');
        const role = head.field === 11 ? 'input' : 'output';
        const info = await parseValueInfo(c, c.pos + head.length, limits, role);
        (head.field === 11 ? g.inputs : g.outputs).push(info);
        break;
      }
      default:
        skipValue(c, head, end, 'GraphProto');
    }
  }
  return g;
}

const MODEL_FIELDS: Record<number, [string, number]> = {
  1: ['ir_version', WIRE_VARINT],
  2: ['producer_name', WIRE_LEN],
  3: ['producer_version', WIRE_LEN],
  4: ['domain', WIRE_LEN],
  5: ['model_version', WIRE_VARINT],
  6: ['doc_string', WIRE_LEN],
  7: ['graph', WIRE_LEN],
  8: ['opset_import', WIRE_LEN],
  14: ['metadata_props', WIRE_LEN],
  20: ['training_info', WIRE_LEN],
  25: ['functions', WIRE_LEN],
};

async function parseModel(c: FileCursor, limits: OnnxLimits): Promise<OnnxSummary> {
  const end = c.size;
  let irVersion: number | null = null;
  let graph: GraphParts | null = null;
  const opsetImports: { domain: string; version: number }[] = [];
  const producer = { name: '', version: '' };
  while (c.pos < end) {
    const at = c.pos;
    const head = await readHead(c, end, 'ModelProto');
    const known = MODEL_FIELDS[head.field];
    // Being strict at the top level is what tells a random or foreign file from a model: unknown
    // fields are legal protobuf, but every ONNX writer emits only these.
    if (known === undefined || known[1] !== head.wire) {
      throw new InputRejected(
        'onnx_not_protobuf',
        `byte ${at} holds field ${head.field} (${WIRE_NAMES[head.wire]}), which is not part of an ONNX ModelProto: the file is not an ONNX model; export it with torch.onnx.export or onnx.save_model`,
      );
    }
    switch (head.field) {
      case 1:
        irVersion = c.varint(end, 'ModelProto.ir_version');
        break;
      case 2:
        producer.name = await readString(c, head, limits, 'producer_name');
        break;
      case 3:
        producer.version = await readString(c, head, limits, 'producer_version');
        break;
      case 7:
        if (graph !== null) throw new InputRejected('onnx_not_a_model', 'the file holds two graphs; an ONNX model has exactly one');
        graph = await parseGraph(c, c.pos + head.length, limits);
        break;
      case 8: {
        const entryEnd = c.pos + head.length;
        const entry = { domain: '', version: 0 };
        while (c.pos < entryEnd) {
          const oh = await readHead(c, entryEnd, 'OperatorSetIdProto');
          if (oh.field === 1) entry.domain = await readString(c, oh, limits, 'an opset domain');
          else if (oh.field === 2) entry.version = await readVarintField(c, oh, entryEnd, 'version', 'OperatorSetIdProto');
          else skipValue(c, oh, entryEnd, 'OperatorSetIdProto');
        }
        opsetImports.push(entry);
        break;
      }
      default:
        skipValue(c, head, end, 'ModelProto');
    }
  }

  if (graph === null) {
    throw new InputRejected('onnx_not_a_model', 'the file parses as protobuf but holds no graph: it is not an ONNX model (or an empty one)');
  }
  if (irVersion === null || irVersion < 3) {
    throw new InputRejected('onnx_ir_version', `ir_version is ${irVersion ?? 'missing'}; the service needs ONNX IR version 3 or later (opset-based models); re-export the model with a current exporter`);
  }
  const defaultOpset = opsetImports.find((o) => o.domain === '' || o.domain === 'ai.onnx');
  if (defaultOpset === undefined) {
    throw new InputRejected('onnx_opset', 'the model imports no version of the default ONNX operator set (ai.onnx); re-export it with opset 13');
  }
  if (defaultOpset.version < MIN_OPSET || defaultOpset.version > MAX_OPSET) {
    throw new InputRejected(
      'onnx_opset',
      `the model uses ONNX opset ${defaultOpset.version}; supported opsets are ${MIN_OPSET} to ${MAX_OPSET}: re-export with opset_version=13 (torch.onnx.export) or convert it with onnx.version_converter`,
    );
  }

  checkOps(graph.nodes);

  const initializerNames = new Set(graph.initializers.map((i) => i.name));
  // Before IR 4 exporters listed every initializer as a graph input too; those are weights, not feeds.
  const inputs = graph.inputs.filter((i) => !initializerNames.has(i.name));
  if (inputs.length === 0) throw new InputRejected('onnx_io', 'the graph declares no input besides its weights; a model needs at least one input tensor');
  if (graph.outputs.length === 0) throw new InputRejected('onnx_io', 'the graph declares no output');

  const opCounts: Record<string, number> = {};
  for (const n of graph.nodes) opCounts[n.opType] = (opCounts[n.opType] ?? 0) + 1;
  let params = 0;
  for (const i of graph.initializers) params += i.elements;

  return {
    bytes: c.size,
    irVersion,
    opset: defaultOpset.version,
    opsetImports,
    producer,
    graphName: graph.name,
    inputs,
    outputs: graph.outputs,
    nodes: graph.nodes,
    opCounts,
    initializers: graph.initializers,
    params,
  };
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
 * Nothing here executes or allocates according to what the file declares.
 */
export async function inspectOnnx(path: string, limits: OnnxLimits = DEFAULT_ONNX_LIMITS): Promise<OnnxSummary> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    if (size === 0) throw new InputRejected('onnx_empty', 'the uploaded file is empty; upload a .onnx model');
    return await parseModel(new FileCursor(file, size), limits);
  } finally {
    await file.close();
  }
}
