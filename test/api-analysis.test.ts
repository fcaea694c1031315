// Params/MACs of an uploaded model from the real engine (`python3 -m tuckerize analyze --json`), filled in
// after the upload was answered.
import assert from 'node:assert/strict';
import { chmod, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pino from 'pino';
import { ModelAnalyzer, totalsFromAnalysis } from '../src/api/model-analysis.js';
import { FileStore } from '../src/store/artifacts.js';
import { startTestApp, type TestApp } from './helpers/app.js';
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

describe('totalsFromAnalysis', () => {
  test('reads the plan totals of analyze --json and the flat form', () => {
    assert.deepEqual(totalsFromAnalysis({ totals: { params: { before: 314, after: 100 }, macs: { before: 55376, after: 9 } } }), { params: 314, macs: 55376 });
    assert.deepEqual(totalsFromAnalysis({ params: 10, macs: 20 }), { params: 10, macs: 20 });
    assert.equal(totalsFromAnalysis({ totals: { params: 1 } }), undefined);
    assert.equal(totalsFromAnalysis('nope'), undefined);
  });
});

describe('ModelAnalyzer', () => {
  async function modelRow(): Promise<{ id: string; path: string }> {
    const res = await t.http().post('/v1/models').set(t.authA).attach('file', fx.tiny);
    const row = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id: res.body.id } });
    return { id: row.id, path: new FileStore(t.env.config.storageDir).pathFor(row.storageKey) };
  }

  test('fills params and MACs from the engine', async () => {
    const { id, path } = await modelRow();
    await t.env.prisma.onnxModel.update({ where: { id }, data: { params: null, macs: null } });
    const analyzer = new ModelAnalyzer(t.env.config, t.env.prisma, pino({ level: 'silent' }));
    await analyzer.schedule(id, path);
    await analyzer.close();
    const row = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id } });
    assert.equal(row.params, 314n);
    // conv1: 8 out × (3·3·3) × 16·16 positions = 55296; fc: 8·10 = 80
    assert.equal(row.macs, 55296n + 80n);
    const api = await t.http().get(`/v1/models/${id}`).set(t.authA);
    assert.equal(api.body.macs, 55376);
  });

  test('a failing engine leaves the row as it was and logs a warning', async () => {
    const { id, path } = await modelRow();
    const before = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id } });
    const warnings: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => warnings.push(line) });
    const analyzer = new ModelAnalyzer({ ...t.env.config, enginePython: '/nonexistent/python3' }, t.env.prisma, logger);
    await analyzer.schedule(id, path);
    await analyzer.close();
    assert.deepEqual(await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id } }), before);
    assert.ok(warnings.some((w) => w.includes('model analysis failed') && w.includes(id)));
  });

  test('close() kills a running analysis instead of waiting for it', { timeout: 30_000 }, async () => {
    const { id, path } = await modelRow();
    // An "engine" that never finishes: if close() waited for it, this test would hit its timeout.
    const fakePython = join(fx.dir, 'python-that-hangs');
    await writeFile(fakePython, '#!/bin/sh\nexec sleep 600\n');
    await chmod(fakePython, 0o755);
    const before = await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id } });
    const analyzer = new ModelAnalyzer({ ...t.env.config, enginePython: fakePython }, t.env.prisma, pino({ level: 'silent' }));
    const pending = analyzer.schedule(id, path);
    await analyzer.close();
    await pending;
    assert.deepEqual(await t.env.prisma.onnxModel.findUniqueOrThrow({ where: { id } }), before);
  });
});
