// The protobuf wire format as far as ONNX needs it: the one varint codec of the project, field keys, and
// the encoders the derived-model writers (worker) and the hostile-fixture writer (tests) share.
// See https://protobuf.dev/programming-guides/encoding/.

export const WIRE_VARINT = 0;
export const WIRE_FIXED64 = 1;
export const WIRE_LEN = 2;
export const WIRE_FIXED32 = 5;
export const WIRE_NAMES = ['varint', 'fixed64', 'length-delimited', 'group start', 'group end', 'fixed32', '6', '7'];

/** A varint never takes more than 10 bytes (64 bits, 7 per byte). */
export const MAX_VARINT_BYTES = 10;

/** What decodeVarint reports besides the value: bytes consumed, or why it stopped. */
export const VARINT_RAN_OUT = 0;
export const VARINT_TOO_LONG = -1;

/**
 * Decodes the varint at buf[pos] that must end before `limit`. Returns [value, bytes read]; bytes read is
 * VARINT_RAN_OUT when `limit` came first and VARINT_TOO_LONG past 10 bytes. The value is the signed 64-bit
 * reading (int64 fields store negatives as 10-byte two's complement); exact up to 2^53.
 */
export function decodeVarint(buf: Uint8Array, pos: number, limit: number): [number, number] {
  let result = 0;
  let scale = 1;
  let big: bigint | null = null;
  for (let i = 0; i < MAX_VARINT_BYTES; i++) {
    if (pos + i >= limit) return [0, VARINT_RAN_OUT];
    const byte = buf[pos + i]!;
    if (i < 7) {
      result += (byte & 0x7f) * scale;
      scale *= 128;
    } else {
      big ??= BigInt(result);
      big += BigInt(byte & 0x7f) << BigInt(7 * i);
    }
    if ((byte & 0x80) === 0) return [big === null ? result : Number(BigInt.asIntN(64, big)), i + 1];
  }
  return [0, VARINT_TOO_LONG];
}

/** The varint encoding of a value; negatives become their 64-bit two's complement (10 bytes). */
export function encodeVarint(value: number | bigint): Buffer {
  let v = BigInt.asUintN(64, BigInt(value));
  const out: number[] = [];
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v !== 0n) byte |= 0x80;
    out.push(byte);
  } while (v !== 0n);
  return Buffer.from(out);
}

export const encodeKey = (field: number, wire: number): Buffer => encodeVarint(field * 8 + wire);

/** Field encoders: each returns the complete field (key and value). */
export const encode = {
  varint: (field: number, value: number | bigint): Buffer => Buffer.concat([encodeKey(field, WIRE_VARINT), encodeVarint(value)]),
  float32: (field: number, value: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeFloatLE(value, 0);
    return Buffer.concat([encodeKey(field, WIRE_FIXED32), b]);
  },
  bytes: (field: number, data: Uint8Array | string): Buffer => {
    const payload = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    return Buffer.concat([encodeKey(field, WIRE_LEN), encodeVarint(payload.length), payload]);
  },
  /** A length-delimited field holding the concatenation of `parts` (a sub-message). */
  message: (field: number, ...parts: Uint8Array[]): Buffer => encode.bytes(field, Buffer.concat(parts)),
  /** Packed repeated varints (int64 dims, ints attributes). */
  packed: (field: number, values: (number | bigint)[]): Buffer => encode.bytes(field, Buffer.concat(values.map(encodeVarint))),
  /** Key and length of a length-delimited field whose payload the caller writes next (streamed). */
  lengthHeader: (field: number, length: number): Buffer => Buffer.concat([encodeKey(field, WIRE_LEN), encodeVarint(length)]),
};
