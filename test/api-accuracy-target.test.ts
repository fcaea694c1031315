// POST /v1/jobs with options.maxAccuracyDrop (accuracy-target mode, engine/tuckerize/search.py): it measures
// top-1 on the dataset's held-out split, so a job without a dataset, or with an unlabelled one, is a 422 at
// once; the option's range and its rule are 422s from the contract.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { assertProblem } from './helpers/app.js';
import { startApiSuite, type ApiSuite } from './helpers/api-suite.js';

let t: ApiSuite;
let modelId: string;
let labelledId: string;
let unlabelledId: string;

before(async () => {
  t = await startApiSuite();
  const unlabelled = path.join(t.fx.dir, 'unlabelled.npz');
  execFileSync('/usr/bin/python3', ['-c', `import numpy as np; np.savez(${JSON.stringify(unlabelled)}, x=np.zeros((8, 3, 16, 16), np.uint8))`]);
  modelId = await t.upload('models', t.fx.tiny);
  labelledId = await t.upload('datasets', t.fx.imagesNpz);
  unlabelledId = await t.upload('datasets', unlabelled);
});
after(() => t?.close());

async function post(body: Record<string, unknown>) {
  return t.http().post('/v1/jobs').set(t.authA).send({ modelId, ...body });
}

test('maxAccuracyDrop without a dataset or with an unlabelled one is a 422 naming what to fix', async () => {
  const count = await t.env.prisma.job.count();
  const none = await post({ options: { maxAccuracyDrop: 0.5 } });
  assertProblem(none, 422, /give datasetId/);
  assert.ok((none.body.errors as { pointer: string }[]).some((e) => e.pointer === '/datasetId'));
  const unlabelled = await post({ datasetId: unlabelledId, options: { maxAccuracyDrop: 0.5 } });
  assertProblem(unlabelled, 422, /has no labels/);
  assert.ok((unlabelled.body.errors as { pointer: string }[]).some((e) => e.pointer === '/options/maxAccuracyDrop'));
  assert.equal(await t.env.prisma.job.count(), count, 'no job row');
});

test('the range and the rule come from the contract as 422s', async () => {
  assertProblem(await post({ datasetId: labelledId, options: { maxAccuracyDrop: 0 } }), 422, /maxAccuracyDrop must be > 0/);
  assertProblem(await post({ datasetId: labelledId, options: { rule: 'budget', targetMacs: 0.3, maxAccuracyDrop: 1 } }), 422,
    /maxAccuracyDrop applies only to rule=vbmf/);
  assertProblem(await post({ datasetId: labelledId, options: { method: 'fastest' } }), 422, /method/);
});

test('a labelled dataset is accepted with the new options', async () => {
  const ok = await post({ datasetId: labelledId, options: { maxAccuracyDrop: 0.5, method: 'improved', calibrationSamples: 256 } });
  assert.equal(ok.status, 202, JSON.stringify(ok.body));
});
