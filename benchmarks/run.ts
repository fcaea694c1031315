// `npm run bench` / `make bench`: compress the paper's networks at its MACs reductions and measure them
// with onnxruntime-node; writes BENCHMARKS.md (and the raw results as JSON beside it).
//   --quick        ResNet-18 at 64×64, few runs: exercises every part of the harness in a minute (used by the tests)
//   --out FILE     where to write the markdown (default: BENCHMARKS.md, or .cache/bench/BENCHMARKS.quick.md with --quick)
//   --threads N    intra-op threads for onnxruntime (default 2)
//   --work-dir D   compressed models and plans (default .cache/bench/models)
//   --reuse        keep compressed models (and their compression time and memory) from an earlier run in the
//                  work dir and measure again: for re-measuring on a quieter machine
//   --python P     interpreter with torch and onnx (default /usr/bin/python3)
//   --json FILE    raw results (default: benchmarks/results.json, or beside --out / the quick markdown)
//   --from-json F  re-render the markdown from a previous run's results JSON instead of measuring
//   --cases L,...  only these cases of the full plan, by label (e.g. vgg16-224-budget-4.93x,vgg16-224-latency-t0.2028),
//                  with no rules, session-option, profile or engine-side tables, and the VGG-16 threads table when
//                  the VGG-16 budget case is among them; needs --out (BENCHMARKS.md keeps the full run's tables)
import { execFile } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { caseLabel, renderMarkdown, runBenchmarks, type BenchPlan, type BenchResults, type SessionExperiment } from '../src/worker/bench.js';
import { measureAlignment, renderAlignment } from './alignment.js';
import { layerProfileSvg } from './layer-plot.js';
import { replaceSection } from './sections.js';
import { measureThreads, renderThreads } from './threads.js';

const execFileAsync = promisify(execFile);
const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    reuse: { type: 'boolean', default: false },
    out: { type: 'string' },
    threads: { type: 'string', default: '2' },
    'work-dir': { type: 'string' },
    python: { type: 'string', default: '/usr/bin/python3' },
    json: { type: 'string' },
    'from-json': { type: 'string' },
    cases: { type: 'string' },
  },
});
const only = values.cases ? values.cases.split(',').map((label) => label.trim()).filter(Boolean) : null;
if (only && !values.out) throw new Error('--cases writes a partial run: give --out FILE (BENCHMARKS.md keeps the full run)');
const quick = values.quick;
const threads = Number(values.threads);
if (!Number.isInteger(threads) || threads < 1) throw new Error(`--threads must be a positive integer, got ${values.threads}`);
const out = path.resolve(values.out ?? (quick ? path.join(repoRoot, '.cache/bench/BENCHMARKS.quick.md') : path.join(repoRoot, 'BENCHMARKS.md')));
const json = path.resolve(values.json
  ?? (quick || values.out ? out.replace(/\.md$/, '') + '.json' : path.join(repoRoot, 'benchmarks', 'results.json')));
const workDir = path.resolve(values['work-dir'] ?? path.join(repoRoot, '.cache/bench', quick ? 'models-quick' : 'models'));

const variants = (t: number): SessionExperiment[] => [
  { label: 'default (kept)', threads: t, graphOptimizationLevel: 'all', executionMode: 'sequential' },
  { label: 'extended', threads: t, graphOptimizationLevel: 'extended', executionMode: 'sequential' },
  { label: 'basic', threads: t, graphOptimizationLevel: 'basic', executionMode: 'sequential' },
  { label: 'no graph optimisation', threads: t, graphOptimizationLevel: 'disabled', executionMode: 'sequential' },
  { label: 'parallel execution', threads: t, graphOptimizationLevel: 'all', executionMode: 'parallel' },
  { label: 'one thread', threads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential' },
];

// What `npm run bench` runs, with the flags given, so a reader can repeat the run.
const command = `node --import tsx benchmarks/run.ts${quick ? ' --quick' : ''}${values.reuse ? ' --reuse' : ''}${threads !== 2 ? ` --threads ${threads}` : ''}`
  + (only ? ` --cases ${only.join(',')}` : '');
const vgg16 = { model: 'vgg16', inputSize: 224, targetMacsReduction: 4.93 };
const vggs = { model: 'vggs', inputSize: 224, targetMacsReduction: 4.8 };
const fullPlan: BenchPlan = quick
  ? {
    mode: 'quick',
    command,
    cases: [{ model: 'resnet18', inputSize: 64, rule: 'budget', targetMacsReduction: 2 }],
    rules: { model: 'resnet18', inputSize: 64, targetMacsReduction: 2 },
    experiments: { on: [{ model: 'resnet18', inputSize: 64, targetMacsReduction: 2 }], variants: variants(threads).slice(0, 2) },
    profile: { on: [{ model: 'resnet18', inputSize: 64, targetMacsReduction: 2 }] },
  }
  : {
    mode: 'full',
    command,
    // MACs reductions and speed-ups: Kim et al., ICLR 2016, Tables 1 and 2.
    cases: [
      { model: 'alexnet', inputSize: 224, rule: 'budget', targetMacsReduction: 2.67, paper: { macsReduction: 2.67, galaxyS6: 2.72, titanX: 1.81 } },
      { model: 'vggs', inputSize: 224, rule: 'budget', targetMacsReduction: 4.8, paper: { macsReduction: 4.8, galaxyS6: 3.68, titanX: 2.01 } },
      { model: 'vgg16', inputSize: 224, rule: 'budget', targetMacsReduction: 4.93, paper: { macsReduction: 4.93, galaxyS6: 3.34, titanX: 2.33 } },
      { model: 'googlenet', inputSize: 224, rule: 'budget', targetMacsReduction: 2.06, paper: { macsReduction: 2.06, galaxyS6: 1.42, titanX: 1.23 } },
      { model: 'resnet50', inputSize: 224, rule: 'budget', targetMacsReduction: 2 },
      { model: 'resnet50', inputSize: 224, rule: 'budget', targetMacsReduction: 3 },
      // The latency rule through the worker's loop (structure per layer chosen by the clock), asked for the
      // time the budget rows' MACs reductions promise.
      { model: 'vgg16', inputSize: 224, rule: 'latency', targetLatency: 0.2028 },
      { model: 'resnet50', inputSize: 224, rule: 'latency', targetLatency: 0.5 },
    ],
    rules: { model: 'alexnet', inputSize: 224, targetMacsReduction: 2.67 },
    // VGG-16 is the issue's headline case; VGG-S (the same family) stands in if VGG-16 does not compress.
    experiments: { on: [vgg16, vggs], variants: variants(threads) },
    profile: { on: [vgg16, vggs] },
  };

const plan: BenchPlan = only
  ? (() => {
    const cases = fullPlan.cases.filter((c) => only.includes(caseLabel(c)));
    const unknown = only.filter((label) => !fullPlan.cases.some((c) => caseLabel(c) === label));
    if (unknown.length > 0) throw new Error(`--cases: no case labelled ${unknown.join(', ')}; the plan has ${fullPlan.cases.map(caseLabel).join(', ')}`);
    return { ...fullPlan, cases, rules: null, experiments: null, profile: null };
  })()
  : fullPlan;

const settings = {
  python: values.python,
  repoRoot,
  workDir,
  baseEnv: process.env,
  threads,
  batch: quick ? 2 : 8,
  runs: 20,
  warmup: quick ? 1 : 3,
  seed: 2016,
  // The quick run reuses the engine tests' cached static-batch export; the full run needs batch 8.
  dynamicBatch: !quick,
  reuseCompressed: values.reuse,
  log: (line: string) => process.stderr.write(`${line}\n`),
};
const results: BenchResults = values['from-json']
  ? JSON.parse(await readFile(values['from-json'], 'utf8')) as BenchResults
  : await runBenchmarks(settings, plan);
await mkdir(path.dirname(out), { recursive: true });
// Recorded paths are the repository's relative ones: the files are committed, the checkout's location is not theirs.
const repoRelative = (text: string) => text.replaceAll(repoRoot + path.sep, '');
await writeFile(out, repoRelative(renderMarkdown(results)) + (await keptSections(out)));
// Per-node MAC lists would make the file hundreds of kilobytes; the totals and timings stay.
const withoutPerNode = (key: string, value: unknown) =>
  (key === 'perNode' ? undefined : typeof value === 'string' ? repoRelative(value) : value);
if (!values['from-json']) await writeFile(json, JSON.stringify(results, withoutPerNode, 2));
await writeLayerPlot(results);
if (!quick && !values['from-json']) await (only ? measureVggThreads(results) : measureIssue11(results));
process.stderr.write(`[bench] wrote ${out}\n`);

/**
 * Sections other scripts own (load, compression speed, accuracy) sit between `<!-- NAME:begin -->` and
 * `<!-- NAME:end -->` markers; a rerun of this harness keeps them as they are.
 */
async function keptSections(file: string): Promise<string> {
  const previous = await readFile(file, 'utf8').catch(() => '');
  const sections = previous.match(/<!-- ([\w-]+):begin -->[\s\S]*?<!-- \1:end -->/g) ?? [];
  return sections.map((section) => `\n${section}\n`).join('');
}

/** The per-layer profile as an SVG beside the markdown, and a section that shows it. */
async function writeLayerPlot(r: BenchResults): Promise<void> {
  const profile = r.profile?.profile;
  if (!profile || !r.profile?.on || profile.rows.length === 0) return;
  const on = r.profile.on;
  const name = `layer-profile-${on.model}-${on.inputSize}.svg`;
  const svgPath = path.join(path.dirname(out), quick ? '' : 'benchmarks', name);
  await mkdir(path.dirname(svgPath), { recursive: true });
  await writeFile(svgPath, layerProfileSvg(profile, `${on.model} at ${on.inputSize}: per-layer MACs reduction vs measured speed-up `
    + `(${profile.threads} thread(s))`));
  const below = profile.rows.filter((row) => row.efficiency < 0.5).map((row) => row.layer);
  await replaceSection(out, 'layer-plot', [
    `## Per-layer profile plot: ${on.model} at ${on.inputSize}`,
    '',
    `![MACs reduction against measured speed-up per rewritten layer](${path.relative(path.dirname(out), svgPath)})`,
    '',
    `Made by \`${r.command}\` from the per-layer profile table above (${profile.threads} thread(s), ${profile.runs} interleaved runs). `
      + 'One point per rewritten layer; on the dashed line time fell as much as MACs did. '
      + `${below.length} of ${profile.rows.length} layers lie below half of it${below.length ? `: ${below.join(', ')}` : ''}.`,
  ].join('\n'));
}

/** Issue 11's tables: speed against rank multiple, and VGG-16 at 1 and 2 threads with onnxruntime's profiler. */
async function measureIssue11(r: BenchResults): Promise<void> {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const alignment = await measureAlignment({
    python: values.python, workDir: path.join(workDir, 'alignment'), threads: [1, 2], runs: 20, warmup: 3,
    command: 'node --import tsx benchmarks/alignment.ts (run by npm run bench)', log,
  });
  await writeFile(path.join(repoRoot, 'benchmarks', 'alignment.json'), JSON.stringify(alignment, null, 2));
  await replaceSection(out, 'alignment', renderAlignment(alignment));
  const vgg = await measureVggThreads(r);
  if (!vgg) return;
  // The engine-side tables: HOOI sweeps on this VGG-16 plan's Tucker-2 layers, and the FC eigensolvers.
  const engineEnv = { ...process.env, PYTHONPATH: [path.join(repoRoot, 'engine'), path.join(repoRoot, 'engine', 'tests')].join(path.delimiter) };
  await execFileAsync(values.python, [path.join(repoRoot, 'benchmarks', 'compress_speed_hooi.py'), '--model', vgg.originalPath,
    '--plan', vgg.compression.plan, '--out', out], { env: engineEnv, maxBuffer: 16 * 1024 * 1024 });
  await execFileAsync(values.python, [path.join(repoRoot, 'benchmarks', 'compress_speed_fc.py'), '--out', out],
    { env: { ...engineEnv, OMP_NUM_THREADS: '1' }, maxBuffer: 16 * 1024 * 1024 });
}

/** VGG-16 (budget case) at 1 and 2 threads with onnxruntime's profiler; the case, or null when it did not compress. */
async function measureVggThreads(r: BenchResults) {
  const log = (line: string) => process.stderr.write(`${line}\n`);
  const vgg = r.cases.find((c) => c.benchCase.model === 'vgg16' && c.benchCase.rule === 'budget' && c.compression.exitCode === 0);
  if (!vgg) return null;
  const macs = vgg.measurement?.table1.macs.ratio ?? null;
  const threadResults = await measureThreads({
    label: caseLabelOf(vgg.benchCase), original: vgg.originalPath, compressed: vgg.compression.output, threads: [1, 2],
    runs: 20, warmup: 3, workDir: path.join(workDir, 'threads'), macsReduction: macs, log,
    command: `node --import tsx benchmarks/threads.ts (run by ${command} on the budget case's models)`,
  });
  const threadsJson = only ? out.replace(/\.md$/, '') + '.threads.json' : path.join(repoRoot, 'benchmarks', 'threads.json');
  await writeFile(threadsJson, JSON.stringify(threadResults, null, 2));
  await replaceSection(out, 'threads', renderThreads(threadResults));
  return vgg;
}

function caseLabelOf(c: { model: string; inputSize: number; targetMacsReduction?: number }): string {
  return `${c.model}-${c.inputSize}${c.targetMacsReduction ? ` at ${c.targetMacsReduction}× fewer MACs` : ''}`;
}
