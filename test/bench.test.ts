import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import type { BenchResults } from '../src/worker/bench.js';

const execFileAsync = promisify(execFile);
let dir = '';
let markdown = '';
let results: BenchResults;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bench-test-'));
  // The same entry point `npm run bench` uses, in its quick mode.
  await execFileAsync(process.execPath, [
    '--import', 'tsx', 'benchmarks/run.ts', '--quick', '--out', join(dir, 'BENCHMARKS.md'), '--work-dir', join(dir, 'work'),
  ], { maxBuffer: 64 * 1024 * 1024 });
  markdown = await readFile(join(dir, 'BENCHMARKS.md'), 'utf8');
  results = JSON.parse(await readFile(join(dir, 'BENCHMARKS.json'), 'utf8')) as BenchResults;
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('the quick bench compresses with the budget rule and measures the result', () => {
  const [c] = results.cases;
  assert.ok(c, 'one case');
  assert.equal(c.compression.exitCode, 0, c.compression.message);
  assert.ok(c.compression.wallSeconds > 0 && c.compression.peakRssBytes > 0);
  const m = c.measurement;
  assert.ok(m, c.error ?? 'measured');
  // MACs counted here (from onnxruntime's shapes) land where the engine's budget aimed: 1/2 within 2 %.
  assert.ok(Math.abs(m.table1.macs.ratio - 2) / 2 < 0.02, `MACs reduction ${m.table1.macs.ratio}`);
  assert.ok(m.table1.weights.ratio > 1);
  assert.ok(m.latency.length >= 1 && m.latency.every((l) => l.original.runs >= 20 && l.speedup > 0));
  assert.ok(m.latency.every((l) => l.cpuSpeedup !== null && l.cpuSpeedup > 0));
  assert.ok(Number.isFinite(m.fidelity.compressed.maxRelativeError));
});

test('the quick bench compares rules, session options and profiles layers', () => {
  assert.deepEqual(results.rules?.results.map((r) => r.benchCase.rule), ['vbmf', 'budget', 'latency']);
  for (const r of results.rules!.results) assert.ok(r.measurement !== null, `${r.benchCase.rule}: ${r.error ?? ''}`);
  // The latency rule ran the worker's loop (candidates timed in onnxruntime-node) before compressing.
  const latency = results.rules!.results[2]!.compression.latency;
  assert.ok(latency && latency.rounds.length >= 1 && latency.targetLatency === 0.5, JSON.stringify(latency));
  assert.ok(latency.rounds.every((round) => round.timedLayers > 0 && round.predictedRatio !== null));
  assert.match(results.rules!.results[2]!.compression.command, /--rule latency --target-macs 0\.\d+ --latency-table \S+latency-table\.json/);
  assert.match(markdown, /The latency row of resnet18 went through the worker's own loop \(planForLatency/);
  assert.equal(results.experiments?.results.length, 2);
  for (const e of results.experiments!.results) assert.ok(e.measurement, e.error ?? '');
  const profile = results.profile?.profile;
  assert.ok(profile && profile.rows.length > 0, results.profile?.error ?? 'profiled');
  for (const row of profile.rows) {
    assert.ok(row.macs.ratio > 1, `${row.layer} MACs ratio ${row.macs.ratio}`);
    assert.ok(row.original.runs >= 20 && row.replacementTime.medianMs > 0);
  }
});

test('the quick bench writes every table with its command, threads, CPU and date', () => {
  for (const heading of ['## Speed-up at the paper\'s MACs reductions', '## Weights, MACs and energy', '## Against the goals',
    '## Compression time and peak memory',
    '## Rules on the same network', '## onnxruntime session options', '## Per-layer profile']) {
    assert.ok(markdown.includes(heading), heading);
  }
  assert.match(markdown, /command `node --import tsx benchmarks\/run\.ts --quick`/);
  assert.match(markdown, /2 intra-op thread\(s\)/);
  assert.ok(markdown.includes(results.cpu));
  assert.ok(markdown.includes(results.date.slice(0, 10)));
  assert.match(markdown, /\| resnet18 \| 64 \| budget 1\/2 \| 0\.149 \| 0\.07\d \| 2\.0\d×/);
});
