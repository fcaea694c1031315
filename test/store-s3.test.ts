// The S3 artifact store against a real S3 protocol server (s3rver): content addressing, streaming limits,
// ranges, presigned URLs, named checkpoint keys, the local cache, and nothing left behind by a failed upload.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { loadConfig } from '../src/config.js';
import { ArtifactNotFoundError, checkpointKeyFor, createStore, PayloadTooLargeError, type ArtifactStore } from '../src/store/index.js';
import { parseRange } from '../src/store/ranges.js';
import { startS3, type TestS3 } from './helpers/s3.js';

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

describe('S3 artifact store (s3rver)', () => {
  let s3: TestS3;
  let work: string;
  let store: ArtifactStore;
  let raw: S3Client;
  const bucketKeys = async (): Promise<string[]> => {
    const page = await raw.send(new ListObjectsV2Command({ Bucket: s3.bucket }));
    return (page.Contents ?? []).map((o) => o.Key!).sort();
  };
  const storeFor = (workDir: string, extra: Record<string, string> = {}) =>
    createStore(loadConfig({ DATABASE_URL: 'postgresql://unused', ...s3.env, WORK_DIR: workDir, ...extra }));

  before(async () => {
    s3 = await startS3();
    work = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-s3-work-'));
    store = await storeFor(path.join(work, 'a'));
    raw = new S3Client({ endpoint: s3.endpoint, forcePathStyle: true, region: 'us-east-1' });
  });
  after(async () => {
    raw.destroy();
    await s3.close();
    await rm(work, { recursive: true, force: true });
  });

  test('config: s3:// URL, prefix, path style; file:// and the STORAGE_DIR default stay filesystem stores', () => {
    const config = loadConfig({ DATABASE_URL: 'postgresql://x', ...s3.env, S3_PRESIGN_DOWNLOADS: 'true', WORK_DIR: '/scratch' });
    assert.deepEqual(config.storage, {
      kind: 's3', bucket: s3.bucket, prefix: 'tz/', endpoint: s3.endpoint, region: 'us-east-1',
      forcePathStyle: true, presignDownloads: true, presignExpiresSeconds: 300,
    });
    assert.equal(config.workDir, '/scratch');
    assert.deepEqual(loadConfig({ DATABASE_URL: 'postgresql://x', STORAGE_URL: 'file:///srv/objects' }).storage, { kind: 'file', dir: '/srv/objects' });
    const byDir = loadConfig({ DATABASE_URL: 'postgresql://x', STORAGE_DIR: '/srv/st' });
    assert.deepEqual(byDir.storage, { kind: 'file', dir: '/srv/st' });
    assert.equal(byDir.workDir, '/srv/st');
    assert.throws(() => loadConfig({ DATABASE_URL: 'postgresql://x', STORAGE_URL: 'ftp://x' }), /STORAGE_URL: must be file:\/\/\/abs\/path or s3:\/\/bucket/);
    assert.throws(() => loadConfig({ DATABASE_URL: 'postgresql://x', S3_FORCE_PATH_STYLE: 'yes' }), /S3_FORCE_PATH_STYLE: must be true or false/);
  });

  test('uploads stream in, are hashed on the way and land under their content address (multipart too)', async () => {
    const bytes = randomBytes(9 * 1024 * 1024 + 123); // past one 8 MiB part: a multipart upload
    const sha256 = createHash('sha256').update(bytes).digest('hex');
    const chunks = Array.from({ length: Math.ceil(bytes.length / 65536) }, (_, i) => bytes.subarray(i * 65536, (i + 1) * 65536));
    const stored = await store.ingestStream(Readable.from(chunks));
    assert.deepEqual(stored, { sha256, bytes: bytes.length, key: `objects/${sha256.slice(0, 2)}/${sha256}` });
    assert.deepEqual(await bucketKeys(), [`tz/${stored.key}`], 'only the content-addressed key, no upload leftovers');
    assert.ok((await readAll(await store.openRead(stored.key))).equals(bytes));
    // The API host inspects the upload from its local copy, without a download.
    assert.equal(await store.localPath(stored.key), path.join(work, 'a', 'cache', stored.key));
    assert.ok((await readFile(await store.localPath(stored.key))).equals(bytes));
    // The same bytes again: the same object.
    assert.deepEqual(await store.ingestStream(Readable.from([bytes])), stored);
    assert.deepEqual(await bucketKeys(), [`tz/${stored.key}`]);
  });

  test('another host (its own WORK_DIR) reads by key: downloads, hash-checked, into its cache', async () => {
    const stored = await store.ingestStream(Readable.from([Buffer.from('shared across hosts')]));
    const other = await storeFor(path.join(work, 'b'));
    const target = path.join(work, 'b', 'job', 'input.onnx');
    await other.fetchTo(stored.key, target);
    assert.equal(await readFile(target, 'utf8'), 'shared across hosts');
    assert.equal(await readFile(path.join(work, 'b', 'cache', stored.key), 'utf8'), 'shared across hosts');
  });

  test('ranges and presigned downloads', async () => {
    const stored = await store.ingestStream(Readable.from([Buffer.from('0123456789')]));
    assert.equal((await readAll(await store.openRead(stored.key, { start: 2, end: 5 }))).toString(), '2345');
    assert.equal(await store.downloadUrl(stored.key, 'm.onnx'), null, 'no presigning unless S3_PRESIGN_DOWNLOADS=true');
    const presigning = await storeFor(path.join(work, 'c'), { S3_PRESIGN_DOWNLOADS: 'true', S3_PRESIGN_EXPIRES_SECONDS: '60' });
    const url = await presigning.downloadUrl(stored.key, 'm.onnx');
    assert.ok(url?.startsWith(`${s3.endpoint}/${s3.bucket}/tz/${stored.key}?`), url ?? 'null');
    assert.match(url!, /X-Amz-Expires=60/);
    const res = await fetch(url!);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '0123456789');
    assert.match(res.headers.get('content-disposition') ?? '', /filename="m\.onnx"/);
  });

  test('past the limit: PayloadTooLargeError, nothing in the bucket or the cache', async () => {
    const before = await bucketKeys();
    await assert.rejects(store.ingestStream(Readable.from([Buffer.alloc(600), Buffer.alloc(600)]), 1000), PayloadTooLargeError);
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(10));
        this.destroy(new Error('client went away'));
      },
    });
    await assert.rejects(store.ingestStream(failing), /client went away/);
    assert.deepEqual(await bucketKeys(), before);
    assert.deepEqual(await readdir(path.join(work, 'a', 'cache', 'tmp')), []);
  });

  test('named checkpoint keys: put, list, fetch, remove; keys outside the layout are refused', async () => {
    const jobId = '0b6f3f1e-8f0e-4a58-9d2c-3c1c2b9e8a11';
    const file = path.join(work, 'finetune.ckpt');
    await writeFile(file, 'step 1');
    await store.putFile(checkpointKeyFor(jobId, 'finetune.ckpt'), file);
    await writeFile(file, 'step 2');
    await store.putFile(checkpointKeyFor(jobId, 'finetune.ckpt'), file);
    await store.putFile(checkpointKeyFor(jobId, 'rewrite.onnx'), file);
    assert.deepEqual((await store.list(`checkpoints/${jobId}/`)).sort(), [
      `checkpoints/${jobId}/finetune.ckpt`,
      `checkpoints/${jobId}/rewrite.onnx`,
    ]);
    const target = path.join(work, 'elsewhere', 'finetune.ckpt');
    await store.fetchTo(checkpointKeyFor(jobId, 'finetune.ckpt'), target);
    assert.equal(await readFile(target, 'utf8'), 'step 2');
    await store.removePrefix(`checkpoints/${jobId}/`);
    assert.deepEqual(await store.list(`checkpoints/${jobId}/`), []);
    await assert.rejects(store.openRead(checkpointKeyFor(jobId, 'finetune.ckpt')), ArtifactNotFoundError);
    for (const key of ['../x', `checkpoints/${jobId}/../../objects`, 'tmp/abc', `objects/zz/${'a'.repeat(64)}`]) {
      await assert.rejects(store.openRead(key), ArtifactNotFoundError, key);
    }
  });

  test('remove deletes the object and its cached copy; cleanupTemp drops old cache entries only', async () => {
    const a = await store.ingestStream(Readable.from([Buffer.from('to be removed')]));
    await store.remove(a.key);
    assert.equal(await store.exists(a.key), false);
    await assert.rejects(readFile(path.join(work, 'a', 'cache', a.key)), { code: 'ENOENT' });

    const old = await store.ingestStream(Readable.from([Buffer.from('old cached copy')]));
    const fresh = await store.ingestStream(Readable.from([Buffer.from('fresh cached copy')]));
    const hourAgo = new Date(Date.now() - 3600_000);
    await utimes(path.join(work, 'a', 'cache', old.key), hourAgo, hourAgo);
    assert.equal(await store.cleanupTemp(60_000), 1);
    await assert.rejects(readFile(path.join(work, 'a', 'cache', old.key)), { code: 'ENOENT' });
    assert.equal(await readFile(path.join(work, 'a', 'cache', fresh.key), 'utf8'), 'fresh cached copy');
    assert.equal(await store.exists(old.key), true, 'the bucket keeps the object');
    assert.equal(await readFile(await store.localPath(old.key), 'utf8'), 'old cached copy', 'downloaded again on use');
  });
});

describe('HTTP ranges (parseRange)', () => {
  const etag = '"abc"';
  test('one range: first-last, open end, suffix; past the end is unsatisfiable; others are answered whole', () => {
    assert.deepEqual(parseRange('bytes=2-5', undefined, 10, etag), { kind: 'partial', range: { start: 2, end: 5 } });
    assert.deepEqual(parseRange('bytes=7-', undefined, 10, etag), { kind: 'partial', range: { start: 7, end: 9 } });
    assert.deepEqual(parseRange('bytes=4-100', undefined, 10, etag), { kind: 'partial', range: { start: 4, end: 9 } });
    assert.deepEqual(parseRange('bytes=-3', undefined, 10, etag), { kind: 'partial', range: { start: 7, end: 9 } });
    assert.deepEqual(parseRange('bytes=-30', undefined, 10, etag), { kind: 'partial', range: { start: 0, end: 9 } });
    assert.deepEqual(parseRange('bytes=10-', undefined, 10, etag), { kind: 'unsatisfiable' });
    assert.deepEqual(parseRange('bytes=-0', undefined, 10, etag), { kind: 'unsatisfiable' });
    for (const header of [undefined, 'bytes=0-1,4-5', 'items=0-1', 'bytes=5-2', 'bytes=-', 'garbage']) {
      assert.deepEqual(parseRange(header, undefined, 10, etag), { kind: 'whole' }, String(header));
    }
    assert.deepEqual(parseRange('bytes=2-5', etag, 10, etag).kind, 'partial', 'If-Range naming the current ETag');
    assert.deepEqual(parseRange('bytes=2-5', '"old"', 10, etag), { kind: 'whole' }, 'If-Range naming an older ETag');
  });
});
