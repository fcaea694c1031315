// The bench's issue-11 helpers: BENCHMARKS.md sections replaced in place, the per-layer SVG plot, and the
// rank-multiple and threads tables rendered from recorded results.
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { renderAlignment, type AlignmentResults } from '../benchmarks/alignment.js';
import { layerProfileSvg } from '../benchmarks/layer-plot.js';
import { replaceSection } from '../benchmarks/sections.js';
import { renderThreads, type ThreadResults } from '../benchmarks/threads.js';
import type { LayerProfile, LayerProfileRow } from '../src/worker/profile.js';

const stats = (ms: number) => ({ runs: 20, medianMs: ms, p90Ms: ms, meanMs: ms, minMs: ms, cpuMedianMs: ms });

test('a section is replaced in place, appended the first time, and the rest of the file is kept', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'sections-'));
  try {
    const file = join(dir, 'BENCH-OUT.md');
    await writeFile(file, '# Title\n\n<!-- other:begin -->\nkept $& as is\n<!-- other:end -->\n');
    await replaceSection(file, 'mine', 'first $1 version');
    await replaceSection(file, 'mine', 'second version');
    const text = await readFile(file, 'utf8');
    assert.match(text, /<!-- other:begin -->\nkept \$& as is\n<!-- other:end -->/);
    assert.equal(text.match(/<!-- mine:begin -->/g)?.length, 1);
    assert.match(text, /<!-- mine:begin -->\nsecond version\n<!-- mine:end -->\n$/);
    assert.doesNotMatch(text, /first/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('the per-layer plot has one point per layer, escaped labels and the y = x line', () => {
  const row = (layer: string, kind: string, macs: number, speedup: number): LayerProfileRow => ({
    layer, opType: 'Conv', kind, ranks: [16, 16], replacement: [], inputShape: [1, 64, 56, 56],
    macs: { original: macs * 10, replacement: 10, ratio: macs }, original: stats(speedup), replacementTime: stats(1),
    speedup, cpuSpeedup: speedup, efficiency: speedup / macs,
  });
  const profile: LayerProfile = {
    threads: 2, runs: 20, warmup: 3, graphOptimizationLevel: 'all', skipped: [],
    rows: [row('conv<1>&', 'tucker2', 5, 2), row('fc', 'svd', 2.5, 2.4), row('stem', 'tucker1', 1.9, 1.1)],
  };
  const svg = layerProfileSvg(profile, 'vgg16 <test>');
  assert.equal(svg.match(/<circle cx="[\d.]+" cy="[\d.]+" r="5" fill="#[0-9a-f]+" fill-opacity/g)?.length, 3);
  assert.match(svg, /conv&lt;1&gt;&amp; \(tucker2 16\/16\): MACs 5\.00×, time 2\.00×/);
  assert.match(svg, /vgg16 &lt;test&gt;/);
  assert.match(svg, /speed-up = MACs reduction/);
  assert.doesNotMatch(svg, /NaN|Infinity/);
});

test('the rank-multiple table shows every row and a per-kind summary against multiple 1', () => {
  const rows = [1, 16].map((multiple) => ({
    case: '3×3 conv 256→256 at 56×56', kind: 'tucker2', multiple, ranks: [multiple === 1 ? 45 : 48, multiple === 1 ? 45 : 48],
    threads: 1, macsReduction: 5, original: stats(10), replacement: stats(multiple === 1 ? 4 : 2.5),
    speedup: multiple === 1 ? 2.5 : 4, efficiency: multiple === 1 ? 0.5 : 0.8,
  }));
  const results: AlignmentResults = {
    date: '2026-11-29T13:00:00Z', cpu: 'Test CPU', ortVersion: '1.30.0', runs: 20, warmup: 3, command: 'cmd',
    loadStart: [1, 1, 1], loadEnd: [2, 2, 2], rows,
  };
  const md = renderAlignment(results);
  assert.match(md, /\| 3×3 conv 256→256 at 56×56 \| tucker2 \| 1 \| 16 \| 48\/48 \| 5\.00× \| 10\.000 \| 2\.500 \| 4\.00× \| 0\.80 \|/);
  assert.match(md, /Tucker-2 3×3 at 1 thread\(s\): median efficiency ×1: 0\.50 \(1\.00 of ×1's\), ×16: 0\.80 \(1\.60 of ×1's\)/);
  assert.match(md, /load average 1\.0\/1\.0\/1\.0 at start, 2\.0\/2\.0\/2\.0 at end/);
});

test('the threads table lists every operator type with its node counts', () => {
  const results: ThreadResults = {
    label: 'vgg16-224', date: '2026-11-29T13:00:00Z', cpu: 'Test CPU', ortVersion: '1.30.0', runs: 20, warmup: 3,
    command: 'cmd', sessionOptions: { intraOpNumThreads: [1, 2] }, macsReduction: 4.9, loadStart: [1, 1, 1], loadEnd: [1, 1, 1],
    rows: [
      ...[1, 2].map((threads) => ({
        threads, spinning: true, original: stats(200 / threads), compressed: stats(50), speedup: 4 / threads, cpuSpeedup: 4,
        profile: {
          original: { Conv: { ms: 180, nodes: 13 } },
          compressed: { Conv: { ms: 40, nodes: 38 }, ReorderInput: { ms: 2, nodes: 8 } },
          originalNodeMs: 180, compressedNodeMs: 42,
        },
      })),
      { threads: 2, spinning: false, original: stats(100), compressed: stats(50), speedup: 2, cpuSpeedup: 4, profile: null },
    ],
  };
  const md = renderThreads(results);
  assert.match(md, /\| 1 \| — \| 200\.0 \| 50\.0 \| 4\.00× \| 4\.00× \| 180\.0 \| 42\.0 \|/);
  assert.match(md, /\| 2 \| no \(the service's default\) \| 100\.0 \| 50\.0 \| 2\.00× \| 4\.00× \| — \| — \|/);
  assert.match(md, /\| Conv \| 180\.00 \| 40\.00 \| 180\.00 \| 40\.00 \| 13 \/ 38 \|/);
  assert.match(md, /\| ReorderInput \| — \| 2\.00 \| — \| 2\.00 \| 0 \/ 8 \|/);
  assert.match(md, /MACs reduction 4\.90×/);
});
