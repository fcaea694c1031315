// Image headers read from an entry's first bytes: which format it is (by content, never by extension) and the
// width and height it declares, so a dataset is refused before any pixel is decoded.
import { InputRejected, quote } from './rejection.js';

const NESTED_ARCHIVES: [string, Buffer][] = [
  ['ZIP', Buffer.from([0x50, 0x4b, 0x03, 0x04])],
  ['ZIP', Buffer.from([0x50, 0x4b, 0x05, 0x06])],
  ['gzip', Buffer.from([0x1f, 0x8b])],
  ['bzip2', Buffer.from('BZh')],
  ['xz', Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['7z', Buffer.from([0x37, 0x7a, 0xbc, 0xaf, 0x27, 0x1c])],
  ['RAR', Buffer.from('Rar!')],
];
const PNG = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
const JPEG = Buffer.from([0xff, 0xd8, 0xff]);
/** Enough of a JPEG to pass its EXIF/ICC segments and reach the frame header in all but odd files. */
export const HEADER_SCAN_BYTES = 256 * 1024;

/**
 * Width and height from the image header: PNG's IHDR (always the first chunk) or a JPEG frame marker
 * (SOF0–SOF15 but DHT, JPG and DAC, which share the range). Null when the scanned bytes do not reach it.
 */
export function imageDimensions(head: Buffer, format: ImageFormat): { width: number; height: number } | null {
  if (format === 'png') {
    if (head.length < 24 || head.toString('latin1', 12, 16) !== 'IHDR') return null;
    return { width: head.readUInt32BE(16), height: head.readUInt32BE(20) };
  }
  let i = 2;
  while (i + 4 <= head.length) {
    if (head[i] !== 0xff) return null;
    const marker = head[i + 1]!;
    if (marker === 0xff) {
      i++; // fill byte
      continue;
    }
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd8)) {
      i += 2; // markers without a length
      continue;
    }
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isFrame) {
      if (i + 9 > head.length) return null;
      return { width: head.readUInt16BE(i + 7), height: head.readUInt16BE(i + 5) };
    }
    i += 2 + head.readUInt16BE(i + 2);
  }
  return null;
}

export type ImageFormat = 'png' | 'jpeg';

/** Identifies an image by its first bytes; the extension is not trusted. */
export function sniffImage(head: Buffer, name: string): ImageFormat {
  if (head.length >= PNG.length && head.subarray(0, PNG.length).equals(PNG)) return 'png';
  if (head.length >= JPEG.length && head.subarray(0, JPEG.length).equals(JPEG)) return 'jpeg';
  for (const [kind, magic] of NESTED_ARCHIVES) {
    if (head.length >= magic.length && head.subarray(0, magic.length).equals(magic)) {
      throw new InputRejected('zip_nested_archive', `entry ${quote(name)} is a ${kind} archive; nested archives are refused: put the images themselves in the class folders`);
    }
  }
  throw new InputRejected('zip_not_image', `entry ${quote(name)} is not a PNG or JPEG image (checked by its content, not its extension)`);
}
