// `make demo` with DEMO_QUICK=1, end to end as a person would run it: API and worker as child processes,
// the reference model uploaded over HTTP, EVBMF + fine-tuning, progress over SSE, Table 1 printed.
// Also checks the demo's own parsing and formatting on a report shaped like the engine's.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, readFile } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import { describe, it } from 'node:test';
import { readSse } from '../src/demo/client.js';
import { parseIdx } from '../src/demo/evaluate.js';
import { formatPlan, formatTable1 } from '../src/demo/report-format.js';
import { REPO_ROOT } from './worker-fixtures.js';

function streamOf(text: string, pieces: number): ReadableStream<Uint8Array> {
  const bytes = new TextEncoder().encode(text);
  const size = Math.ceil(bytes.length / pieces);
  return new ReadableStream({
    start(controller) {
      for (let i = 0; i < bytes.length; i += size) controller.enqueue(bytes.slice(i, i + size));
      controller.close();
    },
  });
}

describe('demo client pieces', () => {
  it('parses SSE split at arbitrary points, skipping keep-alives', async () => {
    const text =
      'id: 1\nevent: status\ndata: {"status":"queued"}\n\n: keep-alive\n\n' +
      'id: 2\r\nevent: progress\r\ndata: {"stage":"rewrite","percent":40}\r\n\r\n' +
      'event: status\ndata: {"status":"succeeded"}\n\n';
    for (const pieces of [1, 7, text.length]) {
      const got = [];
      for await (const m of readSse(streamOf(text, pieces))) got.push(m);
      assert.deepEqual(got, [
        { event: 'status', data: { status: 'queued' } },
        { event: 'progress', data: { stage: 'rewrite', percent: 40 } },
        { event: 'status', data: { status: 'succeeded' } },
      ]);
    }
  });

  it('prints the plan and Table 1 from the report, with ratios and no invented values', () => {
    const report = {
      layers: [
        { name: 'conv2', op: 'Conv', kind: 'tucker2', ranks: [20, 12], weightShape: [64, 32, 3, 3], params: { before: 18496, after: 3264 }, macs: { before: 14_000_000, after: 2_500_000 }, relError: 0.1234 },
        { name: 'fc', op: 'Gemm', kind: 'keep', ranks: [], weightShape: [10, 64], params: { before: 650, after: 650 }, macs: { before: 640, after: 640 }, relError: null },
      ],
      totals: { params: { before: 2_000_000, after: 500_000, ratio: 0.25 }, macs: { before: 60_000_000, after: 15_000_000, ratio: 0.25 } },
      accuracy: { labels: true, samples: 10000, split: 'test', original: { top1: 0.95 }, compressed: { top1: 0.6 }, finetuned: { top1: 0.945 } },
      finetune: { epochs: 0.32, steps: 300, wallSeconds: 120.5, imagesPerSecond: 160 },
      measurement: {
        runtime: { version: '1.30.0', cpu: 'test cpu', intraOpNumThreads: 1 },
        table1: { latencyMs: { before: 2, after: 1, ratio: 2 }, energyMillijoulesEstimate: { before: 0.4, after: 0.1, ratio: 4 } },
        energy: { original: { statement: '4.6 pJ per MAC, 640 pJ per byte' } },
      },
    };
    const plan = formatPlan(report);
    assert.match(plan, /conv2\s+Conv 64×32×3×3\s+tucker2\s+20\/12\s+18\.5 k → 3\.3 k\s+14\.00 M → 2\.50 M\s+0\.123/);
    assert.match(plan, /fc\s+Gemm 10×64\s+keep\s+—/);
    const t1 = formatTable1(report);
    assert.match(t1, /original\s+2\.00 M\s+60\.00 M\s+95\.00 %\s+2\.000\s+0\.4000/);
    assert.match(t1, /compressed \+ fine-tuned\s+500\.0 k\s+15\.00 M\s+94\.50 %\s+1\.000\s+0\.1000/);
    assert.match(t1, /ratio \/ change\s+4\.00×\s+4\.00×\s+-0\.50 pt\s+2\.00×\s+4\.00×/);
    assert.match(t1, /energy is an ESTIMATE, not a measurement: 4\.6 pJ per MAC/);
    const bare = formatTable1({ totals: report.totals });
    assert.match(bare, /original\s+2\.00 M\s+60\.00 M\s+—\s+—\s+—/);
    assert.doesNotMatch(bare, /fine-tuned/);
  });
});

describe('demo test-split reader', () => {
  it('reads gzip and plain IDX files and names what is wrong with a bad one', () => {
    const idx = Buffer.from([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]);
    for (const raw of [idx, gzipSync(idx)]) {
      const { dims, data } = parseIdx(raw, 'x');
      assert.deepEqual(dims, [2, 3]);
      assert.deepEqual([...data], [1, 2, 3, 4, 5, 6]);
    }
    assert.throws(() => parseIdx(idx.subarray(0, 15), 'short'), /short declares dims 2×3 but holds 3 bytes/);
    assert.throws(() => parseIdx(Buffer.from([0, 0, 0x0d, 1]), 'floats'), /floats is not an unsigned-byte IDX file/);
  });
});

describe('make demo (DEMO_QUICK=1)', () => {
  it('runs a job through the real API and worker and prints Table 1', async () => {
    await access(path.join(REPO_ROOT, 'assets', 'models', 'fmnist-vgg.onnx'));
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(REPO_ROOT, 'src', 'demo.ts')], {
      cwd: REPO_ROOT,
      env: { ...process.env, DEMO_QUICK: '1' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, out);
    assert.match(out, /job succeeded/);
    assert.match(out, /analysis done: 66\.26 M MACs, 1\.53 M weights/);
    assert.match(out, /fine-tuning 200 steps on Fashion-MNIST/);
    assert.match(out, /\[ *\d+\.\d %\] finetune/, 'live fine-tuning progress from SSE');
    assert.match(out, /matches X-Content-SHA256/);
    assert.match(out, /Per-layer plan\nlayer/);
    assert.match(out, /compressed \+ fine-tuned\s+\S+ [kM]\s+\S+ [kMG]\s+\d+\.\d\d %/, 'a measured top-1 after fine-tuning');
    assert.match(out, /ratio \/ change\s+\d+\.\d\d×\s+\d+\.\d\d×/);
    // The client's own onnxruntime-node check of both models, and the report page saved beside the JSON.
    const scored = /top-1 on 1,000 Fashion-MNIST test images, measured by this client with onnxruntime-node: original (\d+\.\d\d) %, compressed (\d+\.\d\d) %/.exec(out);
    assert.ok(scored, out);
    assert.ok(Number(scored[1]) > 85, `the trained reference net scores ${scored[1]} % in onnxruntime-node`);
    assert.match(out, /report page: http:\/\/127\.0\.0\.1:\d+\/v1\/jobs\/[\w-]+\/report\.html/);
    assert.match(await readFile(path.join(REPO_ROOT, '.data', 'demo', 'report.html'), 'utf8'), /<svg/);
  });
});

describe('demo Table 1 with calibration and an accuracy target', () => {
  it('shows the rewrite without and with calibration, the layers selection kept and the search outcome', () => {
    const report = {
      method: 'improved',
      layers: [
        { name: 'stem', op: 'Conv', kind: 'keep', ranks: [], reason: 'layer selection: tucker1 at ranks [8] would save 0.40 %', params: { before: 10, after: 10 }, macs: { before: 10, after: 10 } },
      ],
      totals: { params: { before: 2_000_000, after: 500_000, ratio: 0.25 }, macs: { before: 60_000_000, after: 15_000_000, ratio: 0.25 } },
      accuracy: { labels: true, samples: 2000, original: { top1: 0.95 }, compressed: { top1: 0.87 }, finetuned: { top1: 0.948 } },
      calibration: { samples: 1024, heldout: { withoutCalibration: { top1: 0.153 }, withCalibration: { top1: 0.87 } } },
      search: { maxAccuracyDrop: 0.5, met: true, message: 'candidate 2: 4.10× fewer MACs, top-1 94.80 %' },
      tradeoff: [
        { candidate: 2, macsRatio: 0.2439, accuracy: 0.948, drop: 0.2, withinLimit: true },
        { candidate: 1, macsRatio: 0.1953, accuracy: 0.941, drop: 0.9, withinLimit: false },
      ],
    };
    const t1 = formatTable1(report);
    assert.match(t1, /compressed \(rewrite only\)\s+500\.0 k\s+15\.00 M\s+15\.30 %/);
    assert.match(t1, /compressed \+ calibrated\s+500\.0 k\s+15\.00 M\s+87\.00 %/);
    assert.match(t1, /method: improved; 1 layer\(s\) kept by layer selection .*calibrated on 1024 training images/);
    assert.match(t1, /accuracy target \(≤ 0\.5 points\): met: candidate 2/);
    assert.match(t1, /candidate 2: 4\.10× fewer MACs, top-1 94\.80 % \(0\.20 points below\), within the limit/);
    assert.match(t1, /candidate 1: 5\.12× fewer MACs, top-1 94\.10 % \(0\.90 points below\), outside the limit/);
  });
});
