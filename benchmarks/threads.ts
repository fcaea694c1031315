// Threads that help (issue 11): the headline speed-up of a compressed model at 1 and 2 intra-op threads,
// and where the time goes per operator type, from onnxruntime's own profiler (enableProfiling).
//
//   node --import tsx benchmarks/threads.ts --original O.onnx --compressed C.onnx [--threads 1,2] [--runs 20]
//        [--label vgg16] [--out BENCHMARKS.md] [--json F] [--section NAME (default threads)]
//
// Writes its section of BENCHMARKS.md between <!-- threads:begin --> and <!-- threads:end -->.
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import {
  fillNormal, latencyStats, resolveInputShape, seededUniform, sessionOptions, timeInterleaved, type LatencyStats,
} from '../src/worker/verify.js';
import { replaceSection } from './sections.js';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export interface OpTimes { [opType: string]: { ms: number; nodes: number } }
export interface ThreadRow {
  /** false: the intra-op pool's threads block instead of spinning (session.intra_op.allow_spinning = 0) */
  spinning?: boolean;
  threads: number; original: LatencyStats; compressed: LatencyStats; speedup: number; cpuSpeedup: number | null;
  profile: { original: OpTimes; compressed: OpTimes; originalNodeMs: number; compressedNodeMs: number } | null;
}
export interface ThreadResults {
  label: string; date: string; cpu: string; ortVersion: string; runs: number; warmup: number; command: string;
  sessionOptions: Record<string, unknown>; macsReduction: number | null;
  loadStart: number[]; loadEnd: number[]; rows: ThreadRow[];
}

interface ProfileEvent { cat?: string; name?: string; dur?: number; args?: { op_name?: string } }

async function feedsFor(session: ort.InferenceSession, seed: number): Promise<Record<string, ort.Tensor>> {
  const feeds: Record<string, ort.Tensor> = {};
  const uniform = seededUniform(seed);
  for (const meta of session.inputMetadata) {
    if (!meta.isTensor) throw new Error(`input ${meta.name} is not a tensor`);
    const dims = resolveInputShape({ name: meta.name, type: meta.type, shape: meta.shape.map((d) => (typeof d === 'number' ? d : '?')) }, 1);
    feeds[meta.name] = new ort.Tensor('float32', fillNormal(new Float32Array(dims.reduce((a, b) => a * b, 1)), uniform), dims);
  }
  return feeds;
}

/** Per operator type: kernel milliseconds per run, from one profiled session of `runs` runs. */
async function profileOps(model: string, threads: number, feeds: Record<string, ort.Tensor>, runs: number, warmup: number,
  dir: string): Promise<{ ops: OpTimes; nodeMs: number }> {
  const prefix = path.join(dir, `profile-${path.basename(model, '.onnx')}-${threads}t`);
  const session = await ort.InferenceSession.create(model, {
    ...sessionOptions({ threads, graphOptimizationLevel: 'all', executionMode: 'sequential' }),
    enableProfiling: true, profileFilePrefix: prefix,
  });
  for (let i = 0; i < warmup + runs; i++) for (const v of Object.values(await session.run(feeds))) v.dispose();
  session.endProfiling();
  await session.release();
  const file = (await readdir(dir)).filter((f) => f.startsWith(path.basename(prefix)) && f.endsWith('.json')).sort().pop();
  if (!file) throw new Error(`onnxruntime wrote no profile for ${model}`);
  const events = JSON.parse(await readFile(path.join(dir, file), 'utf8')) as ProfileEvent[];
  await rm(path.join(dir, file));
  // Every run emits one kernel_time event per node; the first `warmup` runs' events are dropped.
  const perNode = new Map<string, { op: string; durs: number[] }>();
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name?.endsWith('_kernel_time') || e.dur === undefined) continue;
    const entry = perNode.get(e.name) ?? { op: e.args?.op_name ?? '?', durs: [] };
    entry.durs.push(e.dur);
    perNode.set(e.name, entry);
  }
  const ops: OpTimes = {};
  let nodeMs = 0;
  for (const { op, durs } of perNode.values()) {
    const timed = durs.slice(-runs);
    const ms = timed.reduce((a, b) => a + b, 0) / timed.length / 1000;
    ops[op] = { ms: (ops[op]?.ms ?? 0) + ms, nodes: (ops[op]?.nodes ?? 0) + 1 };
    nodeMs += ms;
  }
  return { ops, nodeMs };
}

export async function measureThreads(opts: {
  label: string; original: string; compressed: string; threads: number[]; runs: number; warmup: number; command: string;
  workDir: string; macsReduction: number | null; log?: (line: string) => void;
}): Promise<ThreadResults> {
  await mkdir(opts.workDir, { recursive: true });
  const loadStart = os.loadavg();
  const rows: ThreadRow[] = [];
  for (const threads of opts.threads) {
    // onnxruntime's default first (spinning), then the service's (blocking; src/worker/timing.ts).
    const sessOpts = sessionOptions({ threads, graphOptimizationLevel: 'all', executionMode: 'sequential', spinning: true });
    const a = await ort.InferenceSession.create(opts.original, sessOpts);
    const b = await ort.InferenceSession.create(opts.compressed, sessOpts);
    const feeds = await feedsFor(a, 2016);
    const t = await timeInterleaved(a, b, feeds, opts.runs, opts.warmup);
    await a.release();
    await b.release();
    const original = latencyStats(t.a.wallMs, t.a.cpuMs);
    const compressed = latencyStats(t.b.wallMs, t.b.cpuMs);
    const po = await profileOps(opts.original, threads, feeds, Math.max(5, Math.floor(opts.runs / 2)), opts.warmup, opts.workDir);
    const pc = await profileOps(opts.compressed, threads, feeds, Math.max(5, Math.floor(opts.runs / 2)), opts.warmup, opts.workDir);
    const cpuSpeedup = original.cpuMedianMs !== null && compressed.cpuMedianMs ? original.cpuMedianMs / compressed.cpuMedianMs : null;
    rows.push({ threads, spinning: true, original, compressed, speedup: original.medianMs / compressed.medianMs, cpuSpeedup,
      profile: { original: po.ops, compressed: pc.ops, originalNodeMs: po.nodeMs, compressedNodeMs: pc.nodeMs } });
    opts.log?.(`[threads] ${opts.label} ${threads}t: ${original.medianMs.toFixed(1)} → ${compressed.medianMs.toFixed(1)} ms `
      + `(${(original.medianMs / compressed.medianMs).toFixed(2)}×)`);
    if (threads > 1) {
      // The same pair with the pool's threads blocking between ops instead of spinning: on a shared
      // machine a spinning thread takes a core another process (or the other thread) needs.
      const blocking = sessionOptions({ threads, graphOptimizationLevel: 'all', executionMode: 'sequential' });
      const c = await ort.InferenceSession.create(opts.original, blocking);
      const d = await ort.InferenceSession.create(opts.compressed, blocking);
      const u = await timeInterleaved(c, d, feeds, opts.runs, opts.warmup);
      await c.release();
      await d.release();
      const o2 = latencyStats(u.a.wallMs, u.a.cpuMs);
      const c2 = latencyStats(u.b.wallMs, u.b.cpuMs);
      rows.push({ threads, spinning: false, original: o2, compressed: c2, speedup: o2.medianMs / c2.medianMs,
        cpuSpeedup: o2.cpuMedianMs !== null && c2.cpuMedianMs ? o2.cpuMedianMs / c2.cpuMedianMs : null, profile: null });
      opts.log?.(`[threads] ${opts.label} ${threads}t, no spinning: ${o2.medianMs.toFixed(1)} → ${c2.medianMs.toFixed(1)} ms`);
    }
  }
  return {
    label: opts.label, date: new Date().toISOString(), cpu: os.cpus()[0]?.model.trim() ?? 'unknown CPU',
    ortVersion: ort.env.versions.common, runs: opts.runs, warmup: opts.warmup, command: opts.command,
    sessionOptions: { ...sessionOptions({ threads: 0, graphOptimizationLevel: 'all', executionMode: 'sequential' }), intraOpNumThreads: opts.threads },
    macsReduction: opts.macsReduction, loadStart, loadEnd: os.loadavg(), rows,
  };
}

const load = (l: number[]) => l.map((v) => v.toFixed(1)).join('/');
const f = (v: number | null | undefined, d = 2) => (v === null || v === undefined ? '—' : v.toFixed(d));

export function renderThreads(r: ThreadResults): string {
  const lines = [
    `## Threads: ${r.label} at 1 and 2 threads (issue 11)`,
    '',
    `Measured — command \`${r.command}\`; onnxruntime-node ${r.ortVersion}; session options `
      + `\`${JSON.stringify(r.sessionOptions)}\`; batch 1; CPU ${r.cpu} (${os.cpus().length} cores); `
      + `${r.date.slice(0, 16).replace('T', ' ')} UTC; ${r.runs} timed runs after ${r.warmup} warm-up run(s), original and `
      + `compressed interleaved in one process; load average ${load(r.loadStart)} at start, ${load(r.loadEnd)} at end`
      + `${r.macsReduction ? `; MACs reduction ${r.macsReduction.toFixed(2)}×` : ''}.`,
    '',
    '| threads | intra-op threads spin | original (ms) | compressed (ms) | speed-up | CPU-time speed-up | original: Σ kernels (ms) | compressed: Σ kernels (ms) |',
    '|---:|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const row of r.rows) {
    lines.push(`| ${row.threads} | ${row.threads === 1 ? '—' : row.spinning === false ? 'no (the service\'s default)' : 'yes (onnxruntime\'s default)'} | `
      + `${f(row.original.medianMs, 1)} | ${f(row.compressed.medianMs, 1)} | ${f(row.speedup)}× | `
      + `${f(row.cpuSpeedup)}× | ${f(row.profile?.originalNodeMs, 1)} | ${f(row.profile?.compressedNodeMs, 1)} |`);
  }
  const profiled = r.rows.filter((row): row is ThreadRow & { profile: NonNullable<ThreadRow['profile']> } => row.profile !== null);
  const ops = [...new Set(profiled.flatMap((row) => [...Object.keys(row.profile.original), ...Object.keys(row.profile.compressed)]))];
  const weight = (op: string) => Math.max(...profiled.map((row) => row.profile.compressed[op]?.ms ?? 0));
  ops.sort((a, b) => weight(b) - weight(a));
  lines.push('', 'Per operator type, from onnxruntime\'s profiler (kernel time per run, the mean over the profiled runs; '
    + 'node counts after onnxruntime\'s graph optimisations, so fused and layout-reorder nodes show as it runs them):', '');
  lines.push(`| operator | ${profiled.map((row) => `original ${row.threads}t (ms) | compressed ${row.threads}t (ms)`).join(' | ')} | nodes (original / compressed) |`);
  lines.push(`|---|${profiled.map(() => '---:|---:').join('|')}|---|`);
  for (const op of ops) {
    const first = profiled[0]!;
    lines.push(`| ${op} | ${profiled.map((row) => `${f(row.profile.original[op]?.ms, 2)} | ${f(row.profile.compressed[op]?.ms, 2)}`).join(' | ')} | `
      + `${first.profile.original[op]?.nodes ?? 0} / ${first.profile.compressed[op]?.nodes ?? 0} |`);
  }
  lines.push('');
  return lines.join('\n');
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      original: { type: 'string' },
      compressed: { type: 'string' },
      label: { type: 'string', default: 'vgg16-224' },
      threads: { type: 'string', default: '1,2' },
      runs: { type: 'string', default: '20' },
      warmup: { type: 'string', default: '3' },
      'macs-reduction': { type: 'string' },
      out: { type: 'string', default: path.join(repoRoot, 'BENCHMARKS.md') },
      json: { type: 'string', default: path.join(repoRoot, 'benchmarks', 'threads.json') },
      'work-dir': { type: 'string', default: path.join(repoRoot, '.cache', 'bench', 'threads') },
      'from-json': { type: 'string' },
      section: { type: 'string', default: 'threads' },
    },
  });
  let results: ThreadResults;
  if (values['from-json']) {
    results = JSON.parse(await readFile(values['from-json'], 'utf8')) as ThreadResults;
  } else {
    if (!values.original || !values.compressed) throw new Error('--original and --compressed are required (or --from-json)');
    results = await measureThreads({
      label: values.label, original: values.original, compressed: values.compressed, threads: values.threads.split(',').map(Number),
      runs: Number(values.runs), warmup: Number(values.warmup), workDir: values['work-dir'],
      macsReduction: values['macs-reduction'] ? Number(values['macs-reduction']) : null,
      command: `node --import tsx benchmarks/threads.ts --original ${path.basename(values.original)} --compressed ${path.basename(values.compressed)}`,
      log: (l) => process.stderr.write(`${l}\n`),
    });
    await writeFile(values.json, JSON.stringify(results, null, 2));
  }
  await replaceSection(values.out, values.section, renderThreads(results));
  process.stderr.write(`[threads] wrote ${values.out}\n`);
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
