// POST /v1/jobs refuses what the engine would refuse later (src/contract/job-options.ts), naming the field:
// option values and combinations as 422s (invalid-job-options), options that do not fit the uploaded model as 422s.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { optionsModelMismatch } from '../src/contract/job-options.js';
import { assertProblem } from './helpers/app.js';
import { startApiSuite, type ApiSuite } from './helpers/api-suite.js';

let t: ApiSuite;
let modelId: string;

before(async () => {
  t = await startApiSuite();
  modelId = await t.upload('models', t.fx.tiny);
});
after(() => t?.close());

async function refused(options: Record<string, unknown>, status: number, pointer: string, detail: RegExp): Promise<void> {
  const before = await t.env.prisma.job.count();
  const body = { modelId, ...(options.finetune ? { datasetId: 'builtin:fashion-mnist' } : {}), options };
  const res = await t.http().post('/v1/jobs').set(t.authA).send(body);
  assertProblem(res, status, detail);
  const errors = res.body.errors as { in: string; pointer: string }[];
  assert.ok(errors.some((e) => e.in === 'body' && e.pointer === pointer), `${pointer} in ${JSON.stringify(errors)}`);
  assert.equal(await t.env.prisma.job.count(), before, 'no job row');
}

test('limits and combinations the engine refuses are 422s naming the option', async () => {
  await refused({ finetune: { clipGradNorm: 1e9 } }, 422, '/options/finetune/clipGradNorm', /clipGradNorm must be ≤ 1e6/);
  await refused({ rule: 'budget', targetMacs: 0.5, strength: 0.5 }, 422, '/options/strength', /strength applies only to rule=vbmf/);
  await refused({ rule: 'budget', targetMacs: 0.5, targetParams: 0.5 }, 422, '/options/targetParams', /not both/);
  await refused({ rule: 'latency', targetLatency: 0.5, strength: 0.5 }, 422, '/options/strength', /not rule=latency/);
});

test("an inputShape that does not fit the model's input is a 422 naming options.inputShape", async () => {
  // tiny.onnx takes input [N, 3, 16, 16].
  await refused({ inputShape: [1, 1, 16, 16] }, 422, '/options/inputShape', /gives 1 channels .* use 3 channels/);
  const ok = await t.http().post('/v1/jobs').set(t.authA).send({ modelId, options: { inputShape: [2, 3, 32, 32] } });
  assert.equal(ok.status, 202, JSON.stringify(ok.body));
});

test('optionsModelMismatch follows the engine (onnx_graph.resolve_input_shapes)', () => {
  const image = [{ name: 'x', dims: ['N', 3, 'H', 'W'] }];
  assert.equal(optionsModelMismatch({}, image), null, 'batch and H, W default');
  assert.equal(optionsModelMismatch({ inputShape: [1, 3, 8, 8] }, image), null);
  assert.match(optionsModelMismatch({ inputShape: [1, 4, 8, 8] }, image)!.message, /gives 4 channels/);
  assert.match(optionsModelMismatch({ inputShape: [1, 3, 8, 8] }, [{ name: 'x', dims: [1, 64] }])!.message, /has 4 dims/);
  assert.match(optionsModelMismatch({}, [{ name: 'x', dims: [1, 'C', 8, 8] }])!.message, /symbolic at axis 1/);
  assert.match(optionsModelMismatch({}, [{ name: 'x', dims: ['N', 'D'] }])!.message, /symbolic at axis 1/);
  assert.match(optionsModelMismatch({}, [{ name: 'x', dims: [] }])!.message, /declares no shape/);
  assert.equal(optionsModelMismatch({}, [{ name: 'x', dims: ['N', 64] }]), null);
  assert.equal(optionsModelMismatch({}, []), null);
});
