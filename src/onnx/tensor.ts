// TensorProto headers: name, dims, type, where the data is and how much of it there is. Payloads are
// skipped, except those of tiny tensors (shape operands of Reshape, Constant pads), whose values the
// upload shape inference needs.
import { Cursor, expectWire, OnnxFormatError, type FieldHead } from './cursor.js';
import { FLOAT32, INT32, INT64 } from './dtypes.js';
import { DATA_LOCATION_EXTERNAL, STRING_ENTRY, TENSOR } from './fields.js';
import type { Span } from './types.js';
import { decodeVarint, WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_VARINT } from './wire.js';

export const MAX_RANK = 64;
/** Tensors up to this many elements keep their values (when int32, int64 or float32). */
export const SMALL_TENSOR_ELEMENTS = 64;

export interface ReadLimits {
  /** Longest node/tensor/op name, in bytes; longer strings are a sign of a crafted file. */
  maxNameBytes: number;
  maxNodes: number;
  maxInitializers: number;
}

export interface TensorHeader {
  name: string;
  dims: number[];
  dataType: number;
  external: boolean;
  externalLocation: string | null;
  /** bytes in raw_data; null when the tensor has none */
  rawBytes: number | null;
  /** absolute file offset of the raw_data bytes; null when stored otherwise */
  rawDataOffset: number | null;
  /** elements stored in the typed fields (float_data, int64_data, ...) */
  storedElements: number;
  storedFields: string[];
  /** the values of a small int32/int64/float32 tensor; null for others */
  values: number[] | null;
  /** the TensorProto message in the file */
  span: Span;
}

const SMALL_RAW_BYTES = SMALL_TENSOR_ELEMENTS * 8;

export async function readString(c: Cursor, head: FieldHead, limits: ReadLimits, what: string): Promise<string> {
  expectWire(head, WIRE_LEN, what);
  if (head.length > limits.maxNameBytes) {
    throw new OnnxFormatError('onnx_too_large', `${what} is ${head.length} bytes long (limit ${limits.maxNameBytes}): names this long are not produced by exporters`);
  }
  return c.string(head.length);
}

export function readVarintField(c: Cursor, head: FieldHead, end: number, what: string): number {
  expectWire(head, WIRE_VARINT, what);
  return c.varint(end, what);
}

/** Repeated int64 (dims, ints) — exporters write them packed, older ones unpacked; both are legal. */
export async function readPackedVarints(c: Cursor, head: FieldHead, messageEnd: number, out: number[], what: string, maxCount: number): Promise<void> {
  if (head.wire === WIRE_VARINT) {
    if (out.length >= maxCount) throw new OnnxFormatError('onnx_absurd_shape', `${what} lists more than ${maxCount} values`);
    out.push(c.varint(messageEnd, what));
    return;
  }
  expectWire(head, WIRE_LEN, what);
  const end = c.pos + head.length;
  while (c.pos < end) {
    if (out.length >= maxCount) throw new OnnxFormatError('onnx_absurd_shape', `${what} lists more than ${maxCount} values`);
    if (c.buffered() < 10) await c.fill(20);
    out.push(c.varint(end, what));
  }
}

/** Counts the varints in a packed field without decoding them: one per byte with the high bit clear. */
async function countPackedVarints(c: Cursor, length: number): Promise<number> {
  let count = 0;
  let left = length;
  while (left > 0) {
    await c.fill(Math.min(left, 1 << 20));
    const chunk = c.bytes(Math.min(left, c.buffered()));
    for (const byte of chunk) if ((byte & 0x80) === 0) count++;
    left -= chunk.length;
  }
  return count;
}

function decodePacked(bytes: Buffer): number[] {
  const values: number[] = [];
  for (let pos = 0; pos < bytes.length;) {
    const [value, read] = decodeVarint(bytes, pos, bytes.length);
    if (read <= 0) return values;
    values.push(value);
    pos += read;
  }
  return values;
}

function decodeRaw(raw: Buffer, dataType: number): number[] | null {
  const out: number[] = [];
  if (dataType === INT64 && raw.length % 8 === 0) for (let i = 0; i < raw.length; i += 8) out.push(Number(raw.readBigInt64LE(i)));
  else if (dataType === INT32 && raw.length % 4 === 0) for (let i = 0; i < raw.length; i += 4) out.push(raw.readInt32LE(i));
  else if (dataType === FLOAT32 && raw.length % 4 === 0) for (let i = 0; i < raw.length; i += 4) out.push(raw.readFloatLE(i));
  else return null;
  return out;
}

export async function readTensor(c: Cursor, end: number, limits: ReadLimits, context: string): Promise<TensorHeader> {
  const t: TensorHeader = {
    name: '', dims: [], dataType: 0, external: false, externalLocation: null, rawBytes: null, rawDataOffset: null,
    storedElements: 0, storedFields: [], values: null, span: { offset: c.pos, length: end - c.pos },
  };
  const msg = `TensorProto (${context})`;
  let smallRaw: Buffer | null = null;
  const typed: number[] = [];
  const stored = (field: string, elements: number): void => {
    t.storedElements += elements;
    if (!t.storedFields.includes(field)) t.storedFields.push(field);
  };
  while (c.pos < end) {
    const head = await c.head(end, msg);
    switch (head.field) {
      case TENSOR.dims:
        await readPackedVarints(c, head, end, t.dims, `dims of ${context}`, MAX_RANK);
        break;
      case TENSOR.dataType:
        t.dataType = readVarintField(c, head, end, `${msg}.data_type`);
        break;
      case TENSOR.name:
        t.name = await readString(c, head, limits, `the name of ${context}`);
        break;
      case TENSOR.rawData:
        expectWire(head, WIRE_LEN, `raw_data of ${context}`);
        t.rawBytes = (t.rawBytes ?? 0) + head.length;
        t.rawDataOffset ??= c.pos;
        if (head.length <= SMALL_RAW_BYTES) {
          await c.fill(head.length);
          smallRaw = Buffer.from(c.bytes(head.length));
        } else c.skip(head.length);
        if (!t.storedFields.includes('raw_data')) t.storedFields.push('raw_data');
        break;
      case TENSOR.floatData:
      case TENSOR.doubleData: {
        const width = head.field === TENSOR.floatData ? 4 : 8;
        const field = head.field === TENSOR.floatData ? 'float_data' : 'double_data';
        if (head.wire === WIRE_LEN) {
          if (head.length % width !== 0) {
            throw new OnnxFormatError('onnx_not_protobuf', `${field} of ${context} holds ${head.length} bytes, not a multiple of ${width}: the file is corrupt`);
          }
          stored(field, head.length / width);
          if (width === 4 && head.length <= SMALL_TENSOR_ELEMENTS * 4) {
            await c.fill(head.length);
            const bytes = c.bytes(head.length);
            for (let i = 0; i < bytes.length; i += 4) typed.push(bytes.readFloatLE(i));
          } else c.skip(head.length);
        } else {
          expectWire(head, width === 4 ? WIRE_FIXED32 : WIRE_FIXED64, `${field} of ${context}`);
          if (width === 4 && c.pos + 4 <= end) {
            await c.fill(4);
            typed.push(c.bytes(4).readFloatLE(0));
          } else c.skipValue(head, end, msg);
          stored(field, 1);
        }
        break;
      }
      case TENSOR.int32Data:
      case TENSOR.int64Data:
      case TENSOR.uint64Data: {
        const field = head.field === TENSOR.int32Data ? 'int32_data' : head.field === TENSOR.int64Data ? 'int64_data' : 'uint64_data';
        if (head.wire === WIRE_LEN) {
          if (head.length <= SMALL_TENSOR_ELEMENTS * 10) {
            await c.fill(head.length);
            const values = decodePacked(Buffer.from(c.bytes(head.length)));
            typed.push(...values);
            stored(field, values.length);
          } else stored(field, await countPackedVarints(c, head.length));
        } else {
          expectWire(head, WIRE_VARINT, `${field} of ${context}`);
          typed.push(c.varint(end, `${field} of ${context}`));
          stored(field, 1);
        }
        break;
      }
      case TENSOR.stringData:
        expectWire(head, WIRE_LEN, `string_data of ${context}`);
        c.skip(head.length);
        stored('string_data', 1);
        break;
      case TENSOR.externalData:
        expectWire(head, WIRE_LEN, `external_data of ${context}`);
        t.external = true;
        t.externalLocation = (await readExternalLocation(c, c.pos + head.length, limits)) ?? t.externalLocation;
        break;
      case TENSOR.dataLocation:
        if (readVarintField(c, head, end, `${msg}.data_location`) === DATA_LOCATION_EXTERNAL) t.external = true;
        break;
      default:
        c.skipValue(head, end, msg);
    }
  }
  const elements = t.dims.reduce((a, b) => a * b, 1);
  if (elements <= SMALL_TENSOR_ELEMENTS && [INT32, INT64, FLOAT32].includes(t.dataType)) {
    const values = smallRaw !== null ? decodeRaw(smallRaw, t.dataType) : typed;
    if (values !== null && values.length === elements) t.values = values;
  }
  return t;
}

/** The value of one external_data entry (StringStringEntryProto) when its key is `location`. */
async function readExternalLocation(c: Cursor, end: number, limits: ReadLimits): Promise<string | null> {
  let key = '';
  let value: string | null = null;
  while (c.pos < end) {
    const kv = await c.head(end, 'StringStringEntryProto');
    if ((kv.field === STRING_ENTRY.key || kv.field === STRING_ENTRY.value) && kv.wire === WIRE_LEN && kv.length <= limits.maxNameBytes) {
      const text = await c.string(kv.length);
      if (kv.field === STRING_ENTRY.key) key = text;
      else value = text;
    } else c.skipValue(kv, end, 'StringStringEntryProto');
  }
  return key === 'location' ? value : null;
}
