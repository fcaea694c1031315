import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readOnnxModel } from '../src/worker/onnx-info.js';
import { formatProfileTable, profileLayers, replacementChain } from '../src/worker/profile.js';
import { resolveInputShape, VerificationError } from '../src/worker/verify.js';

const PYTHON = process.env.ENGINE_PYTHON ?? '/usr/bin/python3';
let dir = '';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'profile-test-'));
  execFileSync(PYTHON, ['benchmarks/fixtures/tiny_models.py', dir], { stdio: 'inherit' });
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('each rewritten layer is timed against its replacement chain at its real input shape', async () => {
  const profile = await profileLayers({
    originalPath: join(dir, 'tiny.onnx'), compressedPath: join(dir, 'tiny_lowrank.onnx'), threads: 1, runs: 20, warmup: 1, seed: 5,
  });
  assert.deepEqual(profile.rows.map((r) => [r.layer, r.kind, r.replacement]), [
    ['conv2', 'tucker2', ['conv2_first', 'conv2_core', 'conv2_last']],
    ['fc', 'svd', ['fc_first', 'fc_second']],
  ]);
  const [conv2, fc] = profile.rows as [typeof profile.rows[0], typeof profile.rows[0]];
  assert.deepEqual(conv2.inputShape, [1, 8, 16, 16]);
  assert.deepEqual(conv2.macs, { original: 73_728, replacement: 8_192 + 13_824 + 6_144, ratio: 73_728 / 28_160 });
  assert.deepEqual(fc.inputShape, [1, 16]);
  assert.equal(fc.macs.replacement, 80 + 50);
  for (const r of profile.rows) {
    assert.ok(r.original.runs >= 20 && r.replacementTime.runs >= 20);
    assert.ok(r.speedup > 0 && Math.abs(r.efficiency - r.speedup / r.macs.ratio) < 1e-12);
  }
  assert.deepEqual(profile.skipped, []);
  const table = formatProfileTable(profile);
  assert.match(table, /\| conv2 \| tucker2 \| — \| 1×8×16×16 \| 0\.0737 \| 0\.0282 \| 2\.62× \|/);
});

test('without a plan, a two-node chain with a spatial first kernel is recognised as Tucker-1', async () => {
  const profile = await profileLayers({
    originalPath: join(dir, 'tiny.onnx'), compressedPath: join(dir, 'tiny_tucker1.onnx'), threads: 1, runs: 20, warmup: 0, seed: 5,
  });
  assert.deepEqual(profile.rows.map((r) => [r.layer, r.kind, r.replacement]), [['conv1', 'tucker1', ['conv1_core', 'conv1_last']]]);
  // core 4·16·16·27 + last 8·16·16·4 against 8·16·16·27
  assert.deepEqual(profile.rows[0]!.macs, { original: 55_296, replacement: 27_648 + 8_192, ratio: 55_296 / 35_840 });
});

test('constant inputs computed by other nodes (shared biases behind Identity) travel with the layer', async () => {
  const profile = await profileLayers({
    originalPath: join(dir, 'tiny_sharedbias.onnx'), compressedPath: join(dir, 'tiny_lowrank.onnx'), threads: 1, runs: 20, warmup: 0, seed: 5,
  });
  assert.deepEqual(profile.rows.map((r) => r.layer), ['conv2', 'fc']);
  assert.equal(profile.rows[0]!.macs.original, 73_728);
});

test('plan.json labels rows with ranks and names the layers it kept', async () => {
  const planPath = join(dir, 'plan.json');
  await writeFile(planPath, JSON.stringify({
    rule: 'vbmf',
    layers: [
      { name: 'conv1', kind: 'keep', ranks: [], weight: 'w1', reason: 'stem with 3 input channels' },
      { name: 'conv2', kind: 'tucker2', ranks: [6, 4], weight: 'w2' },
      { name: 'fc', kind: 'svd', ranks: [5], weight: 'fc' },
    ],
  }));
  const profile = await profileLayers({
    originalPath: join(dir, 'tiny.onnx'), compressedPath: join(dir, 'tiny_lowrank.onnx'), planPath,
    threads: 1, runs: 20, warmup: 0, seed: 5,
  });
  assert.deepEqual(profile.rows.map((r) => r.ranks), [[6, 4], [5]]);
  assert.deepEqual(profile.skipped, [{ layer: 'conv1', reason: 'kept by the plan: stem with 3 input channels' }]);
});

test('a replacement that cannot be isolated is reported with the reason', async () => {
  const compressed = await readOnnxModel(join(dir, 'tiny_lowrank.onnx'));
  assert.equal(replacementChain(compressed, 'r1', 'missing'), 'no node of the graph produces missing');
  assert.match(String(replacementChain(compressed, 'x', 'y')), /more than 8 nodes lie between x and y/);
  const chain = replacementChain(compressed, 'f', 'y');
  assert.ok(Array.isArray(chain));
  assert.deepEqual(chain.map((n) => n.name), ['fc_first', 'fc_second']);
});

test('input shapes: dynamic batch takes the batch, dynamic spatial dims need inputShape', () => {
  const input = { name: 'x', type: 'float32', shape: ['N', 3, 'H', 'W'] };
  assert.throws(() => resolveInputShape(input, 4), (e: Error) => e instanceof VerificationError && /dimension 2 is dynamic \(H\)/.test(e.message));
  assert.deepEqual(resolveInputShape(input, 4, [1, 3, 32, 48]), [4, 3, 32, 48]);
  assert.throws(() => resolveInputShape(input, 1, [1, 1, 32, 32]), /disagrees with input 'x' dimension 1 = 3/);
  assert.deepEqual(resolveInputShape({ name: 'x', type: 'float32', shape: [2, 3, 8, 8] }, 4), [2, 3, 8, 8]);
  assert.throws(() => resolveInputShape({ name: 'x', type: 'float32', shape: [] }, 1), /declares no shape/);
});
