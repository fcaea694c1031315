// The TypeScript ↔ engine contract: the generated files match their sources, the constants both sides
// hold agree, and every job the API accepts is one the engine accepts (checked by the engine itself).
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { JOB_STAGES } from '../src/api/schemas.js';
import {
  ENGINE_ERROR_CODES,
  ENGINE_EXIT,
  ENGINE_STAGES,
  LATENCY_MIN_SPEEDUP,
  LATENCY_TABLE_FILE,
  MAX_OPSET,
  MIN_OPSET,
} from '../src/contract/engine.js';
import { findEngineError, reachableTargets } from '../src/contract/engine-events.js';
import {
  ENGINE_CONSTANTS_FILE,
  ENGINE_PYTHON,
  JOB_OPTIONS_SCHEMA_FILE,
  readEngineConstants,
  renderEngineConstants,
  renderJobOptionsSchema,
  REPO_ROOT,
} from '../src/contract/generate.js';
import { CLIENT_RULE_FIELDS, ENGINE_RULE_FIELDS, JobOptionsSchema, RANK_RULES, ruleViolations } from '../src/contract/job-options.js';
import * as security from '../src/security/index.js';
import * as latency from '../src/worker/latency.js';

const REGENERATE = 'run `npm run contract` and commit the result';

test('engine/tuckerize/schema/job_options.json is the export of src/contract/job-options.ts', () => {
  assert.equal(readFileSync(JOB_OPTIONS_SCHEMA_FILE, 'utf8'), renderJobOptionsSchema(), REGENERATE);
});

test("src/contract/engine.ts holds the engine's constants", () => {
  const constants = readEngineConstants();
  assert.equal(readFileSync(ENGINE_CONSTANTS_FILE, 'utf8'), renderEngineConstants(constants), REGENERATE);
  assert.deepEqual([...ENGINE_STAGES], constants.stages);
  assert.equal(LATENCY_MIN_SPEEDUP, constants.latencyMinSpeedup);
  assert.deepEqual(ENGINE_EXIT, constants.exit);
  assert.deepEqual(Object.keys(ENGINE_ERROR_CODES), Object.keys(constants.errorCodes));
});

test('the service and the engine agree on every constant they share', () => {
  // Copies outside src/contract/ (until their modules import it from there).
  assert.equal(latency.LATENCY_MIN_SPEEDUP, LATENCY_MIN_SPEEDUP, 'src/worker/latency.ts LATENCY_MIN_SPEEDUP');
  assert.equal(latency.LATENCY_TABLE_FILE, LATENCY_TABLE_FILE, 'src/worker/latency.ts LATENCY_TABLE_FILE');
  assert.equal(security.MIN_OPSET, MIN_OPSET, 'src/security MIN_OPSET');
  assert.equal(security.MAX_OPSET, MAX_OPSET, 'src/security MAX_OPSET');
  // The job's stage list holds the engine's stages in the engine's order.
  const positions = ENGINE_STAGES.map((stage) => (JOB_STAGES as readonly string[]).indexOf(stage));
  assert.ok(positions.every((p) => p >= 0), `JOB_STAGES lacks one of ${ENGINE_STAGES.join(', ')}`);
  assert.deepEqual(positions, [...positions].sort((a, b) => a - b), 'JOB_STAGES orders the engine stages as it runs them');
});

test('the rule tables differ only in what the worker adds for rule=latency', () => {
  for (const rule of RANK_RULES) {
    if (rule === 'latency') continue;
    const client = CLIENT_RULE_FIELDS[rule];
    const engine = ENGINE_RULE_FIELDS[rule];
    assert.deepEqual(engine.required ?? [], client.required ?? [], rule);
    assert.deepEqual(engine.oneOf, client.oneOf, rule);
    assert.deepEqual(engine.forbidden.filter((f) => f !== 'latencyTable'), [...client.forbidden], rule);
  }
});

/** Client options over every rule and every combination of the rule fields, at in-range and edge values. */
function clientOptionCorpus(): Record<string, unknown>[] {
  const fields: Record<string, unknown[]> = {
    ratio: [0.5, 1],
    strength: [0.5],
    targetMacs: [0.5],
    targetParams: [0.25],
    targetLatency: [0.5],
  };
  const names = Object.keys(fields);
  const corpus: Record<string, unknown>[] = [];
  for (const rule of [undefined, ...RANK_RULES]) {
    for (let mask = 0; mask < 1 << names.length; mask++) {
      const chosen = names.filter((_, i) => mask & (1 << i));
      const variants = chosen.reduce<Record<string, unknown>[]>(
        (acc, name) => acc.flatMap((o) => fields[name]!.map((v) => ({ ...o, [name]: v }))),
        [rule === undefined ? {} : { rule }],
      );
      corpus.push(...variants);
    }
  }
  const extras: Record<string, unknown>[] = [
    { roundTo: 256, force: true, inputShape: [1, 3, 224, 224] },
    { finetune: { epochs: 1000, lr: 10, weightDecay: 1, temperature: 100, alpha: 0, batchSize: 4096, clipGradNorm: 1e6 } },
    { finetune: { steps: 1, warmupSteps: 0, distill: false, labels: true, optimizer: 'adamw', maxSamples: 1, evalSamples: 1, checkpointEvery: 1 } },
    { finetune: { clipGradNorm: 0 } },
  ];
  return [...corpus, ...extras];
}

/** What the worker hands the engine for accepted client options (src/worker/latency.ts latencyJobOptions). */
function engineOptions(options: Record<string, unknown>): Record<string, unknown> {
  const parsed = JobOptionsSchema.parse(options) as Record<string, unknown>;
  return parsed.rule === 'latency' ? { ...parsed, targetMacs: 0.4, latencyTable: '/jobs/7/latency-table.json' } : parsed;
}

/** The engine's verdicts (options.validate_options against the JSON Schema), one Python process for all. */
function engineVerdicts(batch: Record<string, unknown>[]): { ok: boolean; field?: string; detail?: string }[] {
  const script = [
    'import json, sys',
    'from tuckerize.errors import EngineInputError',
    'from tuckerize.options import validate_options',
    'out = []',
    'for options in json.load(sys.stdin):',
    '    try:',
    '        validate_options(options)',
    '        out.append({"ok": True})',
    '    except EngineInputError as exc:',
    '        out.append({"ok": False, "field": exc.field, "detail": str(exc)})',
    'print(json.dumps(out))',
  ].join('\n');
  const stdout = execFileSync(ENGINE_PYTHON, ['-c', script], {
    input: JSON.stringify(batch),
    encoding: 'utf8',
    env: { ...process.env, PYTHONPATH: path.join(REPO_ROOT, 'engine') },
  });
  return JSON.parse(stdout) as { ok: boolean; field?: string; detail?: string }[];
}

test('every option set the API accepts, the engine accepts; every one it refuses names a field', () => {
  const corpus = clientOptionCorpus();
  const accepted = corpus.filter((o) => JobOptionsSchema.safeParse(o).success);
  const refused = corpus.filter((o) => !JobOptionsSchema.safeParse(o).success);
  assert.ok(accepted.length > 10 && refused.length > 100, `a corpus with both verdicts (${accepted.length}/${refused.length})`);
  const verdicts = engineVerdicts(accepted.map(engineOptions));
  verdicts.forEach((verdict, i) => {
    assert.ok(verdict.ok, `the API accepts ${JSON.stringify(accepted[i])} but the engine refuses it: ${verdict.detail}`);
  });
  for (const options of refused) {
    const issues = JobOptionsSchema.safeParse(options).error!.issues;
    assert.ok(issues.every((issue) => issue.path.length > 0), `${JSON.stringify(options)}: ${JSON.stringify(issues)}`);
  }
});

test('the engine refuses what the API would refuse, naming the same field', () => {
  // The API's rule violations, sent to the engine as they are (a worker that skipped the checks).
  const corpus = clientOptionCorpus().filter((o) => o.rule !== 'latency' && ruleViolations(o, CLIENT_RULE_FIELDS).length > 0);
  assert.ok(corpus.length > 20);
  const verdicts = engineVerdicts(corpus);
  verdicts.forEach((verdict, i) => {
    const options = corpus[i]!;
    assert.equal(verdict.ok, false, `the engine accepts ${JSON.stringify(options)}`);
    const fields = ruleViolations(options, CLIENT_RULE_FIELDS).map((v) => v.field);
    assert.ok(fields.includes(verdict.field as never), `${JSON.stringify(options)}: engine names ${verdict.field}, API ${fields.join(', ')}`);
  });
  const limits = engineVerdicts([{ finetune: { clipGradNorm: 1e9 } }, { roundTo: 0 }, { finetune: { lr: 0 } }]);
  assert.deepEqual(limits.map((v) => v.field), ['finetune.clipGradNorm', 'roundTo', 'finetune.lr']);
  for (const options of [{ finetune: { clipGradNorm: 1e9 } }, { roundTo: 0 }, { finetune: { lr: 0 } }]) {
    assert.equal(JobOptionsSchema.safeParse(options).success, false, JSON.stringify(options));
  }
});

test("the engine's error event parses with the contract's schema, from every subcommand the worker runs", () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tuckerize-contract-'));
  try {
    const run = (args: string[]) =>
      spawnSync(ENGINE_PYTHON, ['-m', 'tuckerize', ...args], {
        encoding: 'utf8',
        env: { ...process.env, PYTHONPATH: path.join(REPO_ROOT, 'engine') },
      });
    const job = path.join(dir, 'job.json');
    writeFileSync(job, JSON.stringify({
      jobId: 'j', model: path.join(dir, 'm.onnx'), outputDir: path.join(dir, 'out'), workDir: path.join(dir, 'work'),
      options: { rule: 'ratio', ratio: 2 },
    }));
    const missing = path.join(dir, 'missing.onnx');
    const cases: [string[], string, string | undefined][] = [
      [['run', job], 'invalid_option', 'ratio'],
      [['analyze', missing, '--json'], 'invalid_model', undefined],
      [['candidates', missing, '-o', path.join(dir, 'c')], 'invalid_model', undefined],
      [['analyze'], 'usage', undefined],
    ];
    for (const [args, code, field] of cases) {
      const proc = run(args);
      assert.equal(proc.status, ENGINE_EXIT.input, `${args[0]}: ${proc.stderr}`);
      const event = findEngineError(proc.stdout);
      assert.ok(event, `${args[0]} printed an error event: ${proc.stdout}`);
      assert.equal(event.code, code);
      assert.equal(event.field, field);
      assert.ok(!event.detail.includes(dir), `no server path in ${event.detail}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('findEngineError takes the last error line and ignores other output', () => {
  const error = { event: 'error', code: 'invalid_dataset', detail: 'the dataset has NaN pixels' };
  const stdout = ['{"event":"progress","stage":"analyze","done":0,"total":1}', 'not json', JSON.stringify(error), ''].join('\n');
  assert.deepEqual(findEngineError(stdout), error);
  assert.equal(findEngineError('{"event":"error","code":"no_such_code","detail":"x"}\n'), null);
  assert.equal(findEngineError(''), null);
});

test('an unreachable budget carries the reachable targets as numbers', () => {
  const event = findEngineError(
    JSON.stringify({ event: 'error', code: 'target_unreachable', detail: 'x', field: 'targetMacs', data: { nearest: [0.31, 0.36] } }),
  )!;
  assert.deepEqual(reachableTargets(event), { nearest: [0.31, 0.36] });
  assert.equal(reachableTargets({ event: 'error', code: 'invalid_option', detail: 'x' }), null);
  assert.equal(reachableTargets({ event: 'error', code: 'target_unreachable', detail: 'x', data: { range: 'wide' } }), null);
});
