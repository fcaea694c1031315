// Inspects an uploaded ZIP (an image dataset, or the container of an .npz) without extracting anything:
// a metadata pass over the central directory refuses unsafe names, links, bombs and oversize archives
// before a single byte is inflated; a content pass then streams every entry through a size-checking
// counter, so an entry that inflates past its declared size is cut off at that size.
import yauzl, { type Entry, type ZipFile } from 'yauzl';
import { HEADER_SCAN_BYTES, imageDimensions, sniffImage, type ImageFormat } from './image-header.js';
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
  /** Width × height an image header may declare: a few bytes of PNG can promise a 100 000² canvas. */
  maxImagePixels: number;
}

export const DEFAULT_ZIP_LIMITS: ZipLimits = {
  // The engine's limits (engine/tuckerize/data.py), so an archive accepted here is one the engine reads.
  maxEntries: 200_000,
  maxEntryBytes: 32 * 1024 * 1024,
  maxTotalBytes: 4 * 1024 * 1024 * 1024,
  maxCompressionRatio: 100,
  ratioCheckMinBytes: 1024 * 1024,
  maxNameBytes: 1024,
  maxImagePixels: 64 * 1024 * 1024,
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
  // Without the UTF-8 flag a name is CP437, where yauzl shows the bytes 0x01-0x1f as symbols (☺, ♪, …) while
  // other extractors, the engine's zipfile among them, read control characters: the bytes themselves are checked.
  if (raw.some((byte) => byte < 32 || byte === 127)) {
    throw new InputRejected('zip_bad_name', `entry ${quote(raw.toString('latin1'))} has a control character in its name; rename the file`);
  }
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

export interface ZipDatasetSummary {
  /** false when every image sits at the top level (unlabelled data, for distillation). */
  labelled: boolean;
  /** Class folder names, sorted. */
  classes: string[];
  /**
   * Label of each class, as the engine assigns them (engine/tuckerize/data.py): the folder's number when
   * every folder name is a non-negative integer, else its index in `classes`.
   */
  labels: Record<string, number>;
  /** Highest label + 1 (the model's output size must be at least this), or null when unlabelled. */
  numClasses: number | null;
  countsPerClass: Record<string, number>;
  total: number;
  /** The single top-level folder the classes sit in, if any. */
  root: string | null;
  formats: Record<ImageFormat, number>;
  /** Entries skipped like the engine skips them: macOS resource forks (__MACOSX/) and hidden files. */
  ignored: number;
}

const IMAGE_EXTENSIONS = /\.(png|jpe?g)$/i;

/** What the engine never reads: zip tools on macOS add __MACOSX/ and .DS_Store; hidden files in general. */
function isIgnored(entry: ZipEntryInfo): boolean {
  return entry.parts[0] === '__MACOSX' || entry.parts.some((p) => p.startsWith('.'));
}

interface Layout {
  root: string | null;
  /** entry name → class folder, or null for an unlabelled (top-level) image */
  classOf: Map<string, string | null>;
}

/**
 * CLASS/IMAGE (optionally under one top folder) or, for unlabelled data, every image at the top level;
 * the same rules the engine applies when it reads the archive.
 */
function imageLayout(files: ZipEntryInfo[]): Layout {
  const tops = new Set(files.map((f) => f.parts[0]));
  const nested = tops.size === 1 && files.every((f) => f.parts.length === 3);
  const root = nested ? files[0]!.parts[0]! : null;
  const relative = files.map((f) => (nested ? f.parts.slice(1) : f.parts));
  const tooDeep = files.find((_, i) => relative[i]!.length > 2);
  if (tooDeep) {
    throw new InputRejected('zip_layout', `entry ${quote(tooDeep.name)} is nested too deep; lay the dataset out as class_name/image.png (optionally under one top-level folder)`);
  }
  const depths = new Set(relative.map((r) => r.length));
  if (depths.size > 1) {
    const loose = files.find((_, i) => relative[i]!.length === 1)!;
    throw new InputRejected(
      'zip_layout',
      `entry ${quote(loose.name)} sits at the top level while other images are in class folders; use one layout: class_name/image.png for labelled data, or all images at the top level for unlabelled data`,
    );
  }
  const classOf = new Map<string, string | null>();
  files.forEach((f, i) => classOf.set(f.name, relative[i]!.length === 2 ? relative[i]![0]! : null));
  return { root, classOf };
}

/** Inspects an image dataset; throws InputRejected naming the first problem found. */
export async function inspectZipDataset(path: string, fileBytes: number, limits: ZipLimits = DEFAULT_ZIP_LIMITS): Promise<ZipDatasetSummary> {
  const counts = new Map<string, number>();
  const formats: Record<ImageFormat, number> = { png: 0, jpeg: 0 };
  let layout: Layout = { root: null, classOf: new Map() };
  let total = 0;
  let ignored = 0;

  await scanZip(
    path,
    fileBytes,
    limits,
    (entries) => {
      const files = entries.filter((e) => !e.isDirectory && !isIgnored(e));
      ignored = entries.filter((e) => !e.isDirectory && isIgnored(e)).length;
      if (files.length === 0) throw new InputRejected('zip_empty', 'the archive holds no images; put PNG or JPEG images in one folder per class');
      layout = imageLayout(files);
    },
    (entry) => {
      // Ignored entries are still streamed (their declared sizes are verified) but never interpreted.
      if (isIgnored(entry)) return null;
      const chunks: Buffer[] = [];
      let gathered = 0;
      let checked = false;
      const check = (): void => {
        if (checked) return;
        checked = true;
        const head = Buffer.concat(chunks);
        const format = sniffImage(head, entry.name);
        if (!IMAGE_EXTENSIONS.test(entry.name)) {
          throw new InputRejected('zip_not_image', `entry ${quote(entry.name)} holds a ${format.toUpperCase()} image but lacks a .png, .jpg or .jpeg extension; rename it`);
        }
        const size = imageDimensions(head, format);
        if (size !== null && (size.width === 0 || size.height === 0)) {
          throw new InputRejected('zip_not_image', `entry ${quote(entry.name)} declares a ${size.width}×${size.height} image; it is not a usable ${format.toUpperCase()}`);
        }
        if (size !== null && size.width * size.height > limits.maxImagePixels) {
          throw new InputRejected(
            'zip_image_too_large',
            `entry ${quote(entry.name)} declares ${size.width}×${size.height} pixels, over the limit of ${limits.maxImagePixels}: refused as a decompression bomb; resize the image`,
          );
        }
        formats[format]++;
        total++;
        const cls = layout.classOf.get(entry.name);
        if (cls) counts.set(cls, (counts.get(cls) ?? 0) + 1);
      };
      return {
        write(chunk) {
          if (checked) return;
          chunks.push(chunk.subarray(0, HEADER_SCAN_BYTES - gathered));
          gathered += chunks[chunks.length - 1]!.length;
          if (gathered >= HEADER_SCAN_BYTES) check();
        },
        end() {
          check();
        },
      };
    },
  );

  const classes = [...counts.keys()].sort();
  const numeric = classes.length > 0 && classes.every((c) => /^\d+$/.test(c));
  const labels: Record<string, number> = {};
  const countsPerClass: Record<string, number> = {};
  classes.forEach((c, i) => {
    labels[c] = numeric ? Number(c) : i;
    countsPerClass[c] = counts.get(c)!;
  });
  const labelled = classes.length > 0;
  return {
    labelled,
    classes,
    labels,
    numClasses: labelled ? Math.max(...Object.values(labels)) + 1 : null,
    countsPerClass,
    total,
    root: layout.root,
    formats,
    ignored,
  };
}
