// A forward-only window over a model file (or bytes already in memory) and the field-level reads on it:
// keys, lengths, skips. Payloads the caller does not need are skipped by seeking, so a 600 MB model costs
// a few reads and a few kilobytes of memory.
import { open, type FileHandle } from 'node:fs/promises';
import { decodeVarint, MAX_VARINT_BYTES, VARINT_RAN_OUT, WIRE_FIXED32, WIRE_FIXED64, WIRE_LEN, WIRE_NAMES, WIRE_VARINT } from './wire.js';

/** What can go wrong in the bytes themselves; the codes are the upload inspector's rejection codes. */
export type FormatErrorCode = 'onnx_truncated' | 'onnx_not_protobuf' | 'onnx_not_a_model' | 'onnx_too_large' | 'onnx_absurd_shape' | 'onnx_initializer_size';

export class OnnxFormatError extends Error {
  override readonly name = 'OnnxFormatError';
  constructor(
    readonly code: FormatErrorCode,
    readonly detail: string,
  ) {
    super(detail);
  }
}

/** Random-access bytes: an open file or a buffer. */
export interface ByteSource {
  readonly size: number;
  read(into: Buffer, intoOffset: number, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

export async function openFileSource(path: string): Promise<ByteSource> {
  const file: FileHandle = await open(path, 'r');
  try {
    const { size } = await file.stat();
    return {
      size,
      read: async (into, intoOffset, length, position) => (await file.read(into, intoOffset, length, position)).bytesRead,
      close: () => file.close(),
    };
  } catch (err) {
    await file.close();
    throw err;
  }
}

export function bufferSource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    read: async (into, intoOffset, length, position) => {
      const n = Math.max(0, Math.min(length, bytes.length - position));
      into.set(bytes.subarray(position, position + n), intoOffset);
      return n;
    },
    close: async () => undefined,
  };
}

/** Reads `length` bytes at `offset` (a Span's payload, say) into a new buffer. */
export async function readBytes(source: ByteSource, offset: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let done = 0;
  while (done < length) {
    const n = await source.read(out, done, length - done, offset + done);
    if (n === 0) throw new OnnxFormatError('onnx_truncated', `the file ends after ${source.size} bytes, inside bytes ${offset}..${offset + length} it was read from before`);
    done += n;
  }
  return out;
}

export const BUFFER_BYTES = 1 << 20;
/** Enough for a field key and a varint value. */
const FIELD_HEAD_BYTES = 2 * MAX_VARINT_BYTES;

export interface FieldHead {
  field: number;
  wire: number;
  /** offset of the field's key */
  at: number;
  /** For WIRE_LEN: the payload length, already checked to fit in the enclosing message. */
  length: number;
}

export class Cursor {
  /** absolute offset of the next byte to read */
  pos = 0;
  private readonly buf = Buffer.allocUnsafe(BUFFER_BYTES);
  private bufStart = 0;
  private bufLen = 0;

  constructor(readonly source: ByteSource) {}

  get size(): number {
    return this.source.size;
  }

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
      const bytesRead = await this.source.read(this.buf, this.bufLen, BUFFER_BYTES - this.bufLen, this.pos + this.bufLen);
      if (bytesRead === 0) break;
      this.bufLen += bytesRead;
    }
  }

  /** A varint that must end before `end`; the buffer must hold it (fill first). */
  varint(end: number, what: string): number {
    const limit = Math.min(end, this.bufStart + this.bufLen);
    const [value, read] = decodeVarint(this.buf, this.pos - this.bufStart, limit - this.bufStart);
    if (read > 0) {
      this.pos += read;
      return value;
    }
    if (read === VARINT_RAN_OUT) {
      if (limit < end) throw new Error(`internal: varint read without a filled buffer at byte ${this.pos}`);
      throw this.overrun(end, what);
    }
    throw new OnnxFormatError('onnx_not_protobuf', `${what} at byte ${this.pos} is a varint longer than 10 bytes: the file is not a protobuf (ONNX) model`);
  }

  /** The next n bytes as a view of the window (valid until the next fill); n must be buffered. */
  bytes(n: number): Buffer {
    const start = this.pos - this.bufStart;
    this.pos += n;
    return this.buf.subarray(start, start + n);
  }

  async string(n: number): Promise<string> {
    await this.fill(n);
    return this.bytes(n).toString('utf8');
  }

  skip(n: number): void {
    this.pos += n;
  }

  overrun(end: number, what: string): OnnxFormatError {
    if (end >= this.size) {
      return new OnnxFormatError(
        'onnx_truncated',
        `the file ends (after ${this.size} bytes) in the middle of ${what}: it is truncated or not an ONNX model; upload the complete file`,
      );
    }
    return new OnnxFormatError('onnx_not_protobuf', `${what} at byte ${this.pos} runs past the end of its enclosing message: the file is corrupt or not an ONNX model`);
  }

  /** Reads one field key (and the length of a length-delimited field). */
  async head(end: number, message: string): Promise<FieldHead> {
    if (this.buffered() < FIELD_HEAD_BYTES) await this.fill(FIELD_HEAD_BYTES);
    const at = this.pos;
    const key = this.varint(end, `a field key of ${message}`);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (field <= 0 || wire === 3 || wire === 4 || wire > 5) {
      throw new OnnxFormatError(
        'onnx_not_protobuf',
        `byte ${at} holds field number ${field} with wire type ${WIRE_NAMES[wire]} inside ${message}: the file is not a protobuf-encoded ONNX model`,
      );
    }
    let length = 0;
    if (wire === WIRE_LEN) {
      length = this.varint(end, `the length of field ${field} of ${message}`);
      if (length < 0) {
        throw new OnnxFormatError('onnx_not_protobuf', `field ${field} of ${message} at byte ${at} declares a negative length: the file is not a protobuf (ONNX) model`);
      }
      if (this.pos + length > end) {
        if (this.pos + length > this.size) {
          throw new OnnxFormatError(
            'onnx_truncated',
            `field ${field} of ${message} at byte ${at} declares ${length} bytes but the file ends after ${this.size} bytes: the upload is truncated (or not an ONNX model)`,
          );
        }
        throw new OnnxFormatError('onnx_not_protobuf', `field ${field} of ${message} at byte ${at} declares ${length} bytes, more than its enclosing message holds: the file is corrupt`);
      }
    }
    return { field, wire, at, length };
  }

  skipValue(head: FieldHead, end: number, message: string): void {
    switch (head.wire) {
      case WIRE_VARINT:
        this.varint(end, `field ${head.field} of ${message}`);
        return;
      case WIRE_FIXED64:
      case WIRE_FIXED32: {
        const n = head.wire === WIRE_FIXED64 ? 8 : 4;
        if (this.pos + n > end) throw this.overrun(end, `field ${head.field} of ${message}`);
        this.skip(n);
        return;
      }
      default:
        this.skip(head.length);
    }
  }
}

export function expectWire(head: FieldHead, wire: number, what: string): void {
  if (head.wire !== wire) {
    throw new OnnxFormatError(
      'onnx_not_protobuf',
      `${what} (field ${head.field}) is encoded as ${WIRE_NAMES[head.wire]}, not ${WIRE_NAMES[wire]}: the file is not a valid ONNX model`,
    );
  }
}
