// Inspects an uploaded ZIP (an image dataset, or the container of an .npz) without extracting anything:
// a metadata pass over the central directory refuses unsafe names, links, bombs and oversize archives
// before a single byte is inflated; a content pass then streams every entry through a size-checking
// counter, so an entry that inflates past its declared size is cut off at that size.
import yauzl, { type Entry, type ZipFile } from 'yauzl';
import { InputRejected, quote } from './rejection.js';

export interface ZipLimits {
  maxEntries: number;
  /** Uncompressed bytes of one entry. */
  maxEntryBytes: number;
  /** Uncompressed bytes of all entries together. */
  maxTotalBytes: number;
  /** Uncompressed / compressed, per entry and for the whole archive. */
  maxCompressionRatio: number;
  /**
   * Below this many uncompressed bytes an entry is not checked for its ratio: a small file of zeros
   * compresses 100× legitimately and cannot be a bomb on its own (the total limit bounds many of them).
   */
  ratioCheckMinBytes: number;
  maxNameBytes: number;
}

export const DEFAULT_ZIP_LIMITS: ZipLimits = {
  // Fashion-MNIST has 70 000 images; room for a few times that.
  maxEntries: 250_000,
  maxEntryBytes: 32 * 1024 * 1024,
  maxTotalBytes: 4 * 1024 * 1024 * 1024,
  maxCompressionRatio: 100,
  ratioCheckMinBytes: 1024 * 1024,
  maxNameBytes: 1024,
};

export interface ZipEntryInfo {
  /** Normalised name: forward slashes, no trailing slash for directories. */
  name: string;
  parts: string[];
  isDirectory: boolean;
  uncompressedSize: number;
  compressedSize: number;
}

/** Receives an entry's bytes in order; throwing InputRejected stops the scan. */
export interface EntrySink {
  write(chunk: Buffer): void;
  end(): void;
}

const S_IFMT = 0o170000;
const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const METHOD_STORE = 0;
const METHOD_DEFLATE = 8;

function checkName(entry: Entry, limits: ZipLimits): ZipEntryInfo {
  const raw = entry.fileNameRaw;
  if (raw.length === 0) throw new InputRejected('zip_bad_name', 'the archive has an entry with an empty name');
  if (raw.length > limits.maxNameBytes) {
    throw new InputRejected('zip_bad_name', `an entry name is ${raw.length} bytes long (limit ${limits.maxNameBytes}): ${quote(raw.toString('latin1'))}`);
  }
  if (raw.includes(0)) throw new InputRejected('zip_bad_name', `entry ${quote(raw.toString('latin1'))} has a NUL byte in its name`);
  // Extractors disagree on which name they use (the header's bytes or the Info-ZIP Unicode path field);
  // a name that differs between the two can pass one check and be written under the other.
  const headerName = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, raw, [], false);
  const name = yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, raw, entry.extraFields, false);
  if (name !== headerName) {
    throw new InputRejected('zip_bad_name', `entry ${quote(headerName)} carries a different Unicode path ${quote(name)}; re-create the archive with a standard zip tool`);
  }
  if (name.startsWith('/') || /^[a-zA-Z]:/.test(name)) {
    throw new InputRejected('zip_absolute_path', `entry ${quote(name)} has an absolute path; dataset entries must be relative (class/image.png)`);
  }
  const isDirectory = name.endsWith('/');
  const parts = (isDirectory ? name.slice(0, -1) : name).split('/');
  if (parts.includes('..')) {
    throw new InputRejected('zip_path_traversal', `entry ${quote(name)} climbs out of the archive with "..": path traversal is refused`);
  }
  if (parts.some((p) => p === '' || p === '.' || /[\u0000-\u001f\u007f]/.test(p))) {
    throw new InputRejected('zip_bad_name', `entry ${quote(name)} has an empty, "." or control-character path component`);
  }
  return { name: parts.join('/'), parts, isDirectory, uncompressedSize: entry.uncompressedSize, compressedSize: entry.compressedSize };
}

function checkEntryMetadata(entry: Entry, info: ZipEntryInfo, limits: ZipLimits): void {
  const fileType = (entry.externalFileAttributes >>> 16) & S_IFMT;
  if (fileType === S_IFLNK) {
    throw new InputRejected('zip_symlink', `entry ${quote(info.name)} is a symbolic link; datasets may hold only regular files`);
  }
  if (fileType !== 0 && fileType !== S_IFREG && fileType !== S_IFDIR) {
    throw new InputRejected('zip_special_file', `entry ${quote(info.name)} is a special file (mode ${fileType.toString(8)}); datasets may hold only regular files`);
  }
  if ((entry.generalPurposeBitFlag & 0x1) !== 0) {
    throw new InputRejected('zip_encrypted', `entry ${quote(info.name)} is encrypted; upload an unencrypted archive`);
  }
  if (entry.compressionMethod !== METHOD_STORE && entry.compressionMethod !== METHOD_DEFLATE) {
    throw new InputRejected('zip_invalid', `entry ${quote(info.name)} uses compression method ${entry.compressionMethod}; only store (0) and deflate (8) are supported`);
  }
  if (info.isDirectory && info.uncompressedSize !== 0) {
    throw new InputRejected('zip_size_mismatch', `directory entry ${quote(info.name)} declares ${info.uncompressedSize} bytes of content`);
  }
  if (entry.compressionMethod === METHOD_STORE && info.compressedSize !== info.uncompressedSize) {
    throw new InputRejected(
      'zip_size_mismatch',
      `stored entry ${quote(info.name)} declares ${info.uncompressedSize} bytes but occupies ${info.compressedSize}: the archive's sizes are inconsistent`,
    );
  }
  if (info.uncompressedSize > limits.maxEntryBytes) {
    throw new InputRejected('zip_too_large', `entry ${quote(info.name)} holds ${info.uncompressedSize} bytes uncompressed, over the per-file limit of ${limits.maxEntryBytes}`);
  }
  if (info.uncompressedSize >= limits.ratioCheckMinBytes) {
    const ratio = info.compressedSize === 0 ? Infinity : info.uncompressedSize / info.compressedSize;
    if (ratio > limits.maxCompressionRatio) {
      throw new InputRejected(
        'zip_bomb',
        `entry ${quote(info.name)} inflates ${info.compressedSize} bytes into ${info.uncompressedSize} (ratio ${ratio.toFixed(0)}, limit ${limits.maxCompressionRatio}): refused as a zip bomb`,
      );
    }
  }
}

function mapZipError(err: unknown, context: string): InputRejected {
  if (err instanceof InputRejected) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/end of central directory record signature not found/i.test(message)) {
    return new InputRejected('zip_invalid', `${context} is not a ZIP archive, or a truncated one (no end-of-central-directory record); upload the complete .zip file`);
  }
  if (context.startsWith('entry')) return new InputRejected('zip_invalid', `${context} cannot be read (${message}): the archive is corrupt`);
  return new InputRejected('zip_invalid', `${context} is not a readable ZIP archive: ${message}`);
}

async function readEntry(zip: ZipFile, entry: Entry, info: ZipEntryInfo, sink: EntrySink | null): Promise<void> {
  let seen = 0;
  try {
    const stream = await zip.openReadStreamPromise(entry);
    try {
      for await (const chunk of stream as AsyncIterable<Buffer>) {
        seen += chunk.length;
        if (seen > info.uncompressedSize) {
          throw new InputRejected(
            'zip_size_mismatch',
            `entry ${quote(info.name)} declares ${info.uncompressedSize} bytes but inflates to more; reading stopped at ${seen} bytes`,
          );
        }
        sink?.write(chunk);
      }
    } finally {
      stream.destroy();
    }
  } catch (err) {
    throw mapZipError(err, `entry ${quote(info.name)}`);
  }
  if (seen !== info.uncompressedSize) {
    throw new InputRejected('zip_size_mismatch', `entry ${quote(info.name)} declares ${info.uncompressedSize} bytes but holds ${seen}: the archive is corrupt or truncated`);
  }
  sink?.end();
}

/**
 * Checks every entry of the archive at `path` and streams the content of each file entry into the sink
 * that `onFile` returns for it. Names, types, sizes and ratios of all entries are checked before any
 * content is read. Throws InputRejected.
 */
export async function scanZip(
  path: string,
  fileBytes: number,
  limits: ZipLimits,
  onEntries: (entries: ZipEntryInfo[]) => void,
  onFile: (entry: ZipEntryInfo) => EntrySink | null,
): Promise<void> {
  let zip: ZipFile;
  try {
    zip = await yauzl.openPromise(path, { lazyEntries: true, autoClose: false, decodeStrings: false, validateEntrySizes: false });
  } catch (err) {
    throw mapZipError(err, 'the upload');
  }
  try {
    if (zip.entryCount > limits.maxEntries) {
      throw new InputRejected('zip_too_many_entries', `the archive has ${zip.entryCount} entries, over the limit of ${limits.maxEntries}`);
    }
    const entries: { entry: Entry; info: ZipEntryInfo }[] = [];
    const names = new Set<string>();
    const dataOffsets = new Set<number>();
    let total = 0;
    try {
      for await (const entry of zip.eachEntry()) {
        const info = checkName(entry, limits);
        if (names.has(info.name)) throw new InputRejected('zip_duplicate_entry', `entry ${quote(info.name)} appears twice in the archive`);
        names.add(info.name);
        // Entries sharing one local header is how "overlapping" bombs multiply a single deflate stream.
        if (dataOffsets.has(entry.relativeOffsetOfLocalHeader)) {
          throw new InputRejected('zip_bomb', `entry ${quote(info.name)} shares its data with another entry (overlapping entries): refused as a zip bomb`);
        }
        dataOffsets.add(entry.relativeOffsetOfLocalHeader);
        checkEntryMetadata(entry, info, limits);
        total += info.uncompressedSize;
        if (total > limits.maxTotalBytes) {
          throw new InputRejected('zip_too_large', `the archive declares more than ${limits.maxTotalBytes} bytes uncompressed (limit ${limits.maxTotalBytes})`);
        }
        entries.push({ entry, info });
      }
    } catch (err) {
      throw mapZipError(err, 'the upload');
    }
    if (total >= limits.ratioCheckMinBytes && fileBytes > 0 && total / fileBytes > limits.maxCompressionRatio) {
      throw new InputRejected(
        'zip_bomb',
        `the archive inflates ${fileBytes} bytes into ${total} (ratio ${(total / fileBytes).toFixed(0)}, limit ${limits.maxCompressionRatio}): refused as a zip bomb`,
      );
    }
    onEntries(entries.map((e) => e.info));
    for (const { entry, info } of entries) {
      if (info.isDirectory) continue;
      await readEntry(zip, entry, info, onFile(info));
    }
  } finally {
    zip.close();
  }
}

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
const MAGIC_BYTES = 8;

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

export interface ZipDatasetSummary {
  /** Class folder names, sorted: the label of an image is its folder's index in this list. */
  classes: string[];
  countsPerClass: Record<string, number>;
  total: number;
  /** The single top-level folder the classes sit in, if any. */
  root: string | null;
  formats: Record<ImageFormat, number>;
}

/** Finds class/image (or root/class/image) for every file, or explains the expected layout. */
function classLayout(files: ZipEntryInfo[]): { root: string | null; classOf: Map<string, string> } {
  const firsts = new Set(files.map((f) => f.parts[0]));
  const nested = files.every((f) => f.parts.length === 3) && firsts.size === 1;
  const root = nested ? files[0]!.parts[0]! : null;
  const depth = nested ? 3 : 2;
  const classOf = new Map<string, string>();
  for (const f of files) {
    if (f.parts.length !== depth) {
      throw new InputRejected(
        'zip_layout',
        `entry ${quote(f.name)} is not inside a class folder; lay the dataset out as class_name/image.png (optionally under one top-level folder), one folder per class`,
      );
    }
    classOf.set(f.name, f.parts[depth - 2]!);
  }
  return { root, classOf };
}

/** Inspects a class-per-folder image dataset; throws InputRejected naming the first problem found. */
export async function inspectZipDataset(path: string, fileBytes: number, limits: ZipLimits = DEFAULT_ZIP_LIMITS): Promise<ZipDatasetSummary> {
  const counts = new Map<string, number>();
  const formats: Record<ImageFormat, number> = { png: 0, jpeg: 0 };
  let layout: { root: string | null; classOf: Map<string, string> } = { root: null, classOf: new Map() };

  await scanZip(
    path,
    fileBytes,
    limits,
    (entries) => {
      const files = entries.filter((e) => !e.isDirectory);
      if (files.length === 0) throw new InputRejected('zip_empty', 'the archive holds no files; put images in one folder per class');
      layout = classLayout(files);
    },
    (entry) => {
      let head = Buffer.alloc(0);
      let sniffed = false;
      const sniff = (): void => {
        if (sniffed) return;
        sniffed = true;
        const format = sniffImage(head, entry.name);
        formats[format]++;
        const cls = layout.classOf.get(entry.name)!;
        counts.set(cls, (counts.get(cls) ?? 0) + 1);
      };
      return {
        write(chunk) {
          if (head.length < MAGIC_BYTES) head = Buffer.concat([head, chunk.subarray(0, MAGIC_BYTES - head.length)]);
          if (head.length >= MAGIC_BYTES) sniff();
        },
        end() {
          sniff();
        },
      };
    },
  );

  const classes = [...counts.keys()].sort();
  const countsPerClass: Record<string, number> = {};
  let total = 0;
  for (const c of classes) {
    countsPerClass[c] = counts.get(c)!;
    total += counts.get(c)!;
  }
  return { classes, countsPerClass, total, root: layout.root, formats };
}
