// The ZIP dataset inspector: one crafted archive per rejection reason, plus the layouts it accepts.
import assert from 'node:assert/strict';
import { crc32 } from 'node:zlib';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { DEFAULT_ZIP_LIMITS, InputRejected, inspectZipDataset, type RejectionCode, type ZipLimits } from '../src/security/index.js';
import { buildZip, JPEG_BYTES, PNG_BYTES, type ZipEntrySpec } from './fixtures/hostile/zip-writer.js';

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
        png('dog/c.png'),
      ]),
    );
    const summary = await inspectZipDataset(file, bytes);
    assert.deepEqual(summary, { classes: ['cat', 'dog'], countsPerClass: { cat: 2, dog: 1 }, total: 3, root: null, formats: { png: 2, jpeg: 1 } });
  });

  test('class folders under one top-level folder', async () => {
    const { file, bytes } = writeZip(buildZip([png('fmnist/shirt/1.png'), png('fmnist/shoe/2.png'), png('fmnist/shoe/3.png')]));
    const summary = await inspectZipDataset(file, bytes);
    assert.equal(summary.root, 'fmnist');
    assert.deepEqual(summary.countsPerClass, { shirt: 1, shoe: 2 });
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
    ['file outside any class folder', () => buildZip([png('c/a.png'), png('stray.png')]), 'zip_layout', /"stray\.png" is not inside a class folder/],
    ['folders nested too deep', () => buildZip([png('a/b/c/d.png'), png('a/b/c/e.png')]), 'zip_layout', /"a\/b\/c\/d\.png" is not inside a class folder/],
    ['encrypted entry', () => buildZip([png('c/a.png', { flags: 0x1 })]), 'zip_encrypted', /"c\/a\.png" is encrypted/],
    ['unsupported compression method', () => buildZip([png('c/a.png', { methodCode: 12 })]), 'zip_invalid', /compression method 12/],
    ['empty archive', () => buildZip([]), 'zip_empty', /holds no files/],
    ['only directories', () => buildZip([{ name: 'cat/', unixMode: 0o040755 }]), 'zip_empty', /holds no files/],
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
