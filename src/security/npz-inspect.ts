// Inspects an uploaded .npz dataset: a ZIP of .npy arrays, `x` (N,C,H,W) float32|uint8 and optional
// integer labels `y` (N,). Each .npy header is parsed here as data (a tiny literal parser, never eval or
// unpickle), and an object dtype is refused from the header alone, before its payload is read. The engine
// loads the same file with numpy.load(allow_pickle=False) as a second line of defence.
import { InputRejected, quote } from './rejection.js';
import { DEFAULT_ZIP_LIMITS, scanZip, type EntrySink, type ZipEntryInfo, type ZipLimits } from './zip-inspect.js';

export interface NpzLimits {
  zip: ZipLimits;
  maxCount: number;
  maxChannels: number;
  /** Largest H or W. */
  maxSide: number;
  maxClasses: number;
  /** numpy refuses headers over 10 000 bytes by default; so does this. */
  maxHeaderBytes: number;
}

export const DEFAULT_NPZ_LIMITS: NpzLimits = {
  zip: {
    ...DEFAULT_ZIP_LIMITS,
    maxEntries: 16,
    maxEntryBytes: 4 * 1024 * 1024 * 1024,
  },
  maxCount: 1_000_000,
  maxChannels: 4,
  maxSide: 4096,
  maxClasses: 100_000,
  maxHeaderBytes: 10_000,
};

export type NpzImageDtype = 'float32' | 'uint8';

export interface NpzSummary {
  count: number;
  /** [N, C, H, W] */
  shape: [number, number, number, number];
  dtype: NpzImageDtype;
  labelled: boolean;
  /** Highest label + 1, when labelled. */
  classes?: number;
}

type PyValue = string | number | boolean | null | PyValue[] | { tuple: PyValue[] } | Map<string, PyValue>;

/**
 * Parses the Python literal numpy writes as an .npy header: a dict of strings, ints, bools, None,
 * tuples and lists. Anything else (names, calls, operators) is a syntax error.
 */
export function parsePyLiteral(text: string): PyValue {
  let i = 0;
  const fail = (what: string): never => {
    throw new InputRejected('npz_bad_header', `the .npy header is not a plain Python literal (${what} at character ${i}): ${quote(text, 200)}`);
  };
  const skipSpace = (): void => {
    while (i < text.length && /\s/.test(text[i]!)) i++;
  };
  const parseValue = (depth: number): PyValue => {
    if (depth > 8) fail('nesting too deep');
    skipSpace();
    const ch = text[i];
    if (ch === '{') {
      i++;
      const map = new Map<string, PyValue>();
      for (;;) {
        skipSpace();
        if (text[i] === '}') {
          i++;
          return map;
        }
        const key = parseValue(depth + 1);
        if (typeof key !== 'string') fail('a non-string dict key');
        skipSpace();
        if (text[i] !== ':') fail('a missing ":"');
        i++;
        map.set(key as string, parseValue(depth + 1));
        skipSpace();
        if (text[i] === ',') i++;
        else if (text[i] !== '}') fail('a missing "," or "}"');
      }
    }
    if (ch === '(' || ch === '[') {
      const close = ch === '(' ? ')' : ']';
      i++;
      const items: PyValue[] = [];
      let sawComma = false;
      for (;;) {
        skipSpace();
        if (text[i] === close) {
          i++;
          // (5) is just 5 in Python; (5,) is a tuple.
          if (ch === '(' && items.length === 1 && !sawComma) return items[0]!;
          return ch === '(' ? { tuple: items } : items;
        }
        items.push(parseValue(depth + 1));
        skipSpace();
        if (text[i] === ',') {
          sawComma = true;
          i++;
        } else if (text[i] !== close) fail(`a missing "," or "${close}"`);
      }
    }
    if (ch === "'" || ch === '"') {
      const end = text.indexOf(ch, i + 1);
      if (end < 0) fail('an unterminated string');
      const s = text.slice(i + 1, end);
      if (s.includes('\\')) fail('an escape sequence');
      i = end + 1;
      return s;
    }
    const word = /^(-?\d+)L?|^(True|False|None)\b/.exec(text.slice(i, i + 32));
    if (word === null) return fail('an unexpected token');
    i += word[0].length;
    if (word[1] !== undefined) return Number(word[1]);
    return word[2] === 'True' ? true : word[2] === 'False' ? false : null;
  };
  const value = parseValue(0);
  skipSpace();
  if (i !== text.length) fail('trailing text');
  return value;
}

interface Dtype {
  kind: string;
  itemSize: number;
  text: string;
}

function parseDescr(descr: string, array: string): Dtype {
  const m = /^([<>|=]?)([a-zA-Z])(\d*)$/.exec(descr);
  if (m === null) throw new InputRejected('npz_dtype', `array ${array} has dtype ${quote(descr)}, which is not a numeric dtype`);
  const kind = m[2]!;
  if (kind === 'O') {
    throw new InputRejected('npz_pickle', `array ${array} has dtype object ('O'): reading it would unpickle arbitrary Python objects; save plain numeric arrays (float32 or uint8 images, integer labels)`);
  }
  return { kind, itemSize: Number(m[3] || '0'), text: descr };
}

/** True when a structured dtype (a list of fields) hides an object field anywhere inside. */
function hasObjectField(descr: PyValue): boolean {
  if (typeof descr === 'string') return /^[<>|=]?O/.test(descr);
  if (Array.isArray(descr)) return descr.some(hasObjectField);
  if (descr !== null && typeof descr === 'object' && 'tuple' in descr) return descr.tuple.some(hasObjectField);
  return false;
}

interface NpyHeader {
  dtype: Dtype;
  fortranOrder: boolean;
  shape: number[];
  /** Bytes of magic + length + header text: where the payload starts. */
  headerBytes: number;
}

/** Parses an .npy header from its first bytes; returns null until enough bytes have arrived. */
export function parseNpyHeader(head: Buffer, array: string, limits: NpzLimits): NpyHeader | null {
  if (head.length < 10) return null;
  if (head[0] !== 0x93 || head.subarray(1, 6).toString('latin1') !== 'NUMPY') {
    throw new InputRejected('npz_bad_header', `array ${array} does not start with the .npy magic bytes ("\\x93NUMPY"): it is not a numpy array file`);
  }
  const major = head[6]!;
  if (major < 1 || major > 3) throw new InputRejected('npz_bad_header', `array ${array} uses .npy format version ${major}.${head[7]}; versions 1 to 3 are supported`);
  const lenBytes = major === 1 ? 2 : 4;
  if (head.length < 8 + lenBytes) return null;
  const headerLen = major === 1 ? head.readUInt16LE(8) : head.readUInt32LE(8);
  if (headerLen > limits.maxHeaderBytes) {
    throw new InputRejected('npz_bad_header', `array ${array} has a ${headerLen}-byte header (limit ${limits.maxHeaderBytes})`);
  }
  const start = 8 + lenBytes;
  if (head.length < start + headerLen) return null;
  const text = head.subarray(start, start + headerLen).toString(major === 3 ? 'utf8' : 'latin1');
  const dict = parsePyLiteral(text.trimEnd());
  if (!(dict instanceof Map)) throw new InputRejected('npz_bad_header', `array ${array}'s header is not a dict: ${quote(text, 200)}`);
  const descr = dict.get('descr');
  const fortranOrder = dict.get('fortran_order');
  const shape = dict.get('shape');
  if (descr !== undefined && hasObjectField(descr)) {
    throw new InputRejected('npz_pickle', `array ${array} has an object dtype: reading it would unpickle arbitrary Python objects; save plain numeric arrays`);
  }
  if (typeof descr !== 'string') {
    throw new InputRejected('npz_dtype', `array ${array} has a structured or missing dtype (descr ${quote(JSON.stringify(descr ?? null))}); save a plain numeric array`);
  }
  if (typeof fortranOrder !== 'boolean') throw new InputRejected('npz_bad_header', `array ${array}'s header lacks a boolean fortran_order`);
  if (shape === null || typeof shape !== 'object' || !('tuple' in shape) || !shape.tuple.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    throw new InputRejected('npz_bad_header', `array ${array}'s shape is not a tuple of non-negative integers`);
  }
  return { dtype: parseDescr(descr, array), fortranOrder, shape: shape.tuple as number[], headerBytes: start + headerLen };
}

function imageDtype(d: Dtype): NpzImageDtype | null {
  if (d.kind === 'f' && d.itemSize === 4) return 'float32';
  if (d.kind === 'u' && d.itemSize === 1) return 'uint8';
  return null;
}

/** Collects an .npy entry: header first, then either the whole payload (labels) or a byte count. */
class NpyCollector implements EntrySink {
  header: NpyHeader | null = null;
  private head = Buffer.alloc(0);
  private readonly payload: Buffer[] = [];

  constructor(
    private readonly entry: ZipEntryInfo,
    private readonly array: string,
    private readonly limits: NpzLimits,
    private readonly keepPayload: boolean,
    private readonly onHeader: (h: NpyHeader) => void,
  ) {}

  write(chunk: Buffer): void {
    if (this.header === null) {
      this.head = Buffer.concat([this.head, chunk]);
      this.header = parseNpyHeader(this.head, this.array, this.limits);
      if (this.header === null) {
        if (this.head.length > this.limits.maxHeaderBytes + 16) throw new InputRejected('npz_bad_header', `array ${this.array}'s header does not end`);
        return;
      }
      this.onHeader(this.header);
      const expected = this.header.headerBytes + this.header.shape.reduce((a, b) => a * b, 1) * this.header.dtype.itemSize;
      if (expected !== this.entry.uncompressedSize) {
        throw new InputRejected(
          'npz_size_mismatch',
          `array ${this.array} declares shape (${this.header.shape.join(', ')}) of ${this.header.dtype.text}, which needs ${expected} bytes, but its file holds ${this.entry.uncompressedSize}`,
        );
      }
      if (this.keepPayload) this.payload.push(this.head.subarray(this.header.headerBytes));
      this.head = Buffer.alloc(0);
      return;
    }
    if (this.keepPayload) this.payload.push(chunk);
  }

  end(): void {
    if (this.header === null) throw new InputRejected('npz_bad_header', `array ${this.array} ends before its .npy header does`);
  }

  data(): Buffer {
    return Buffer.concat(this.payload);
  }
}

function readLabel(data: Buffer, index: number, d: Dtype, littleEndian: boolean): number {
  const at = index * d.itemSize;
  const signed = d.kind === 'i';
  switch (d.itemSize) {
    case 1:
      return signed ? data.readInt8(at) : data.readUInt8(at);
    case 2:
      return signed ? (littleEndian ? data.readInt16LE(at) : data.readInt16BE(at)) : littleEndian ? data.readUInt16LE(at) : data.readUInt16BE(at);
    case 4:
      return signed ? (littleEndian ? data.readInt32LE(at) : data.readInt32BE(at)) : littleEndian ? data.readUInt32LE(at) : data.readUInt32BE(at);
    default: {
      const v = signed ? (littleEndian ? data.readBigInt64LE(at) : data.readBigInt64BE(at)) : littleEndian ? data.readBigUInt64LE(at) : data.readBigUInt64BE(at);
      return Number(v);
    }
  }
}

export async function inspectNpz(path: string, fileBytes: number, limits: NpzLimits = DEFAULT_NPZ_LIMITS): Promise<NpzSummary> {
  let x: NpyCollector | null = null;
  let y: NpyCollector | null = null;
  let count = 0;

  await scanZip(
    path,
    fileBytes,
    limits.zip,
    (entries) => {
      for (const e of entries) {
        if (e.isDirectory || (e.name !== 'x.npy' && e.name !== 'y.npy')) {
          throw new InputRejected('npz_bad_entry', `unexpected entry ${quote(e.name)}: an .npz dataset holds x.npy (images, N×C×H×W) and optionally y.npy (labels, N); save it with numpy.savez(path, x=images, y=labels)`);
        }
      }
      if (!entries.some((e) => e.name === 'x.npy')) {
        throw new InputRejected('npz_missing_x', 'the .npz has no array named x; save it with numpy.savez(path, x=images, y=labels)');
      }
    },
    (entry) => {
      if (entry.name === 'x.npy') {
        x = new NpyCollector(entry, 'x', limits, false, (h) => {
          if (imageDtype(h.dtype) === null) {
            throw new InputRejected('npz_dtype', `array x has dtype ${quote(h.dtype.text)}; images must be float32 or uint8`);
          }
          const [n, c, hh, w] = h.shape;
          if (h.shape.length !== 4 || n! < 1 || c! < 1 || c! > limits.maxChannels || hh! < 1 || w! < 1 || hh! > limits.maxSide || w! > limits.maxSide) {
            throw new InputRejected(
              'npz_shape',
              `array x has shape (${h.shape.join(', ')}); it must be (N, C, H, W) with N ≥ 1, 1 ≤ C ≤ ${limits.maxChannels} and 1 ≤ H, W ≤ ${limits.maxSide}`,
            );
          }
          if (n! > limits.maxCount) throw new InputRejected('npz_too_large', `array x holds ${n} images, over the limit of ${limits.maxCount}`);
          count = n!;
        });
        return x;
      }
      y = new NpyCollector(entry, 'y', limits, true, (h) => {
        if (h.dtype.kind !== 'i' && h.dtype.kind !== 'u') {
          throw new InputRejected('npz_labels', `array y has dtype ${quote(h.dtype.text)}; labels must be integers`);
        }
        if (![1, 2, 4, 8].includes(h.dtype.itemSize)) {
          throw new InputRejected('npz_labels', `array y has dtype ${quote(h.dtype.text)}; labels must be 8-, 16-, 32- or 64-bit integers`);
        }
        if (h.shape.length !== 1) throw new InputRejected('npz_labels', `array y has shape (${h.shape.join(', ')}); labels must be one-dimensional (N,)`);
        if (h.shape[0]! > limits.maxCount) throw new InputRejected('npz_too_large', `array y holds ${h.shape[0]} labels, over the limit of ${limits.maxCount}`);
      });
      return y;
    },
  );

  // Assigned inside the callbacks; TypeScript cannot see that, so widen them back.
  const xs = x as NpyCollector | null;
  const ys = y as NpyCollector | null;
  const xh = xs!.header!;
  const summary: NpzSummary = {
    count,
    shape: xh.shape as [number, number, number, number],
    dtype: imageDtype(xh.dtype)!,
    labelled: ys !== null,
  };
  if (ys !== null) {
    const yh = ys.header!;
    if (yh.shape[0] !== count) {
      throw new InputRejected('npz_labels', `array y holds ${yh.shape[0]} labels but x holds ${count} images; they must match`);
    }
    const data = ys.data();
    const littleEndian = !yh.dtype.text.startsWith('>');
    let max = -1;
    for (let i = 0; i < count; i++) {
      const label = readLabel(data, i, yh.dtype, littleEndian);
      if (label < 0 || label >= limits.maxClasses) {
        throw new InputRejected('npz_labels', `label y[${i}] = ${label}; labels must be class indices from 0 to ${limits.maxClasses - 1}`);
      }
      if (label > max) max = label;
    }
    summary.classes = max + 1;
  }
  return summary;
}
