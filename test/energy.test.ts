import assert from 'node:assert/strict';
import { test } from 'node:test';
import { estimateEnergy, HOROWITZ_45NM } from '../src/worker/energy.js';

test('Horowitz 45 nm constants: 4.6 pJ per fp32 MAC, 160 pJ per DRAM byte', () => {
  assert.equal(HOROWITZ_45NM.picojoulesPerMac, 4.6);
  assert.equal(HOROWITZ_45NM.picojoulesPerDramByte, 160);
  assert.equal(HOROWITZ_45NM.picojoulesPerSramByte, 1.25);
});

test('energy estimate on a hand-computed case', () => {
  // 1 G MACs, 4 MB weights, 600 kB input, 2 MB of activations of which 4 kB are the output.
  const e = estimateEnergy({ macs: 1e9, weightBytes: 4e6, inputBytes: 6e5, activationBytes: 2e6, outputBytes: 4e3 });
  // bytes moved = 4e6 + 6e5 + 2·(2e6 − 4e3) + 4e3 = 8 596 000
  assert.equal(e.bytesMoved, 8_596_000);
  // compute: 1e9 · 4.6 pJ = 4.6 mJ; memory: 8.596e6 · 160 pJ = 1.37536 mJ
  assert.ok(Math.abs(e.computeMillijoules - 4.6) < 1e-12);
  assert.ok(Math.abs(e.memoryMillijoules - 1.37536) < 1e-12);
  assert.ok(Math.abs(e.millijoules - 5.97536) < 1e-12);
  assert.equal(e.kind, 'estimate');
  assert.match(e.statement, /^estimate/);
});

test('energy model rejects outputs larger than the activations they belong to', () => {
  assert.throws(
    () => estimateEnergy({ macs: 1, weightBytes: 0, inputBytes: 0, activationBytes: 10, outputBytes: 20 }),
    RangeError,
  );
});
