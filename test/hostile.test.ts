// Bad requests against the real API (buildApp on this machine's PostgreSQL and Redis): each row asserts
// the status code, a problem+json body whose detail names the problem, and that nothing was stored — no
// new row in any table, no new file in the artifact store, no new BullMQ job.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Queue } from 'bullmq';
import type { Response } from 'supertest';
import { COMPRESSION_QUEUE } from '../src/queue/index.js';
import { createTestKey } from './helpers/env.js';
import { startTestApp, storedFiles, type TestApp } from './helpers/app.js';
import { buildZip, npyBytes, PNG_BYTES, pngHeader } from './fixtures/hostile/zip-writer.js';

const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures', 'hostile');
const fixture = (name: string): Buffer => readFileSync(path.join(FIXTURES, name));
const MAX_MODEL_BYTES = 64 * 1024;

let t: TestApp;
let queue: Queue;
const work = mkdtempSync(path.join(tmpdir(), 'tuckerize-hostile-'));
const marker = path.join(work, 'pickle-ran');
let pickleNpz: Buffer;
const ids = {
  modelA: '',
  modelB: '',
  datasetMismatchA: '',
  datasetB: '',
  queuedJobA: '',
  finishedJobA: '',
  jobB: '',
};
let revokedKey = '';

const f32Npy = (shape: number[], descr = '<f4', itemSize = 4): Buffer =>
  npyBytes(`{'descr': '${descr}', 'fortran_order': False, 'shape': (${shape.join(', ')}), }`, Buffer.alloc(shape.reduce((a, b) => a * b, 1) * itemSize));
const npz = (entries: Record<string, Buffer>): Buffer => buildZip(Object.entries(entries).map(([name, data]) => ({ name, data })));

before(async () => {
  t = await startTestApp({ MAX_MODEL_BYTES: String(MAX_MODEL_BYTES) });
  queue = new Queue(COMPRESSION_QUEUE, { connection: { url: t.env.config.redisUrl }, prefix: t.env.config.queuePrefix });

  // numpy writes an object array whose elements unpickle into open(marker, 'w').
  const script = `
import io, sys, numpy as np
class Payload:
    def __reduce__(self):
        return (open, (sys.argv[1], 'w'))
objects = np.empty(1, dtype=object); objects[0] = Payload()
buf = io.BytesIO(); np.savez(buf, x=objects); sys.stdout.buffer.write(buf.getvalue())
`;
  pickleNpz = execFileSync('/usr/bin/python3', ['-c', script, marker]);

  const http = t.http();
  const upload = async (auth: { authorization: string }, route: string, bytes: Buffer, name: string): Promise<string> => {
    const res = await http.post(route).set(auth).attach('file', bytes, name);
    assert.equal(res.status, 201, `${route} ${name}: ${res.status} ${JSON.stringify(res.body)}`);
    return res.body.id as string;
  };
  ids.modelA = await upload(t.authA, '/v1/models', fixture('good_tinynet.onnx'), 'tinynet.onnx');
  ids.modelB = await upload(t.authB, '/v1/models', fixture('good_tiny.onnx'), 'tiny.onnx');
  // tinynet takes [batch, 1, 8, 8]; these images have 3 channels.
  ids.datasetMismatchA = await upload(t.authA, '/v1/datasets', npz({ 'x.npy': f32Npy([2, 3, 8, 8]) }), 'rgb.npz');
  ids.datasetB = await upload(t.authB, '/v1/datasets', npz({ 'x.npy': f32Npy([2, 1, 8, 8]) }), 'gray.npz');

  const created = await http.post('/v1/jobs').set(t.authA).send({ modelId: ids.modelA, options: { rule: 'ratio', ratio: 0.5 } });
  assert.equal(created.status, 202, JSON.stringify(created.body));
  ids.queuedJobA = created.body.id;
  const keyed = await http.post('/v1/jobs').set(t.authA).set('idempotency-key', 'nightly-42').send({ modelId: ids.modelA });
  assert.equal(keyed.status, 202, JSON.stringify(keyed.body));
  const createdB = await http.post('/v1/jobs').set(t.authB).send({ modelId: ids.modelB });
  assert.equal(createdB.status, 202, JSON.stringify(createdB.body));
  ids.jobB = createdB.body.id;
  const tenantA = await t.env.prisma.tenant.findUniqueOrThrow({ where: { name: 'acme' } });
  const finished = await t.env.prisma.job.create({
    data: { tenantId: tenantA.id, modelId: ids.modelA, options: { rule: 'vbmf' }, status: 'succeeded', startedAt: new Date(), finishedAt: new Date() },
  });
  ids.finishedJobA = finished.id;

  revokedKey = await createTestKey(t.env.prisma, 'initech');
  await t.env.prisma.apiKey.updateMany({ where: { prefix: revokedKey.split('_')[1]! }, data: { revokedAt: new Date() } });
});

after(async () => {
  await queue?.close();
  await t?.close();
  rmSync(work, { recursive: true, force: true });
});

interface Snapshot {
  rows: Record<string, number>;
  files: string[];
  queued: number;
}

async function snapshot(): Promise<Snapshot> {
  const p = t.env.prisma;
  const [tenants, apiKeys, models, datasets, jobs, jobEvents, artifacts, metrics] = await Promise.all([
    p.tenant.count(),
    p.apiKey.count(),
    p.onnxModel.count(),
    p.dataset.count(),
    p.job.count(),
    p.jobEvent.count(),
    p.artifact.count(),
    p.metric.count(),
  ]);
  const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
  return {
    rows: { tenants, apiKeys, models, datasets, jobs, jobEvents, artifacts, metrics },
    files: await storedFiles(t.env.config.storageDir),
    queued: Object.values(counts).reduce((a, b) => a + b, 0),
  };
}

const A = (): { authorization: string } => t.authA;
const keyA = (): string => t.keyA;
const unknownKey = 'tk_0123456789ab_' + 'Q'.repeat(32);

interface Case {
  name: string;
  send: () => Promise<Response>;
  status: number;
  /** the end of the problem `type` URI (the API's slug or the inspector's rejection code) */
  type: string;
  detail: RegExp;
}

const jobWith = (options: Record<string, unknown>): (() => Promise<Response>) => () =>
  t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, options });
const uploadModel = (bytes: Buffer, name = 'model.onnx'): (() => Promise<Response>) => () =>
  t.http().post('/v1/models').set(A()).attach('file', bytes, name);
const uploadDataset = (bytes: Buffer, name: string): (() => Promise<Response>) => () =>
  t.http().post('/v1/datasets').set(A()).attach('file', bytes, name);

const randomBytes = (n: number, seed: number): Buffer => {
  let s = seed;
  return Buffer.from(Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31), s % 256)));
};

const CASES: Case[] = [
  // authentication and tenancy
  { name: 'no API key', send: () => t.http().get('/v1/models'), status: 401, type: 'unauthorized', detail: /missing Authorization header/ },
  { name: 'unknown API key', send: () => t.http().get('/v1/models').set('authorization', `Bearer ${unknownKey}`), status: 401, type: 'unauthorized', detail: /invalid API key/ },
  { name: 'malformed API key', send: () => t.http().get('/v1/models').set('authorization', 'Bearer hunter2'), status: 401, type: 'unauthorized', detail: /malformed API key/ },
  { name: 'Basic instead of Bearer', send: () => t.http().get('/v1/models').set('authorization', `Basic ${Buffer.from('a:b').toString('base64')}`), status: 401, type: 'unauthorized', detail: /must be "Bearer <api key>"/ },
  { name: 'right prefix, wrong secret', send: () => t.http().get('/v1/models').set('authorization', `Bearer ${keyA().slice(0, 16)}${'Z'.repeat(32)}`), status: 401, type: 'unauthorized', detail: /invalid API key/ },
  { name: 'revoked API key', send: () => t.http().get('/v1/models').set('authorization', `Bearer ${revokedKey}`), status: 401, type: 'unauthorized', detail: /revoked/ },
  { name: "another tenant's model", send: () => t.http().get(`/v1/models/${ids.modelB}`).set(A()), status: 404, type: 'not-found', detail: /model .* does not exist for this API key's tenant/ },
  { name: "another tenant's job", send: () => t.http().get(`/v1/jobs/${ids.jobB}`).set(A()), status: 404, type: 'not-found', detail: /job .* does not exist/ },
  { name: "another tenant's job artifact", send: () => t.http().get(`/v1/jobs/${ids.jobB}/artifact`).set(A()), status: 404, type: 'not-found', detail: /job .* does not exist/ },
  { name: "cancel another tenant's job", send: () => t.http().post(`/v1/jobs/${ids.jobB}/cancel`).set(A()), status: 404, type: 'not-found', detail: /job .* does not exist/ },
  { name: "job on another tenant's model", send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelB }), status: 404, type: 'not-found', detail: /model .* does not exist for this API key's tenant/ },
  { name: "job with another tenant's dataset", send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, datasetId: ids.datasetB }), status: 404, type: 'not-found', detail: /dataset .* does not exist/ },
  { name: "events of another tenant's job", send: () => t.http().get(`/v1/jobs/${ids.jobB}/events`).set(A()), status: 404, type: 'not-found', detail: /job .* does not exist/ },
  { name: 'id that is not a UUID', send: () => t.http().get('/v1/jobs/1%20OR%201=1').set(A()), status: 400, type: 'bad-request', detail: /must be a UUID/ },
  // job requests
  { name: 'malformed JSON', send: () => t.http().post('/v1/jobs').set(A()).set('content-type', 'application/json').send('{"modelId": '), status: 400, type: 'bad-request', detail: /not valid JSON/ },
  { name: 'JSON array body', send: () => t.http().post('/v1/jobs').set(A()).send([ids.modelA]), status: 400, type: 'bad-request', detail: /body/ },
  { name: 'unknown top-level field', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, priority: 'high' }), status: 400, type: 'bad-request', detail: /priority/ },
  { name: 'unknown option', send: jobWith({ rule: 'vbmf', turbo: true }), status: 422, type: 'invalid-job-options', detail: /turbo/ },
  { name: 'ratio = 0', send: jobWith({ rule: 'ratio', ratio: 0 }), status: 422, type: 'invalid-job-options', detail: /ratio must be > 0/ },
  { name: 'ratio > 1', send: jobWith({ rule: 'ratio', ratio: 1.5 }), status: 422, type: 'invalid-job-options', detail: /ratio must be ≤ 1/ },
  { name: 'ratio as a string', send: jobWith({ rule: 'ratio', ratio: '0.5' }), status: 422, type: 'invalid-job-options', detail: /ratio must be a number/ },
  { name: 'rule=ratio without ratio', send: jobWith({ rule: 'ratio' }), status: 422, type: 'invalid-job-options', detail: /rule=ratio needs ratio/ },
  { name: 'targetMacs = 1', send: jobWith({ rule: 'budget', targetMacs: 1 }), status: 422, type: 'invalid-job-options', detail: /targetMacs must be < 1/ },
  { name: 'targetMacs ≤ 0', send: jobWith({ rule: 'budget', targetMacs: -0.2 }), status: 422, type: 'invalid-job-options', detail: /targetMacs must be > 0/ },
  { name: 'unknown rule', send: jobWith({ rule: 'magic' }), status: 422, type: 'invalid-job-options', detail: /rule/ },
  { name: 'epochs = 0', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, datasetId: 'builtin:fashion-mnist', options: { finetune: { epochs: 0 } } }), status: 422, type: 'invalid-job-options', detail: /epochs must be > 0/ },
  { name: 'lr = 0', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, datasetId: 'builtin:fashion-mnist', options: { finetune: { lr: 0 } } }), status: 422, type: 'invalid-job-options', detail: /lr must be > 0/ },
  { name: 'lr < 0', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, datasetId: 'builtin:fashion-mnist', options: { finetune: { lr: -0.01 } } }), status: 422, type: 'invalid-job-options', detail: /lr must be > 0/ },
  { name: 'modelId missing', send: () => t.http().post('/v1/jobs').set(A()).send({ options: { rule: 'vbmf' } }), status: 400, type: 'bad-request', detail: /modelId/ },
  { name: 'Idempotency-Key reused with a different body', send: () => t.http().post('/v1/jobs').set(A()).set('idempotency-key', 'nightly-42').send({ modelId: ids.modelA, options: { rule: 'ratio', ratio: 0.3 } }), status: 409, type: 'conflict', detail: /already used with a different request body/ },
  { name: 'Idempotency-Key with spaces', send: () => t.http().post('/v1/jobs').set(A()).set('idempotency-key', 'drop table jobs').send({ modelId: ids.modelA }), status: 400, type: 'bad-request', detail: /printable ASCII characters without spaces/ },
  { name: 'page size over 100', send: () => t.http().get('/v1/jobs?limit=100000').set(A()), status: 400, type: 'bad-request', detail: /limit/ },
  { name: 'unknown job status filter', send: () => t.http().get('/v1/jobs?status=exploded').set(A()), status: 400, type: 'bad-request', detail: /status/ },
  { name: 'job for a missing model', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: randomUUID() }), status: 404, type: 'not-found', detail: /model .* does not exist/ },
  { name: 'job body as text/plain', send: () => t.http().post('/v1/jobs').set(A()).set('content-type', 'text/plain').send('modelId=1'), status: 415, type: 'unsupported-media-type', detail: /application\/json/ },
  { name: 'job body over 1 MiB', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, pad: 'x'.repeat(1_100_000) }), status: 413, type: 'payload-too-large', detail: /smaller/ },
  { name: 'dataset whose shape does not fit the model', send: () => t.http().post('/v1/jobs').set(A()).send({ modelId: ids.modelA, datasetId: ids.datasetMismatchA }), status: 422, type: 'dataset_shape_mismatch', detail: /C differs \(3 vs 1\)/ },
  // job state
  { name: 'artifact of an unfinished job', send: () => t.http().get(`/v1/jobs/${ids.queuedJobA}/artifact`).set(A()), status: 409, type: 'conflict', detail: /is queued; its artifact can be downloaded once it has succeeded/ },
  { name: 'report of an unfinished job', send: () => t.http().get(`/v1/jobs/${ids.queuedJobA}/report`).set(A()), status: 409, type: 'conflict', detail: /has no report yet/ },
  { name: 'cancel of a finished job', send: () => t.http().post(`/v1/jobs/${ids.finishedJobA}/cancel`).set(A()), status: 409, type: 'conflict', detail: /already succeeded; only queued or running jobs can be canceled/ },
  // model uploads
  { name: 'empty model file', send: uploadModel(Buffer.alloc(0)), status: 422, type: 'unprocessable', detail: /empty/ },
  { name: 'random bytes as a model', send: uploadModel(randomBytes(4096, 7)), status: 422, type: 'onnx_not_protobuf', detail: /not .*ONNX/ },
  { name: 'JSON uploaded as a model', send: uploadModel(Buffer.from('{"layers": []}'), 'model.json'), status: 422, type: 'onnx_not_protobuf', detail: /not .*ONNX/ },
  { name: 'truncated ONNX', send: uploadModel(fixture('good_tinynet.onnx').subarray(0, 1500)), status: 422, type: 'onnx_truncated', detail: /truncated/ },
  { name: 'ONNX with external data', send: uploadModel(fixture('external_data.onnx')), status: 422, type: 'onnx_external_data', detail: /initializer "w" keeps its data in an external file/ },
  { name: 'ONNX Constant pointing at /etc/passwd', send: uploadModel(fixture('external_constant.onnx')), status: 422, type: 'onnx_external_data', detail: /\/etc\/passwd/ },
  { name: 'ONNX with unsupported ops', send: uploadModel(fixture('unsupported_op.onnx')), status: 422, type: 'onnx_unsupported_op', detail: /RoiAlign \(node "roi_align"\); NonMaxSuppression \(node "nms"\)/ },
  { name: 'ONNX with a custom-domain op', send: uploadModel(fixture('custom_domain_op.onnx')), status: 422, type: 'onnx_unsupported_op', detail: /com\.example::FancyActivation/ },
  { name: 'ONNX opset 9', send: uploadModel(fixture('opset_9.onnx')), status: 422, type: 'onnx_opset', detail: /opset 9/ },
  { name: 'ONNX with an absurd input shape', send: uploadModel(fixture('absurd_input_dim.onnx')), status: 422, type: 'onnx_absurd_shape', detail: /dimension 2 = 10000000/ },
  { name: 'ONNX initializer promising 10^10 weights', send: uploadModel(fixture('absurd_initializer.onnx')), status: 422, type: 'onnx_absurd_shape', detail: /10000000000 elements/ },
  { name: 'ONNX initializer with too few bytes', send: uploadModel(fixture('initializer_size_mismatch.onnx')), status: 422, type: 'onnx_initializer_size', detail: /raw_data holds 16 bytes/ },
  { name: 'oversize model upload', send: uploadModel(randomBytes(MAX_MODEL_BYTES + 4096, 3)), status: 413, type: 'payload-too-large', detail: /smaller/ },
  { name: 'model sent as JSON, not multipart', send: () => t.http().post('/v1/models').set(A()).send({ file: 'AAAA' }), status: 415, type: 'unsupported-media-type', detail: /multipart\/form-data/ },
  { name: 'model in the wrong multipart field', send: () => t.http().post('/v1/models').set(A()).attach('model', fixture('good_tiny.onnx'), 'm.onnx'), status: 400, type: 'bad-request', detail: /unexpected multipart field "model"/ },
  { name: 'multipart without a file', send: () => t.http().post('/v1/models').set(A()).field('name', 'resnet'), status: 400, type: 'bad-request', detail: /no file/ },
  // dataset uploads
  { name: 'zip slip', send: uploadDataset(buildZip([{ name: '../../etc/cron.d/evil.png', data: PNG_BYTES }]), 'slip.zip'), status: 422, type: 'zip_path_traversal', detail: /climbs out of the archive/ },
  { name: 'absolute path in a zip', send: uploadDataset(buildZip([{ name: '/tmp/evil.png', data: PNG_BYTES }]), 'abs.zip'), status: 422, type: 'zip_absolute_path', detail: /absolute path/ },
  { name: 'symlink in a zip', send: uploadDataset(buildZip([{ name: 'cat/a.png', data: PNG_BYTES }, { name: 'cat/b.png', data: Buffer.from('/etc/shadow'), unixMode: 0o120777 }]), 'link.zip'), status: 422, type: 'zip_symlink', detail: /"cat\/b\.png" is a symbolic link/ },
  { name: 'zip bomb', send: uploadDataset(buildZip([{ name: 'cat/bomb.png', data: Buffer.alloc(8 * 1024 * 1024), method: 'deflate' }]), 'bomb.zip'), status: 422, type: 'zip_bomb', detail: /zip bomb/ },
  { name: 'zip entry lying about its size', send: uploadDataset(buildZip([{ name: 'cat/a.png', data: Buffer.concat([PNG_BYTES, Buffer.alloc(100_000, 1)]), method: 'deflate', declaredSize: 64 }]), 'liar.zip'), status: 422, type: 'zip_size_mismatch', detail: /reading stopped/ },
  { name: 'nested zip', send: uploadDataset(buildZip([{ name: 'cat/inner.png', data: buildZip([{ name: 'x/y.png', data: PNG_BYTES }]) }]), 'nested.zip'), status: 422, type: 'zip_nested_archive', detail: /nested archives are refused/ },
  { name: 'non-image file in a zip', send: uploadDataset(buildZip([{ name: 'cat/run.sh', data: Buffer.from('#!/bin/sh\n') }]), 'script.zip'), status: 422, type: 'zip_not_image', detail: /"cat\/run\.sh" is not a PNG or JPEG/ },
  { name: 'PNG pixel bomb in a zip', send: uploadDataset(buildZip([{ name: 'cat/huge.png', data: pngHeader(200_000, 200_000) }]), 'pixels.zip'), status: 422, type: 'zip_image_too_large', detail: /declares 200000×200000 pixels/ },
  { name: 'random bytes as a zip', send: uploadDataset(randomBytes(2048, 11), 'noise.zip'), status: 422, type: 'zip_invalid', detail: /not a ZIP archive/ },
  { name: 'NPZ with a pickled object', send: () => uploadDataset(pickleNpz, 'pickle.npz')(), status: 422, type: 'npz_pickle', detail: /object.*unpickle/ },
  { name: 'NPZ with float64 images', send: uploadDataset(npz({ 'x.npy': f32Npy([2, 1, 4, 4], '<f8', 8) }), 'f64.npz'), status: 422, type: 'npz_dtype', detail: /images must be float32 or uint8/ },
  { name: 'NPZ header with code in it', send: uploadDataset(npz({ 'x.npy': npyBytes("{'descr': eval('1'), 'fortran_order': False, 'shape': (1,), }", Buffer.alloc(0)) }), 'code.npz'), status: 422, type: 'npz_bad_header', detail: /not a plain Python literal/ },
  { name: 'dataset with an .exe name', send: uploadDataset(npz({ 'x.npy': f32Npy([1, 1, 2, 2]) }), 'setup.exe'), status: 415, type: 'unsupported-media-type', detail: /must be \.npz .* or \.zip/ },
  // routing
  { name: 'unknown route', send: () => t.http().get('/v1/../../etc/passwd').set(A()), status: 404, type: 'not-found', detail: /no route/ },
];

describe('hostile requests through HTTP', () => {
  test('the table holds at least 40 distinct bad requests', () => {
    assert.ok(CASES.length >= 40, `${CASES.length} cases`);
    assert.equal(new Set(CASES.map((c) => c.name)).size, CASES.length);
  });

  for (const c of CASES) {
    test(`${c.name} → ${c.status} ${c.type}`, async () => {
      const before = await snapshot();
      const res = await c.send();
      assert.equal(res.status, c.status, `${res.status} ${JSON.stringify(res.body)}`);
      assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
      const body = res.body as { type: string; title: string; status: number; detail: string };
      assert.equal(body.status, c.status);
      assert.equal(body.type, `https://tuckerize.dev/problems/${c.type.replaceAll('_', '-')}`);
      assert.ok(body.title.length > 0);
      assert.match(body.detail, c.detail);
      assert.doesNotMatch(JSON.stringify(body), /at .*\.(ts|js):\d+/, 'no stack trace in the response');
      assert.equal(res.headers['x-content-type-options'], 'nosniff', 'security headers on error responses too');
      assert.deepEqual(await snapshot(), before, 'the refused request stored something');
    });
  }

  test('the pickle payload never ran', () => {
    assert.equal(existsSync(marker), false);
  });
});

describe('per-key rate limit', () => {
  let limited: TestApp;
  before(async () => {
    limited = await startTestApp({ RATE_LIMIT_PER_MINUTE: '3' });
  });
  after(async () => {
    await limited?.close();
  });

  test('the request over the limit gets 429 problem+json, and other keys are unaffected', async () => {
    for (let i = 0; i < 3; i++) assert.equal((await limited.http().get('/v1/models').set(limited.authA)).status, 200);
    const res = await limited.http().get('/v1/models').set(limited.authA);
    assert.equal(res.status, 429);
    assert.match(String(res.headers['content-type']), /^application\/problem\+json/);
    assert.equal(res.body.type, 'https://tuckerize.dev/problems/too-many-requests');
    assert.match(res.body.detail, /rate limit of 3 requests per minute exceeded/);
    assert.equal((await limited.http().get('/v1/models').set(limited.authB)).status, 200);
  });
});

// What operators get from the API (issue 6 item 4): Prometheus series and per-tenant stats.
describe('operator endpoints', () => {
  test('GET /metrics exposes the job, queue and HTTP series', async () => {
    const res = await t.http().get('/metrics');
    assert.equal(res.status, 200);
    for (const series of ['jobs_created_total', 'jobs_finished_total', 'job_duration_seconds', 'job_stage_duration_seconds', 'http_request_duration_seconds', 'queue_depth', 'queue_oldest_waiting_age_seconds', 'workers_busy']) {
      assert.match(res.text, new RegExp(`^# TYPE ${series} `, 'm'), series);
    }
    assert.match(res.text, /^jobs_created_total [1-9]/m);
  });

  test('GET /v1/stats answers for the caller\'s tenant', async () => {
    const res = await t.http().get('/v1/stats').set(A());
    assert.equal(res.status, 200);
    assert.equal(res.body.throughputPerHour.length, 24);
    assert.ok(res.body.pending.queued >= 1);
  });
});
