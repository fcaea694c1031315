// Rank alignment: how fast a layer's replacement chain runs in onnxruntime-node when its ranks are
// multiples of 1, 4, 8, 16 or 32 (benchmarks/alignment_models.py builds the models). Each variant is
// timed interleaved with the original layer in one process; "efficiency" = speed-up ÷ MACs reduction,
// so ranks of different sizes compare (1 = time fell as much as MACs did).
//
//   node --import tsx benchmarks/alignment.ts [--threads 1,2] [--runs 20] [--out BENCHMARKS.md] [--json F]
//
// Writes its section of BENCHMARKS.md between <!-- alignment:begin --> and <!-- alignment:end -->.
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import * as ort from 'onnxruntime-node';
import {
  fillNormal, latencyStats, seededUniform, sessionOptions, timeInterleaved, type LatencyStats,
} from '../src/worker/verify.js';
import { replaceSection } from './sections.js';

const execFileAsync = promisify(execFile);
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

interface Variant { multiple: number; ranks: number[]; macs: number; model: string }
interface Case { kind: string; label: string; inputShape: number[]; macs: number; original: string; nominalRank: number; variants: Variant[] }
export interface AlignmentRow {
  case: string; kind: string; multiple: number; ranks: number[]; threads: number;
  macsReduction: number; original: LatencyStats; replacement: LatencyStats; speedup: number; efficiency: number;
}
export interface AlignmentResults {
  date: string; cpu: string; ortVersion: string; runs: number; warmup: number; command: string;
  loadStart: number[]; loadEnd: number[]; rows: AlignmentRow[];
}

export async function measureAlignment(opts: {
  python: string; workDir: string; threads: number[]; runs: number; warmup: number; command: string;
  log?: (line: string) => void;
}): Promise<AlignmentResults> {
  await mkdir(opts.workDir, { recursive: true });
  await execFileAsync(opts.python, [path.join(repoRoot, 'benchmarks', 'alignment_models.py'), opts.workDir]);
  const manifest = JSON.parse(await readFile(path.join(opts.workDir, 'manifest.json'), 'utf8')) as { cases: Case[] };
  const loadStart = os.loadavg();
  const rows: AlignmentRow[] = [];
  for (const threads of opts.threads) {
    const sessOpts = sessionOptions({ threads, graphOptimizationLevel: 'all', executionMode: 'sequential' });
    for (const c of manifest.cases) {
      const original = await ort.InferenceSession.create(c.original, sessOpts);
      const size = c.inputShape.reduce((a, b) => a * b, 1);
      const feeds = { x: new ort.Tensor('float32', fillNormal(new Float32Array(size), seededUniform(7)), c.inputShape) };
      for (const v of c.variants) {
        const chain = await ort.InferenceSession.create(v.model, sessOpts);
        const t = await timeInterleaved(original, chain, feeds, opts.runs, opts.warmup);
        await chain.release();
        const a = latencyStats(t.a.wallMs, t.a.cpuMs);
        const b = latencyStats(t.b.wallMs, t.b.cpuMs);
        const speedup = a.medianMs / b.medianMs;
        const macsReduction = c.macs / v.macs;
        rows.push({ case: c.label, kind: c.kind, multiple: v.multiple, ranks: v.ranks, threads, macsReduction,
          original: a, replacement: b, speedup, efficiency: speedup / macsReduction });
        opts.log?.(`[alignment] ${threads}t ${c.label} ×${v.multiple} ranks ${v.ranks.join('/')}: ${speedup.toFixed(2)}× `
          + `(efficiency ${(speedup / macsReduction).toFixed(2)})`);
      }
      await original.release();
    }
  }
  return {
    date: new Date().toISOString(), cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU', ortVersion: ort.env.versions.common,
    runs: opts.runs, warmup: opts.warmup, command: opts.command, loadStart, loadEnd: os.loadavg(), rows,
  };
}

const load = (l: number[]) => l.map((v) => v.toFixed(1)).join('/');

export function renderAlignment(r: AlignmentResults): string {
  const lines = [
    '## Speed against rank multiple (runtime-aligned ranks, issue 11)',
    '',
    `Measured — command \`${r.command}\`; onnxruntime-node ${r.ortVersion}, CPU execution provider, all graph `
      + `optimisations, batch 1; CPU ${r.cpu} (${os.cpus().length} cores); ${r.date.slice(0, 16).replace('T', ' ')} UTC; `
      + `${r.runs} timed runs after ${r.warmup} warm-up run(s), original layer and replacement chain interleaved; load `
      + `average ${load(r.loadStart)} at start, ${load(r.loadEnd)} at end. Random weights (only shapes matter for time). `
      + 'Each row\'s ranks are a multiple of the row\'s number and, below 32, not of twice it, near one nominal rank; '
      + 'efficiency = speed-up ÷ MACs reduction (1: time fell as much as MACs did), so rows of slightly different '
      + 'ranks compare.',
    '',
    '| layer | kind | threads | rank multiple | ranks | MACs reduction | original (ms) | replacement (ms) | speed-up | efficiency |',
    '|---|---|---:|---:|---|---:|---:|---:|---:|---:|',
  ];
  for (const row of r.rows) {
    lines.push(`| ${row.case} | ${row.kind} | ${row.threads} | ${row.multiple} | ${row.ranks.join('/')} | `
      + `${row.macsReduction.toFixed(2)}× | ${row.original.medianMs.toFixed(3)} | ${row.replacement.medianMs.toFixed(3)} | `
      + `${row.speedup.toFixed(2)}× | ${row.efficiency.toFixed(2)} |`);
  }
  lines.push('', ...alignmentSummary(r), '');
  return lines.join('\n');
}

/** Per layer kind and thread count: the median efficiency of each multiple, against multiple 1. */
function alignmentSummary(r: AlignmentResults): string[] {
  const out: string[] = [];
  const groups = new Map<string, AlignmentRow[]>();
  for (const row of r.rows) {
    const key = `${row.kind === 'svd' && row.case.startsWith('FC') ? 'FC (MatMul)' : row.kind === 'svd' ? '1×1 conv SVD' : 'Tucker-2 3×3'} at ${row.threads} thread(s)`;
    groups.set(key, [...(groups.get(key) ?? []), row]);
  }
  for (const [key, rows] of groups) {
    const byMultiple = new Map<number, number[]>();
    for (const row of rows) byMultiple.set(row.multiple, [...(byMultiple.get(row.multiple) ?? []), row.efficiency]);
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)]!;
    const base = med(byMultiple.get(1) ?? [NaN]);
    const parts = [...byMultiple].map(([m, xs]) => `×${m}: ${med(xs).toFixed(2)} (${(med(xs) / base).toFixed(2)} of ×1's)`);
    out.push(`- ${key}: median efficiency ${parts.join(', ')}.`);
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      threads: { type: 'string', default: '1,2' },
      runs: { type: 'string', default: '20' },
      warmup: { type: 'string', default: '3' },
      out: { type: 'string', default: path.join(repoRoot, 'BENCHMARKS.md') },
      json: { type: 'string', default: path.join(repoRoot, 'benchmarks', 'alignment.json') },
      python: { type: 'string', default: '/usr/bin/python3' },
      'work-dir': { type: 'string', default: path.join(repoRoot, '.cache', 'bench', 'alignment') },
      'from-json': { type: 'string' },
    },
  });
  const threads = values.threads.split(',').map(Number);
  const command = `node --import tsx benchmarks/alignment.ts${values.threads !== '1,2' ? ` --threads ${values.threads}` : ''}`;
  const results: AlignmentResults = values['from-json']
    ? JSON.parse(await readFile(values['from-json'], 'utf8')) as AlignmentResults
    : await measureAlignment({ python: values.python, workDir: values['work-dir'], threads, runs: Number(values.runs),
      warmup: Number(values.warmup), command, log: (l) => process.stderr.write(`${l}\n`) });
  if (!values['from-json']) await writeFile(values.json, JSON.stringify(results, null, 2));
  await replaceSection(values.out, 'alignment', renderAlignment(results));
  process.stderr.write(`[alignment] wrote ${values.out}\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
