import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as ort from 'onnxruntime-node';
import { readOnnxModel } from '../src/worker/onnx-info.js';
import {
  latencyStats, median, percentile, timeInterleaved, VerificationError, verifyAndMeasure, type VerifyOptions,
} from '../src/worker/verify.js';

const PYTHON = process.env.ENGINE_PYTHON ?? '/usr/bin/python3';
let dir = '';
const path = (name: string) => join(dir, name);

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'verify-test-'));
  execFileSync(PYTHON, ['benchmarks/fixtures/tiny_models.py', dir], { stdio: 'inherit' });
  await copyFile(path('tiny.onnx'), path('tiny_copy.onnx'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const base = (compressedPath: string): VerifyOptions => ({
  originalPath: path('tiny.onnx'), compressedPath, threads: 1, batch: 4, runs: 20, warmup: 2, seed: 11,
});

/** A copy of `source` with the bytes of one float of an initializer's raw data replaced. */
async function withCorruptedWeight(source: string, target: string, initializer: string, element: number, bytes: number[]) {
  const model = await readOnnxModel(source);
  const init = model.initializers.get(initializer);
  assert.ok(init && init.rawDataOffset !== null, `fixture initializer ${initializer} has raw data`);
  const file = await readFile(source);
  file.set(bytes, init.rawDataOffset + 4 * element);
  await writeFile(target, file);
}

describe('verifyAndMeasure', () => {
  test('an exact copy: relative error 0, top-1 agreement 1, all ratios 1', async () => {
    const r = await verifyAndMeasure(base(path('tiny_copy.onnx')));
    assert.equal(r.fidelity.compressed.maxRelativeError, 0);
    assert.equal(r.fidelity.compressed.top1Agreement, 1);
    assert.equal(r.fidelity.samples, 16);
    assert.equal(r.fidelity.criterion, 'relative-error');
    assert.equal(r.table1.weights.ratio, 1);
    assert.equal(r.table1.macs.ratio, 1);
    assert.equal(r.table1.energyMillijoulesEstimate.ratio, 1);
    assert.equal(r.table1.top1, null);
    assert.deepEqual(r.latency.map((l) => l.batch), [1, 4]);
    for (const l of r.latency) {
      for (const s of [l.original, l.compressed]) {
        assert.ok(s.runs >= 20);
        assert.ok(s.minMs > 0 && s.minMs <= s.medianMs && s.medianMs <= s.p90Ms);
      }
      assert.ok(l.speedup > 0 && Number.isFinite(l.speedup));
      assert.ok(l.original.cpuMedianMs !== null && l.original.cpuMedianMs >= 0);
    }
    assert.equal(r.runtime.intraOpNumThreads, 1);
    assert.equal(r.runtime.interOpNumThreads, 1);
    assert.equal(r.runtime.graphOptimizationLevel, 'all');
    assert.equal(r.runtime.intraOpSpinning, false, 'pool threads block between operators unless asked to spin');
    assert.deepEqual(r.io.inputs, [{ name: 'x', type: 'float32', shape: ['N', 3, 16, 16] }]);
  });

  test('a low-rank rewrite: params and MACs counted from the runtime shapes match the hand count', async () => {
    const r = await verifyAndMeasure({ ...base(path('tiny_lowrank.onnx')), top1: { original: 0.9, compressed: 0.85 } });
    // conv1 8·16·16·27 = 55296; conv2 16·8·8·72 = 73728; fc 10·16 = 160
    assert.equal(r.cost.original.macs, 55_296 + 73_728 + 160);
    // 1×1 8→4 at 16×16: 1024·8; core 4→6 3×3 /2: 384·36; 1×1 6→16 at 8×8: 1024·6; fc 16→5→10: 80 + 50
    assert.equal(r.cost.compressed.macs, 55_296 + 8_192 + 13_824 + 6_144 + 80 + 50);
    assert.equal(r.table1.weights.before, 216 + 8 + 1152 + 16 + 160 + 10);
    assert.equal(r.table1.weights.after, 216 + 8 + 32 + 216 + 96 + 16 + 80 + 50 + 10);
    assert.equal(r.cost.original.inputBytes, 3 * 16 * 16 * 4);
    const relErr = r.fidelity.compressed.relativeError.y!;
    assert.ok(relErr > 0 && relErr < 1, `relative error ${relErr}`);
    assert.equal(r.table1.top1?.before, 0.9);
    assert.equal(r.table1.top1?.after, 0.85);
    assert.ok(Math.abs(r.table1.top1!.change! + 0.05) < 1e-12);
    // Every produced tensor at batch 1, float32: the chain adds conv2_first, conv2_core and fc_first.
    assert.equal(r.cost.original.activationBytes, 4 * (2 * 2048 + 2 * 1024 + 16 + 16 + 10));
    assert.equal(r.cost.compressed.activationBytes, 4 * (2 * 2048 + 1024 + 384 + 2 * 1024 + 16 + 16 + 5 + 10));
    // At this size activation traffic dominates: the estimate rises although MACs and weights fall.
    assert.ok(r.table1.energyMillijoulesEstimate.ratio < 1);
  });

  test('after fine-tuning the criterion is top-1 agreement; the pre-fine-tuning model gets the relative error', async () => {
    const r = await verifyAndMeasure({
      ...base(path('tiny_copy.onnx')),
      compressedBeforeFinetunePath: path('tiny_lowrank.onnx'),
      minTop1Agreement: 1,
    });
    assert.equal(r.fidelity.criterion, 'top1-agreement');
    assert.equal(r.fidelity.compressed.top1Agreement, 1);
    assert.ok(r.fidelity.beforeFinetune!.maxRelativeError > 0);
  });

  test('a fine-tuned model that lost agreement fails when an agreement floor is set', async () => {
    // A huge bias on class 0 makes the model always answer 0.
    await withCorruptedWeight(path('tiny.onnx'), path('always0.onnx'), 'fc_b', 0, [0xca, 0xf2, 0x49, 0x71]);
    await assert.rejects(
      verifyAndMeasure({
        ...base(path('always0.onnx')), compressedBeforeFinetunePath: path('tiny_lowrank.onnx'), minTop1Agreement: 0.99,
      }),
      (err: Error) => err instanceof VerificationError && /agrees with the original's top-1/.test(err.message),
    );
  });

  test('a weight whose exponent bits are flipped to all ones is caught (non-finite output)', async () => {
    await withCorruptedWeight(path('tiny_lowrank.onnx'), path('nan.onnx'), 'conv2_core_w', 3, [0xff, 0xff, 0xff, 0x7f]);
    await assert.rejects(
      verifyAndMeasure(base(path('nan.onnx'))),
      (err: Error) => err instanceof VerificationError && /output 'y' of the compressed model contains NaN/.test(err.message),
    );
  });

  test('flipped weight bytes that stay finite are caught by the relative-error bound', async () => {
    // one weight becomes 1e6 (0x49742400 little-endian): finite, and badly wrong
    await withCorruptedWeight(path('tiny_lowrank.onnx'), path('flipped.onnx'), 'fc_second_w', 2, [0x00, 0x24, 0x74, 0x49]);
    await assert.rejects(
      verifyAndMeasure({ ...base(path('flipped.onnx')), maxRelativeError: 1 }),
      (err: Error) => err instanceof VerificationError && /exceeds the allowed 1/.test(err.message),
    );
    // Without the bound the same artifact verifies: the bound is what caught it.
    const r = await verifyAndMeasure(base(path('flipped.onnx')));
    assert.ok(r.fidelity.compressed.maxRelativeError > 1);
    const clean = await verifyAndMeasure({ ...base(path('tiny_lowrank.onnx')), maxRelativeError: 1 });
    assert.ok(clean.fidelity.compressed.maxRelativeError < 1);
  });

  test('a truncated artifact is caught at load', async () => {
    const bytes = await readFile(path('tiny_lowrank.onnx'));
    await writeFile(path('truncated.onnx'), bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    await assert.rejects(
      verifyAndMeasure(base(path('truncated.onnx'))),
      (err: Error) => err instanceof VerificationError && /compressed model .* is not a readable ONNX file/.test(err.message),
    );
  });

  test('a file that is not ONNX at all is caught at load', async () => {
    await writeFile(path('garbage.onnx'), Buffer.from('this is not a protobuf, just text that someone uploaded\n'));
    await assert.rejects(verifyAndMeasure(base(path('garbage.onnx'))), VerificationError);
  });

  test('a declared output shape that differs from the original is caught', async () => {
    await assert.rejects(
      verifyAndMeasure(base(path('tiny_badshape.onnx'))),
      (err: Error) => err instanceof VerificationError && /output 'y' has shape \[N, 10\] in the original, \[N, 11\]/.test(err.message),
    );
  });

  test('fewer than 20 timed runs is refused', async () => {
    await assert.rejects(verifyAndMeasure({ ...base(path('tiny_copy.onnx')), runs: 5 }), RangeError);
  });
});

describe('timing helpers', () => {
  test('interleaved timing returns one positive sample per run for each session', async () => {
    const opts = { intraOpNumThreads: 1, interOpNumThreads: 1 };
    const a = await ort.InferenceSession.create(path('tiny.onnx'), opts);
    const b = await ort.InferenceSession.create(path('tiny_lowrank.onnx'), opts);
    const feeds = { x: new ort.Tensor('float32', new Float32Array(3 * 16 * 16).fill(0.5), [1, 3, 16, 16]) };
    const t = await timeInterleaved(a, b, feeds, 21, 1);
    for (const s of [t.a, t.b]) {
      assert.equal(s.wallMs.length, 21);
      assert.equal(s.cpuMs.length, 21);
      assert.ok(s.wallMs.every((v) => v > 0 && Number.isFinite(v)));
      assert.ok(s.cpuMs.every((v) => v >= 0 && Number.isFinite(v)));
    }
    await a.release();
    await b.release();
  });

  test('median, nearest-rank p90 and stats on hand cases', () => {
    assert.equal(median([1, 2, 3]), 2);
    assert.equal(median([1, 2, 3, 10]), 2.5);
    const ten = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    assert.equal(percentile(ten, 90), 9);
    assert.equal(percentile(ten, 100), 10);
    assert.deepEqual(latencyStats([3, 1, 2, 4]), { runs: 4, medianMs: 2.5, p90Ms: 4, meanMs: 2.5, minMs: 1, cpuMedianMs: null });
    assert.equal(latencyStats([3, 1, 2], [2, 0.5, 1]).cpuMedianMs, 1);
  });
});
