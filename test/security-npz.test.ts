// The NPZ inspector: arrays written by numpy itself, a pickle payload that would create a file, and one
// crafted .npy per rejection reason. Also the dataset-vs-model shape check and format detection.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  checkDatasetFitsModel,
  DEFAULT_NPZ_LIMITS,
  inspectDataset,
  inspectNpz,
  InputRejected,
  parsePyLiteral,
  type NpzLimits,
  type RejectionCode,
} from '../src/security/index.js';
import { buildZip, npyBytes, PNG_BYTES } from './fixtures/hostile/zip-writer.js';

const PYTHON = '/usr/bin/python3';
const work = mkdtempSync(path.join(tmpdir(), 'tuckerize-npz-'));
const marker = path.join(work, 'pwned-marker');
after(() => rmSync(work, { recursive: true, force: true }));

// numpy writes the real files: a labelled float32 set, an unlabelled uint8 set (compressed), and an
// object array whose elements unpickle into open(marker, 'w').
before(() => {
  const script = `
import sys, numpy as np
out, marker = sys.argv[1], sys.argv[2]
class Payload:
    def __reduce__(self):
        return (open, (marker, 'w'))
objects = np.empty(2, dtype=object)
objects[0] = Payload(); objects[1] = Payload()
np.savez(out + '/pickle.npz', x=objects)
rng = np.random.default_rng(0)
np.savez(out + '/good.npz', x=rng.random((6, 1, 8, 8), dtype=np.float32), y=np.array([0, 1, 2, 1, 0, 4]))
np.savez_compressed(out + '/good_u8.npz', x=rng.integers(0, 255, (3, 3, 8, 8), dtype=np.uint8))
`;
  execFileSync(PYTHON, ['-c', script, work, marker]);
});

const file = (name: string): [string, number] => {
  const p = path.join(work, name);
  return [p, statSync(p).size];
};

let counter = 0;
function writeNpz(entries: Record<string, Buffer>): [string, number] {
  const zip = buildZip(Object.entries(entries).map(([name, data]) => ({ name, data })));
  const p = path.join(work, `c${counter++}.npz`);
  writeFileSync(p, zip);
  return [p, zip.length];
}

const f32 = (shape: number[]): Buffer => npyBytes(`{'descr': '<f4', 'fortran_order': False, 'shape': (${shape.join(', ')}${shape.length === 1 ? ',' : ''}), }`, Buffer.alloc(shape.reduce((a, b) => a * b, 1) * 4));
const labels = (values: number[], descr = '<i8'): Buffer => {
  const data = Buffer.alloc(values.length * 8);
  values.forEach((v, i) => data.writeBigInt64LE(BigInt(v), i * 8));
  return npyBytes(`{'descr': '${descr}', 'fortran_order': False, 'shape': (${values.length},), }`, data);
};

async function rejection([p, n]: [string, number], limits: NpzLimits = DEFAULT_NPZ_LIMITS): Promise<InputRejected> {
  try {
    await inspectNpz(p, n, limits);
  } catch (err) {
    assert.ok(err instanceof InputRejected, `expected InputRejected, got ${String(err)}`);
    return err;
  }
  assert.fail('the .npz was accepted');
}

describe('numpy-written files', () => {
  test('labelled float32 and compressed uint8 datasets', async () => {
    assert.deepEqual(await inspectNpz(...file('good.npz')), { count: 6, shape: [6, 1, 8, 8], dtype: 'float32', labelled: true, classes: 5 });
    assert.deepEqual(await inspectNpz(...file('good_u8.npz')), { count: 3, shape: [3, 3, 8, 8], dtype: 'uint8', labelled: false });
  });

  test('a pickled object array is refused from its header, and its payload never runs', async () => {
    const err = await rejection(file('pickle.npz'));
    assert.equal(err.code, 'npz_pickle');
    assert.match(err.detail, /array x has (dtype object|an object dtype).*unpickle/);
    assert.equal(existsSync(marker), false);
    // The payload is real: numpy with pickles allowed does create the marker.
    execFileSync(PYTHON, ['-c', 'import sys, numpy as np; np.load(sys.argv[1], allow_pickle=True)["x"]', file('pickle.npz')[0]]);
    assert.equal(existsSync(marker), true);
  });

  test('inspectDataset tells an .npz from an image zip by its entries', async () => {
    const npz = await inspectDataset(...file('good.npz'));
    assert.equal(npz.format, 'npz');
    const zipBytes = buildZip([{ name: 'a/1.png', data: PNG_BYTES }]);
    const zipPath = path.join(work, 'images.zip');
    writeFileSync(zipPath, zipBytes);
    const images = await inspectDataset(zipPath, zipBytes.length);
    assert.equal(images.format, 'zip');
  });
});

describe('rejections', () => {
  const header = (body: string, payload = Buffer.alloc(0), version: 1 | 2 | 3 = 1): Buffer => npyBytes(body, payload, version);
  const cases: [string, () => [string, number], RejectionCode, RegExp, NpzLimits?][] = [
    ['object dtype in the labels', () => writeNpz({ 'x.npy': f32([1, 1, 2, 2]), 'y.npy': header("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(8)) }), 'npz_pickle', /array y has .*object/],
    [
      'structured dtype hiding an object field',
      () => writeNpz({ 'x.npy': header("{'descr': [('a', '<f4'), ('b', '|O')], 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(12)) }),
      'npz_pickle',
      /object dtype/,
    ],
    ['structured dtype', () => writeNpz({ 'x.npy': header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(4)) }), 'npz_dtype', /structured or missing dtype/],
    ['float64 images', () => writeNpz({ 'x.npy': header("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 1, 2, 2), }", Buffer.alloc(32)) }), 'npz_dtype', /array x has dtype "<f8"; images must be float32 or uint8/],
    ['3-D images', () => writeNpz({ 'x.npy': f32([2, 8, 8]) }), 'npz_shape', /shape \(2, 8, 8\); it must be \(N, C, H, W\)/],
    ['ten channels', () => writeNpz({ 'x.npy': f32([1, 10, 2, 2]) }), 'npz_shape', /shape \(1, 10, 2, 2\)/],
    ['zero images', () => writeNpz({ 'x.npy': f32([0, 1, 2, 2]) }), 'npz_shape', /N ≥ 1/],
    ['no x array', () => writeNpz({ 'y.npy': labels([0]) }), 'npz_missing_x', /no array named x/],
    ['an unexpected array', () => writeNpz({ 'x.npy': f32([1, 1, 2, 2]), 'payload.npy': f32([1]) }), 'npz_bad_entry', /unexpected entry "payload\.npy"/],
    ['labels for fewer images', () => writeNpz({ 'x.npy': f32([3, 1, 2, 2]), 'y.npy': labels([0, 1]) }), 'npz_labels', /y holds 2 labels but x holds 3 images/],
    ['float labels', () => writeNpz({ 'x.npy': f32([1, 1, 2, 2]), 'y.npy': header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(4)) }), 'npz_labels', /labels must be integers/],
    ['negative label', () => writeNpz({ 'x.npy': f32([2, 1, 2, 2]), 'y.npy': labels([0, -1]) }), 'npz_labels', /label y\[1\] = -1/],
    ['2-D labels', () => writeNpz({ 'x.npy': f32([2, 1, 2, 2]), 'y.npy': header("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 1), }", Buffer.alloc(16)) }), 'npz_labels', /one-dimensional/],
    ['bad magic', () => writeNpz({ 'x.npy': Buffer.concat([Buffer.from('NOTNUMPY!!'), Buffer.alloc(60)]) }), 'npz_bad_header', /\.npy magic bytes/],
    ['format version 9', () => writeNpz({ 'x.npy': Buffer.concat([Buffer.from([0x93]), Buffer.from('NUMPY'), Buffer.from([9, 0]), Buffer.alloc(60)]) }), 'npz_bad_header', /format version 9\.0/],
    [
      'code instead of a literal in the header',
      () => writeNpz({ 'x.npy': header("{'descr': __import__('os').system('touch /tmp/x'), 'fortran_order': False, 'shape': (1,), }") }),
      'npz_bad_header',
      /not a plain Python literal \(an unexpected token/,
    ],
    ['header longer than numpy allows', () => writeNpz({ 'x.npy': header(`{'descr': '<f4', 'fortran_order': False, 'shape': (1,), '${'p'.repeat(20000)}': 1, }`, Buffer.alloc(4), 2) }), 'npz_bad_header', /byte header \(limit 10000\)/],
    ['shape promising more data than stored', () => writeNpz({ 'x.npy': header("{'descr': '<f4', 'fortran_order': False, 'shape': (1000, 3, 224, 224), }", Buffer.alloc(64)) }), 'npz_size_mismatch', /needs 602112\d+ bytes, but its file holds \d+/],
    ['more images than the limit', () => writeNpz({ 'x.npy': f32([5, 1, 1, 1]) }), 'npz_too_large', /holds 5 images, over the limit of 4/, { ...DEFAULT_NPZ_LIMITS, maxCount: 4 }],
    ['zip slip inside the npz', () => writeNpz({ '../x.npy': f32([1, 1, 2, 2]) }), 'zip_path_traversal', /climbs out/],
  ];
  for (const [label, build, code, message, limits] of cases) {
    test(`${label} → ${code}`, async () => {
      const err = await rejection(build(), limits);
      assert.equal(err.code, code, err.message);
      assert.match(err.detail, message);
    });
  }
});

describe('the .npy header literal parser', () => {
  test('reads what numpy writes and nothing more', () => {
    const dict = parsePyLiteral("{'descr': '<f4', 'fortran_order': False, 'shape': (6, 1, 8, 8), }");
    assert.ok(dict instanceof Map);
    assert.deepEqual(dict.get('shape'), { tuple: [6, 1, 8, 8] });
    assert.equal(dict.get('fortran_order'), false);
    assert.deepEqual(parsePyLiteral('(5,)'), { tuple: [5] });
    assert.equal(parsePyLiteral('(5)'), 5);
    for (const bad of ["{'a': 1} + 1", "{'a': b}", "{'a': '\\x41'}", '{1: 2}', "{'a': " + '('.repeat(20) + ')'.repeat(20) + '}']) {
      assert.throws(() => parsePyLiteral(bad), (err: unknown) => err instanceof InputRejected && err.code === 'npz_bad_header', bad);
    }
  });
});

describe('dataset against model input', () => {
  const npz = { format: 'npz' as const, info: { count: 6, shape: [6, 1, 8, 8] as [number, number, number, number], dtype: 'float32' as const, labelled: false } };
  test('symbolic and matching dimensions fit', () => {
    checkDatasetFitsModel(npz, [{ name: 'image', elemType: 1, dims: ['batch', 1, 8, 8] }]);
    checkDatasetFitsModel(npz, [{ name: 'image', dims: [1, 1, 'h', 'w'] }]);
  });
  test('image folders need a 1- or 3-channel input; labels must fit the output', () => {
    const images = {
      format: 'zip' as const,
      info: { labelled: true, classes: ['0', '9'], labels: { 0: 0, 9: 9 }, numClasses: 10, countsPerClass: { 0: 1, 9: 1 }, total: 2, root: null, formats: { png: 2, jpeg: 0 }, ignored: 0 },
    };
    checkDatasetFitsModel(images, [{ name: 'image', dims: ['N', 3, 224, 224] }], [{ name: 'logits', dims: ['N', 10] }]);
    assert.throws(
      () => checkDatasetFitsModel(images, [{ name: 'image', dims: ['N', 4, 224, 224] }]),
      (err: unknown) => err instanceof InputRejected && err.code === 'dataset_shape_mismatch' && /takes 4 channels/.test(err.detail),
    );
    assert.throws(
      () => checkDatasetFitsModel(images, [{ name: 'image', dims: ['N', 1, 28, 28] }], [{ name: 'logits', dims: ['N', 5] }]),
      (err: unknown) => err instanceof InputRejected && /labels go up to 9 but model output "logits" scores 5 classes/.test(err.detail),
    );
  });

  test('mismatches name the dimension', () => {
    const cases: [Parameters<typeof checkDatasetFitsModel>[1], RegExp][] = [
      [[{ name: 'image', dims: ['batch', 3, 8, 8] }], /C differs \(1 vs 3\)/],
      [[{ name: 'image', dims: [1, 1, 28, 28] }], /H differs \(8 vs 28\)/],
      [[{ name: 'tokens', dims: [1, 64] }], /must be 4-D/],
      [[{ name: 'a', dims: [1, 1, 8, 8] }, { name: 'b', dims: [1] }], /2 inputs/],
      [[{ name: 'ids', elemType: 7, dims: [1, 1, 8, 8] }], /element type 7/],
    ];
    for (const [inputs, message] of cases) {
      assert.throws(
        () => checkDatasetFitsModel(npz, inputs),
        (err: unknown) => err instanceof InputRejected && err.code === 'dataset_shape_mismatch' && message.test(err.detail),
      );
    }
  });
});
