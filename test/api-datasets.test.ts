// POST/GET /v1/datasets: .npz arrays and .zip image folders, checked before anything is recorded.
import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { assertProblem, startTestApp, storedFiles, type TestApp } from './helpers/app.js';
import { createFixtures, type Fixtures } from './helpers/fixtures.js';

let t: TestApp;
let fx: Fixtures;

before(async () => {
  fx = await createFixtures();
  t = await startTestApp();
});
after(async () => {
  await t?.close();
  await fx?.cleanup();
});

describe('POST /v1/datasets', () => {
  test('an .npz of images and labels is stored with its shape', async () => {
    const res = await t.http().post('/v1/datasets').set(t.authA).attach('file', fx.imagesNpz);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.format, 'npz');
    assert.equal(res.body.name, 'images.npz');
    assert.deepEqual(res.body.info.shape, [8, 3, 16, 16]);
    assert.equal(res.body.info.labelled, true);
    assert.equal(res.headers.location, `/v1/datasets/${res.body.id}`);
  });

  test('a .zip of class folders is stored with its classes', async () => {
    const res = await t.http().post('/v1/datasets').set(t.authA).attach('file', fx.classesZip);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.body.format, 'zip');
    assert.deepEqual(res.body.info.classes, ['cat', 'dog']);
    assert.equal(res.body.info.total, 6);
  });

  test('the same bytes again return the existing dataset with 200', async () => {
    const first = await t.http().post('/v1/datasets').set(t.authA).attach('file', fx.imagesNpz);
    const again = await t.http().post('/v1/datasets').set(t.authA).attach('file', fx.imagesNpz);
    assert.equal(again.status, 200);
    assert.equal(again.body.id, first.body.id);
  });

  const refusals: Array<[string, () => Promise<string>, number, RegExp]> = [
    ['an .npz holding a pickled object array', async () => fx.pickledNpz, 422, /object|pickle/i],
    ['a zip with a path that climbs out (zip slip)', async () => fx.slipZip, 422, /\.\./],
    ['random bytes named .zip', async () => copyTo(fx.random, 'noise.zip'), 422, /zip/i],
    ['an empty file', async () => fx.empty, 422, /empty/],
    ['a file that is neither .npz nor .zip', async () => copyTo(fx.imagesNpz, 'images.csv'), 415, /\.npz.*\.zip/],
    ['an .npz named .zip', async () => copyTo(fx.mnistShapedNpz, 'arrays.zip'), 415, /rename it to \.npz/],
  ];
  for (const [what, file, status, detail] of refusals) {
    test(`refuses ${what} (${status}) and keeps nothing`, async () => {
      const filePath = await file();
      const filesBefore = await storedFiles(t.env.config.storageDir);
      const rowsBefore = await t.env.prisma.dataset.count();
      const res = await t.http().post('/v1/datasets').set(t.authA).attach('file', filePath);
      assertProblem(res, status, detail);
      assert.deepEqual(await storedFiles(t.env.config.storageDir), filesBefore);
      assert.equal(await t.env.prisma.dataset.count(), rowsBefore);
    });
  }
});

describe('dataset size limit', () => {
  let small: TestApp;
  before(async () => {
    small = await startTestApp({ MAX_DATASET_BYTES: '512' });
  });
  after(async () => small?.close());

  test('a dataset over MAX_DATASET_BYTES is a 413', async () => {
    const res = await small.http().post('/v1/datasets').set(small.authA).attach('file', fx.imagesNpz);
    assertProblem(res, 413, /512 bytes/);
    assert.deepEqual(await storedFiles(small.env.config.storageDir), []);
  });
});

describe('GET /v1/datasets', () => {
  test('list and get are scoped to the tenant', async () => {
    const created = await t.http().post('/v1/datasets').set(t.authA).attach('file', fx.classesZip);
    const list = await t.http().get('/v1/datasets').set(t.authA);
    assert.equal(list.status, 200);
    assert.ok(list.body.items.some((d: { id: string }) => d.id === created.body.id));
    const other = await t.http().get('/v1/datasets').set(t.authB);
    assert.equal(other.body.items.some((d: { id: string }) => d.id === created.body.id), false);
    const one = await t.http().get(`/v1/datasets/${created.body.id}`).set(t.authA);
    assert.equal(one.status, 200);
    assert.equal(one.body.sha256, created.body.sha256);
    assertProblem(await t.http().get(`/v1/datasets/${created.body.id}`).set(t.authB), 404, /does not exist/);
  });
});

let copies = 0;
async function copyTo(source: string, name: string): Promise<string> {
  copies += 1;
  const target = path.join(fx.dir, `copy${copies}-${name}`);
  await copyFile(source, target);
  return target;
}
