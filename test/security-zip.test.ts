// The ZIP dataset inspector: one crafted archive per rejection reason, plus the layouts it accepts.
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { execFileSync } from 'node:child_process';
import { DEFAULT_ZIP_LIMITS, InputRejected, inspectZipDataset, type RejectionCode, type ZipLimits } from '../src/security/index.js';
import { imageDimensions } from '../src/security/image-header.js';
import { buildZip, JPEG_BYTES, jpegHeader, PNG_BYTES, pngHeader, type ZipEntrySpec } from './fixtures/hostile/zip-writer.js';

const work = mkdtempSync(path.join(tmpdir(), 'tuckerize-zip-'));
after(() => rmSync(work, { recursive: true, force: true }));

let counter = 0;
function writeZip(bytes: Buffer): { file: string; bytes: number } {
  const file = path.join(work, `d${counter++}.zip`);
  writeFileSync(file, bytes);
  return { file, bytes: bytes.length };
}

async function rejection(bytes: Buffer, limits: ZipLimits = DEFAULT_ZIP_LIMITS): Promise<InputRejected> {
  const { file, bytes: n } = writeZip(bytes);
  try {
    await inspectZipDataset(file, n, limits);
  } catch (err) {
    assert.ok(err instanceof InputRejected, `expected InputRejected, got ${String(err)}`);
    return err;
  }
  assert.fail('the archive was accepted');
}

const png = (name: string | Buffer, extra: Partial<ZipEntrySpec> = {}): ZipEntrySpec => ({ name, data: PNG_BYTES, ...extra });
const MiB = 1024 * 1024;

describe('accepted layouts', () => {
  test('class folders at the root, PNG and JPEG, with directory entries', async () => {
    const { file, bytes } = writeZip(
      buildZip([
        { name: 'cat/', unixMode: 0o040755 },
        png('cat/a.png', { method: 'deflate' }),
        { name: 'cat/b.jpg', data: JPEG_BYTES },
        { name: 'dog/', unixMode: 0o040755 },
        png('dog/c.PNG'),
      ]),
    );
    assert.deepEqual(await inspectZipDataset(file, bytes), {
      labelled: true,
      classes: ['cat', 'dog'],
      labels: { cat: 0, dog: 1 },
      numClasses: 2,
      countsPerClass: { cat: 2, dog: 1 },
      total: 3,
      root: null,
      formats: { png: 2, jpeg: 1 },
      ignored: 0,
    });
  });

  test('class folders under one top-level folder; numeric folder names are the labels', async () => {
    const { file, bytes } = writeZip(buildZip([png('fmnist/0/1.png'), png('fmnist/7/2.png'), png('fmnist/7/3.png')]));
    const summary = await inspectZipDataset(file, bytes);
    assert.equal(summary.root, 'fmnist');
    assert.deepEqual(summary.countsPerClass, { 0: 1, 7: 2 });
    assert.deepEqual(summary.labels, { 0: 0, 7: 7 });
    assert.equal(summary.numClasses, 8);
  });

  test('images at the top level are an unlabelled dataset', async () => {
    const { file, bytes } = writeZip(buildZip([png('1.png'), { name: '2.jpeg', data: JPEG_BYTES }]));
    const summary = await inspectZipDataset(file, bytes);
    assert.equal(summary.labelled, false);
    assert.equal(summary.total, 2);
    assert.equal(summary.numClasses, null);
  });

  test('macOS resource forks and hidden files are skipped, as the engine skips them', async () => {
    const { file, bytes } = writeZip(
      buildZip([png('cat/a.png'), { name: '__MACOSX/cat/._a.png', data: Buffer.from('AppleDouble') }, { name: 'cat/.DS_Store', data: Buffer.from('junk') }]),
    );
    const summary = await inspectZipDataset(file, bytes);
    assert.equal(summary.total, 1);
    assert.equal(summary.ignored, 2);
  });
});

describe('image headers', () => {
  test('dimensions read from real PNG and JPEG files written by Pillow', () => {
    // The JPEG carries a 3 kB EXIF segment, so the frame header is not where a naive reader looks.
    const script = String.raw`
import io, sys
from PIL import Image
image = Image.new('RGB', (123, 45))
png, jpeg = io.BytesIO(), io.BytesIO()
image.save(png, 'PNG')
image.save(jpeg, 'JPEG', exif=b'Exif\x00\x00' + bytes(3000))
print(png.getvalue().hex())
print(jpeg.getvalue().hex())
`;
    const [png, jpeg] = execFileSync('/usr/bin/python3', ['-c', script], { encoding: 'utf8' }).trim().split('\n').map((h) => Buffer.from(h, 'hex'));
    assert.deepEqual(imageDimensions(png!, 'png'), { width: 123, height: 45 });
    assert.deepEqual(imageDimensions(jpeg!, 'jpeg'), { width: 123, height: 45 });
    assert.deepEqual(imageDimensions(jpegHeader(640, 480), 'jpeg'), { width: 640, height: 480 });
  });
});

describe('rejections', () => {
  const unicodePathExtra = (raw: string, unicode: string): Buffer => {
    const rawBytes = Buffer.from(raw, 'utf8');
    const body = Buffer.concat([Buffer.from([1]), Buffer.alloc(4), Buffer.from(unicode, 'utf8')]);
    body.writeUInt32LE(crc32(rawBytes), 1);
    const header = Buffer.alloc(4);
    header.writeUInt16LE(0x7075, 0);
    header.writeUInt16LE(body.length, 2);
    return Buffer.concat([header, body]);
  };
  const small: ZipLimits = { ...DEFAULT_ZIP_LIMITS, maxEntries: 3, maxEntryBytes: 200, maxTotalBytes: 300 };
  const zeros = Buffer.alloc(4 * MiB);

  const cases: [string, () => Buffer, RejectionCode, RegExp, ZipLimits?][] = [
    ['zip slip with a leading ../', () => buildZip([png('../evil.png')]), 'zip_path_traversal', /entry "\.\.\/evil\.png" climbs out/],
    ['zip slip in the middle of a path', () => buildZip([png('cat/../../etc/cron.d/x.png')]), 'zip_path_traversal', /cat\/\.\.\/\.\.\/etc/],
    ['zip slip with backslashes', () => buildZip([png(Buffer.from('..\\..\\evil.png'))]), 'zip_path_traversal', /path traversal/],
    ['absolute path', () => buildZip([png('/etc/passwd.png')]), 'zip_absolute_path', /"\/etc\/passwd\.png" has an absolute path/],
    ['drive letter', () => buildZip([png('C:/Windows/evil.png')]), 'zip_absolute_path', /"C:\/Windows\/evil\.png"/],
    ['symlink', () => buildZip([png('cat/a.png'), { name: 'cat/link.png', data: Buffer.from('/etc/passwd'), unixMode: 0o120777 }]), 'zip_symlink', /"cat\/link\.png" is a symbolic link/],
    ['named pipe', () => buildZip([{ name: 'cat/fifo.png', unixMode: 0o010644 }]), 'zip_special_file', /"cat\/fifo\.png" is a special file/],
    ['NUL byte in a name', () => buildZip([png(Buffer.from('cat/a.png\0.txt', 'latin1'))]), 'zip_bad_name', /NUL byte/],
    // No UTF-8 flag: CP437, which yauzl decodes to "cat/a♪b.png" (issue 12 item 7).
    ['control character in a CP437 name', () => buildZip([png(Buffer.from('cat/a\x0eb.png', 'latin1'))]), 'zip_bad_name', /control character/],
    ['DEL in a CP437 name', () => buildZip([png(Buffer.from('cat/\x7f.png', 'latin1'))]), 'zip_bad_name', /control character/],
    ['Unicode path field that differs from the header name', () => buildZip([png('cat/a.png', { extra: unicodePathExtra('cat/a.png', '../../a.png') })]), 'zip_bad_name', /different Unicode path "\.\.\/\.\.\/a\.png"/],
    ['duplicate entry', () => buildZip([png('cat/a.png'), png('cat/a.png')]), 'zip_duplicate_entry', /"cat\/a\.png" appears twice/],
    ['too many entries', () => buildZip([png('c/1.png'), png('c/2.png'), png('c/3.png'), png('c/4.png')]), 'zip_too_many_entries', /4 entries, over the limit of 3/, small],
    ['one entry over the per-file limit', () => buildZip([{ name: 'c/big.png', data: Buffer.concat([PNG_BYTES, Buffer.alloc(300)]) }]), 'zip_too_large', /"c\/big\.png" holds 364 bytes uncompressed/, small],
    ['total over the archive limit', () => buildZip([png('c/1.png'), png('c/2.png'), { name: 'c/3.png', data: Buffer.concat([PNG_BYTES, Buffer.alloc(120)]) }]), 'zip_too_large', /more than 300 bytes uncompressed/, small],
    ['zip bomb: 4 MiB of zeros deflated', () => buildZip([{ name: 'c/bomb.png', data: zeros, method: 'deflate' }]), 'zip_bomb', /"c\/bomb\.png" inflates \d+ bytes into 4194304 \(ratio \d+, limit 100\)/],
    ['overlapping entries sharing one deflate stream', () => buildZip([png('c/1.png'), png('c/2.png', { shareDataWith: 0 })]), 'zip_bomb', /shares its data with another entry/],
    [
      'entry inflating past its declared size',
      () => buildZip([{ name: 'c/liar.png', data: Buffer.concat([PNG_BYTES, Buffer.alloc(200_000, 1)]), method: 'deflate', declaredSize: 100 }]),
      'zip_size_mismatch',
      /declares 100 bytes but inflates to more; reading stopped at \d+ bytes/,
    ],
    ['entry holding less than it declares', () => buildZip([{ name: 'c/short.png', data: PNG_BYTES, method: 'deflate', declaredSize: 1000 }]), 'zip_size_mismatch', /declares 1000 bytes but holds 64/],
    ['stored entry whose sizes disagree', () => buildZip([{ name: 'c/s.png', data: PNG_BYTES, declaredSize: 10 }]), 'zip_size_mismatch', /stored entry "c\/s\.png" declares 10 bytes but occupies 64/],
    ['nested zip', () => buildZip([png('c/a.png'), { name: 'c/more.png', data: buildZip([png('x/y.png')]) }]), 'zip_nested_archive', /"c\/more\.png" is a ZIP archive/],
    ['gzip in disguise', () => buildZip([{ name: 'c/a.png', data: Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]) }]), 'zip_nested_archive', /gzip archive/],
    ['text file', () => buildZip([png('c/a.png'), { name: 'c/notes.txt', data: Buffer.from('hello') }]), 'zip_not_image', /"c\/notes\.txt" is not a PNG or JPEG/],
    ['text file with an image extension', () => buildZip([{ name: 'c/fake.png', data: Buffer.from('#!/bin/sh\nrm -rf /\n') }]), 'zip_not_image', /"c\/fake\.png" is not a PNG or JPEG image \(checked by its content/],
    ['images both in class folders and at the top level', () => buildZip([png('c/a.png'), png('stray.png')]), 'zip_layout', /"stray\.png" sits at the top level while other images are in class folders/],
    ['folders nested too deep', () => buildZip([png('a/b/c/d.png'), png('a/b/c/e.png')]), 'zip_layout', /"a\/b\/c\/d\.png" is nested too deep/],
    ['PNG declaring 100 000 × 100 000 pixels', () => buildZip([{ name: 'c/huge.png', data: pngHeader(100_000, 100_000) }]), 'zip_image_too_large', /"c\/huge\.png" declares 100000×100000 pixels/],
    ['JPEG declaring 65 535 × 65 535 pixels behind an EXIF segment', () => buildZip([{ name: 'c/huge.jpg', data: jpegHeader(65_535, 65_535) }]), 'zip_image_too_large', /"c\/huge\.jpg" declares 65535×65535 pixels/],
    ['PNG declaring zero width', () => buildZip([{ name: 'c/flat.png', data: pngHeader(0, 10) }]), 'zip_not_image', /declares a 0×10 image/],
    ['an image without an image extension', () => buildZip([png('c/a.bin')]), 'zip_not_image', /"c\/a\.bin" holds a PNG image but lacks a \.png, \.jpg or \.jpeg extension/],
    ['a hidden entry is still checked for traversal', () => buildZip([png('c/a.png'), png('__MACOSX/../../evil.png')]), 'zip_path_traversal', /__MACOSX\/\.\.\/\.\.\/evil\.png/],
    ['a hidden entry lying about its size', () => buildZip([png('c/a.png'), { name: 'c/.hidden', data: Buffer.alloc(50_000, 2), method: 'deflate', declaredSize: 10 }]), 'zip_size_mismatch', /"c\/\.hidden" declares 10 bytes but inflates to more/],
    ['encrypted entry', () => buildZip([png('c/a.png', { flags: 0x1 })]), 'zip_encrypted', /"c\/a\.png" is encrypted/],
    ['unsupported compression method', () => buildZip([png('c/a.png', { methodCode: 12 })]), 'zip_invalid', /compression method 12/],
    ['empty archive', () => buildZip([]), 'zip_empty', /holds no images/],
    ['only directories and macOS junk', () => buildZip([{ name: 'cat/', unixMode: 0o040755 }, { name: '__MACOSX/x', data: Buffer.from('y') }]), 'zip_empty', /holds no images/],
    ['not a zip at all', () => Buffer.from('this is not an archive, just text'), 'zip_invalid', /not a ZIP archive/],
    ['truncated archive', () => buildZip([png('c/a.png'), png('c/b.png')]).subarray(0, 150), 'zip_invalid', /not a ZIP archive/],
    [
      'corrupt deflate stream',
      () => {
        const zip = buildZip([{ name: 'c/a.png', data: Buffer.concat([PNG_BYTES, Buffer.alloc(500, 3)]), method: 'deflate' }]);
        zip.fill(0xff, 30 + 'c/a.png'.length, 30 + 'c/a.png'.length + 4);
        return zip;
      },
      'zip_invalid',
      /entry "c\/a\.png" cannot be read/,
    ],
  ];
  for (const [label, build, code, message, limits] of cases) {
    test(`${label} → ${code}`, async () => {
      const err = await rejection(build(), limits);
      assert.equal(err.code, code, err.message);
      assert.match(err.detail, message);
    });
  }
});
