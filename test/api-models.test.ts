// POST/GET /v1/models against the real PostgreSQL, Redis and onnxruntime-node.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
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

describe('POST /v1/models', () => {
  test('stores a valid model, records its interface, and answers 201', async () => {
    const bytes = await readFile(fx.tiny);
    const res = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny);
    assert.equal(res.status, 201, JSON.stringify(res.body));
    assert.equal(res.headers.location, `/v1/models/${res.body.id}`);
    assert.equal(res.body.name, 'tiny.onnx');
    assert.equal(res.body.sha256, createHash('sha256').update(bytes).digest('hex'));
    assert.equal(res.body.bytes, bytes.length);
    assert.equal(res.body.opset, 13);
    assert.deepEqual(res.body.inputs, [{ name: 'input', type: 'float32', dims: ['N', 3, 16, 16] }]);
    assert.deepEqual(res.body.outputs, [{ name: 'logits', type: 'float32', dims: ['N', 10] }]);
    // conv 8·3·3·3 + 8, fc 10·8 + 10
    assert.equal(res.body.params, 216 + 8 + 80 + 10);
    assert.equal(res.body.macs, null);
    const row = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id: res.body.id } });
    const stored = await readFile(`${t.env.config.storageDir}/${row.storageKey}`);
    assert.ok(stored.equals(bytes), 'the stored object holds the uploaded bytes');
  });

  test('the same bytes again return the existing model with 200 and store nothing new', async () => {
    const first = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny);
    const filesBefore = await storedFiles(t.env.config.storageDir);
    const again = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny, 'renamed.onnx');
    assert.equal(again.status, 200);
    assert.equal(again.body.id, first.body.id);
    assert.deepEqual(await storedFiles(t.env.config.storageDir), filesBefore);
    assert.equal(await t.env.prisma.onnxModel.count({ where: { sha256: first.body.sha256 } }), 1);
  });

  test('the same bytes from another tenant are a separate model of that tenant', async () => {
    const a = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny);
    const b = await t.http().post('/v1/models').set(t.authB).attach('file', fx.tiny);
    assert.equal(b.status, 201);
    assert.notEqual(b.body.id, a.body.id);
    assert.equal(b.body.sha256, a.body.sha256);
  });

  const refusals: Array<[string, keyof Fixtures, number, RegExp, string]> = [
    ['an empty file', 'empty', 422, /empty/, 'unprocessable'],
    ['random bytes', 'random', 422, /not an ONNX model|protobuf|truncated/i, 'onnx_'],
    ['a truncated model', 'truncated', 422, /truncated/, 'onnx_truncated'],
    ['external data', 'external', 422, /external/, 'onnx_external_data'],
    ['an op the engine cannot run', 'customOp', 422, /FrobnicateOp/, 'onnx_unsupported_op'],
    ['an absurd declared shape', 'absurdShape', 422, /10000000/, 'onnx_absurd_shape'],
    ['a model onnxruntime cannot load', 'ortRefuses', 422, /onnxruntime cannot load ort-refuses\.onnx/, 'onnx_runtime_load'],
  ];
  for (const [what, fixture, status, detail, type] of refusals) {
    test(`refuses ${what} with ${status} and keeps nothing`, async () => {
      const filesBefore = await storedFiles(t.env.config.storageDir);
      const rowsBefore = await t.env.prisma.onnxModel.count();
      const res = await t.http().post('/v1/models').set(t.authA).attach('file', fx[fixture] as string);
      assertProblem(res, status, detail);
      assert.ok(String(res.body.type).includes(type.replaceAll('_', '-')), `${res.body.type} names ${type}`);
      assert.equal(String(res.body.detail).includes(t.env.config.storageDir), false, 'no server paths in messages');
      assert.deepEqual(await storedFiles(t.env.config.storageDir), filesBefore);
      assert.equal(await t.env.prisma.onnxModel.count(), rowsBefore);
    });
  }

  test('a JSON body instead of multipart is a 415', async () => {
    const res = await t.http().post('/v1/models').set(t.authA).send({ file: 'x' });
    assertProblem(res, 415, /multipart\/form-data/);
  });

  test('a file in the wrong field is a 400 naming the field to use', async () => {
    const res = await t.http().post('/v1/models').set(t.authA).attach('model', fx.tiny);
    assertProblem(res, 400, /field "file"/);
  });

  test('multipart without a file is a 400', async () => {
    const res = await t.http().post('/v1/models').set(t.authA).field('name', 'x');
    assertProblem(res, 400, /no file/);
  });

  test('requires an API key', async () => {
    // The API answers 401 before reading the upload. A client that asks for `Connection: close` (superagent's
    // default) may still be streaming the form when the server, as asked, closes: EPIPE instead of the answer.
    // With keep-alive the server discards the rest of the body and the answer always arrives.
    const res = await t.http().post('/v1/models').set('connection', 'keep-alive').attach('file', fx.tiny);
    assertProblem(res, 401, /Authorization/);
  });
});

describe('upload size limit', () => {
  let small: TestApp;
  before(async () => {
    small = await startTestApp({ MAX_MODEL_BYTES: '1000' });
  });
  after(async () => small?.close());

  test('a model over MAX_MODEL_BYTES is a 413 and leaves no temp file or object', async () => {
    const res = await small.http().post('/v1/models').set(small.authA).attach('file', fx.tiny);
    assertProblem(res, 413, /1000 bytes/);
    assert.deepEqual(await storedFiles(small.env.config.storageDir), []);
    assert.equal(await small.env.prisma.onnxModel.count(), 0);
  });

  test('a declared Content-Length far past the limit is refused up front', async () => {
    const res = await small.http().post('/v1/models').set(small.authA).attach('file', Buffer.alloc(300 * 1024, 7), 'big.onnx');
    assertProblem(res, 413, /1000 bytes/);
    assert.deepEqual(await storedFiles(small.env.config.storageDir), []);
  });
});

describe('GET /v1/models', () => {
  test('lists newest first, paginates with nextCursor, and shows only the caller tenant', async () => {
    await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny);
    await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny2);
    const mine = await t.env.prisma.onnxModel.findMany({ where: { tenant: { name: 'acme' } }, orderBy: [{ createdAt: 'desc' }, { id: 'desc' }] });
    assert.ok(mine.length >= 2);
    const first = await t.http().get('/v1/models?limit=1').set(t.authA);
    assert.equal(first.status, 200);
    assert.deepEqual(first.body.items.map((m: { id: string }) => m.id), [mine[0]?.id]);
    assert.equal(first.body.nextCursor, mine[0]?.id);
    const second = await t.http().get(`/v1/models?limit=1&cursor=${first.body.nextCursor}`).set(t.authA);
    assert.deepEqual(second.body.items.map((m: { id: string }) => m.id), [mine[1]?.id]);
    const all = await t.http().get('/v1/models?limit=100').set(t.authA);
    assert.equal(all.body.items.length, mine.length);
    assert.equal(all.body.nextCursor, null);
    const theirs = await t.http().get('/v1/models?limit=100').set(t.authB);
    for (const m of theirs.body.items as Array<{ id: string }>) assert.ok(!mine.some((x) => x.id === m.id));
  });

  test('bad paging parameters are 400s that name the parameter', async () => {
    assertProblem(await t.http().get('/v1/models?limit=0').set(t.authA), 400, /query string at \/limit/);
    assertProblem(await t.http().get('/v1/models?limit=abc').set(t.authA), 400, /limit/);
    assertProblem(await t.http().get('/v1/models?cursor=nope').set(t.authA), 400, /cursor/);
    assertProblem(await t.http().get('/v1/models?cursor=00000000-0000-4000-8000-000000000000').set(t.authA), 400, /cursor does not name/);
    assertProblem(await t.http().get('/v1/models?sort=name').set(t.authA), 400, /sort/);
  });

  test('GET /v1/models/:id: own model 200, another tenant 404, malformed id 400', async () => {
    const created = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny2);
    const own = await t.http().get(`/v1/models/${created.body.id}`).set(t.authA);
    assert.equal(own.status, 200);
    assert.equal(own.body.sha256, created.body.sha256);
    assertProblem(await t.http().get(`/v1/models/${created.body.id}`).set(t.authB), 404, /does not exist/);
    assertProblem(await t.http().get('/v1/models/not-a-uuid').set(t.authA), 400, /path at \/id/);
  });
});
