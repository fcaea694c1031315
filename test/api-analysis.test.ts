// Upload analysis as a queued job: the API enqueues it, a real worker runs the real engine
// (`python3 -m tuckerize analyze --json`) and fills params/MACs; the model's `analysis` field follows it.
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { totalsFromAnalysis } from '../src/worker/analysis.js';
import { startWorker, type RunningWorker } from '../src/worker/runner.js';
import { startTestApp, type TestApp } from './helpers/app.js';
import { createFixtures, type Fixtures } from './helpers/fixtures.js';

let t: TestApp;
let fx: Fixtures;
before(async () => {
  fx = await createFixtures();
  t = await startTestApp({}, { analyzeModels: true });
});
after(async () => {
  await t?.close();
  await fx?.cleanup();
});

async function analysisOf(id: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 600; i++) {
    const res = await t.http().get(`/v1/models/${id}`).set(t.authA);
    assert.equal(res.status, 200);
    if (res.body.analysis !== 'pending') return res.body as Record<string, unknown>;
    await sleep(100);
  }
  throw new Error(`the analysis of model ${id} stayed pending for a minute`);
}

describe('totalsFromAnalysis', () => {
  test('reads the plan totals of analyze --json and the flat form', () => {
    assert.deepEqual(totalsFromAnalysis({ totals: { params: { before: 314, after: 100 }, macs: { before: 55376, after: 9 } } }), { params: 314, macs: 55376 });
    assert.deepEqual(totalsFromAnalysis({ params: 10, macs: 20 }), { params: 10, macs: 20 });
    assert.equal(totalsFromAnalysis({ totals: { params: 1 } }), undefined);
    assert.equal(totalsFromAnalysis('nope'), undefined);
  });
});

describe('upload analysis on the workers', () => {
  test('the upload answers `pending`; a worker fills params and MACs from the engine', { timeout: 120_000 }, async () => {
    const res = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny);
    assert.equal(res.status, 201);
    assert.equal(res.body.analysis, 'pending');
    assert.equal(res.body.macs, null);
    const worker = await startWorker(t.env.config, { logger: pino({ level: 'silent' }), measure: null });
    try {
      const model = await analysisOf(res.body.id);
      assert.equal(model.analysis, 'done');
      assert.equal(model.params, 314);
      // conv1: 8 out × (3·3·3) × 16·16 positions = 55296; fc: 8·10 = 80
      assert.equal(model.macs, 55296 + 80);
    } finally {
      await worker.close();
    }
  });

  test('an engine refusal marks the analysis failed at once, with its public detail and no retry', { timeout: 120_000 }, async () => {
    // An "engine" that refuses like the real one (C2 error event, exit 2), naming a server path.
    const fakePython = join(fx.dir, 'python-that-refuses');
    await writeFile(
      fakePython,
      '#!/bin/sh\necho "$@" >> "$0.calls"\n' +
        `echo '{"event":"error","code":"invalid_model","detail":"no graph in /srv/private/x/model.onnx"}'\nexit 2\n`,
    );
    await chmod(fakePython, 0o755);
    const res = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny2);
    assert.equal(res.status, 201);
    let worker: RunningWorker | undefined;
    try {
      worker = await startWorker({ ...t.env.config, enginePython: fakePython }, { logger: pino({ level: 'silent' }), measure: null });
      const model = await analysisOf(res.body.id);
      assert.equal(model.analysis, 'failed');
      assert.equal(model.macs, null);
      const row = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id: res.body.id } });
      assert.equal(row.analysisError, 'no graph in model.onnx');
      const { readFile } = await import('node:fs/promises');
      const calls = (await readFile(`${fakePython}.calls`, 'utf8')).trim().split('\n');
      assert.equal(calls.length, 1, 'bad input is not retried');
      assert.match(calls[0]!, /^-m tuckerize analyze \S+model\.onnx --json$/);
    } finally {
      await worker?.close();
    }
  });

  test('the API process itself never starts the engine', async () => {
    const { readFile, readdir } = await import('node:fs/promises');
    const dir = new URL('../src/api/', import.meta.url);
    const files = await readdir(dir, { recursive: true });
    for (const file of files.filter((f) => f.endsWith('.ts'))) {
      const text = await readFile(new URL(file, dir), 'utf8');
      assert.doesNotMatch(text, /child_process/, `src/api/${file} imports child_process`);
    }
  });
});
