// The worker's pure parts: the engine's JSON-lines protocol, exit classification, progress mapping and
// throttling, and the metrics extracted from a report.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { UnrecoverableError } from 'bullmq';
import type { JobProgress } from '../src/queue/index.js';
import {
  BadInputError,
  classifyExit,
  EngineCrashError,
  killStaleEngine,
  lastLine,
  LineSplitter,
  parseEngineLine,
  processGroupAlive,
  recordEngine,
  type EngineExit,
} from '../src/worker/engine.js';
import { metricsFromReport } from '../src/worker/jobs.js';
import { overallProgress, ProgressThrottle, stageWeights, STAGE_ORDER } from '../src/worker/progress.js';

describe('LineSplitter', () => {
  it('keeps a partial line until its newline arrives', () => {
    const s = new LineSplitter();
    assert.deepEqual(s.push('{"event":"pro'), []);
    assert.deepEqual(s.push('gress"}\n{"a":'), ['{"event":"progress"}']);
    assert.deepEqual(s.push('1}\n\n'), ['{"a":1}']);
    assert.deepEqual(s.flush(), []);
  });

  it('strips CR and returns an unterminated last line on flush', () => {
    const s = new LineSplitter();
    assert.deepEqual(s.push('one\r\ntwo'), ['one']);
    assert.deepEqual(s.flush(), ['two']);
  });

  it('cuts a runaway line instead of growing without bound', () => {
    const s = new LineSplitter(10);
    assert.deepEqual(s.push('x'.repeat(25)), ['x'.repeat(25)]);
    assert.deepEqual(s.push('y\n'), ['y']);
  });
});

describe('parseEngineLine', () => {
  it('accepts the three protocol events', () => {
    assert.deepEqual(parseEngineLine('{"event":"progress","stage":"rewrite","done":2,"total":5}'), {
      event: 'progress',
      stage: 'rewrite',
      done: 2,
      total: 5,
    });
    const log = parseEngineLine('{"event":"log","level":"warn","message":"layer fc skipped"}');
    assert.equal(log?.event, 'log');
    const result = parseEngineLine(
      '{"event":"result","artifact":"compressed.onnx","plan":"plan.json","report":"report.json","summary":{"x":1}}',
    );
    assert.equal(result?.event, 'result');
    assert.deepEqual(result?.event === 'result' ? result.summary : null, { x: 1 });
  });

  it('rejects non-JSON, arrays, unknown events and malformed progress', () => {
    assert.equal(parseEngineLine('Warning: something from a library'), null);
    assert.equal(parseEngineLine('{not json'), null);
    assert.equal(parseEngineLine('[1,2]'), null);
    assert.equal(parseEngineLine('{"event":"other"}'), null);
    assert.equal(parseEngineLine('{"event":"progress","stage":"x","done":"1","total":2}'), null);
    assert.equal(parseEngineLine('{"event":"result","report":"r.json"}'), null);
  });

  it('reads the error event of the C2 contract with its field and data, and refuses codes the contract lacks', () => {
    const line = '{"event":"error","code":"target_unreachable","detail":"targetMacs 0.001 is out of reach","field":"targetMacs","data":{"range":[0.02,0.98]}}';
    assert.deepEqual(parseEngineLine(line), {
      event: 'error', code: 'target_unreachable', detail: 'targetMacs 0.001 is out of reach', field: 'targetMacs', data: { range: [0.02, 0.98] },
    });
    assert.equal(parseEngineLine('{"event":"error","code":"made_up","detail":"x"}'), null);
    assert.equal(parseEngineLine('{"event":"error","code":"invalid_model"}'), null);
  });
});

describe('classifyExit', () => {
  const result = { event: 'result' as const, artifact: 'compressed.onnx', plan: 'plan.json', report: 'report.json', summary: {} };
  const exit = (over: Partial<EngineExit>): EngineExit => ({ code: 0, signal: null, stderrTail: '', result, ...over });

  it('succeeds only with exit 0 and a result line', () => {
    assert.equal(classifyExit(exit({})), null);
    assert.ok(classifyExit(exit({ result: null })) instanceof EngineCrashError);
  });

  it('prefers the error event to stderr, and keeps it on the error', () => {
    const event = { event: 'error' as const, code: 'invalid_option' as const, detail: 'finetune.lr must be > 0 (in /srv/jobs/x/job.json)', field: 'finetune.lr' };
    const err = classifyExit(exit({ code: 2, result: null, error: event, stderrTail: 'tuckerize: error: something else' }));
    assert.ok(err instanceof BadInputError);
    assert.equal(err.message, 'finetune.lr must be > 0 (in job.json)');
    assert.equal(err.event?.field, 'finetune.lr');
  });

  it('maps exit 2 to an unrecoverable error carrying the last stderr line', () => {
    const err = classifyExit(exit({ code: 2, stderrTail: 'noise\nerror: node conv1 (Conv): weight is 5-D; use 4-D\n\n' }));
    assert.ok(err instanceof BadInputError);
    assert.ok(err instanceof UnrecoverableError, 'BullMQ must not retry bad input');
    assert.equal(err.message, 'error: node conv1 (Conv): weight is 5-D; use 4-D');
  });

  it('maps exit 1 and signals to retryable crashes', () => {
    const crash = classifyExit(exit({ code: 1, stderrTail: 'Traceback...\nRuntimeError: boom' }));
    assert.ok(crash instanceof EngineCrashError);
    assert.ok(!(crash instanceof UnrecoverableError));
    assert.match(crash.message, /exited with code 1: RuntimeError: boom/);
    const killed = classifyExit(exit({ code: null, signal: 'SIGKILL', result: null }));
    assert.ok(killed instanceof EngineCrashError);
    assert.match(killed.message, /killed by SIGKILL/);
  });

  it('lastLine ignores trailing blank lines', () => {
    assert.equal(lastLine('a\n b \n\n'), 'b');
    assert.equal(lastLine(''), '');
  });
});

describe('overallProgress', () => {
  for (const withFinetune of [false, true]) {
    it(`is monotonic over the stage order (finetune=${withFinetune}) and ends at 1`, () => {
      const w = stageWeights(withFinetune);
      let previous = -1;
      for (const stage of STAGE_ORDER) {
        if (w[stage] === undefined) continue;
        for (const done of [0, 1, 2]) {
          const p = overallProgress(w, stage, done, 2);
          assert.ok(p !== null && p >= previous, `${stage} ${done}/2 went backwards`);
          previous = p;
        }
      }
      assert.equal(previous, 1);
    });
  }

  it('ignores unknown stages and clamps done > total', () => {
    const w = stageWeights(false);
    assert.equal(overallProgress(w, 'mystery', 1, 1), null);
    assert.equal(overallProgress(w, 'finetune', 1, 1), null, 'no fine-tuning weight without fine-tuning');
    assert.equal(overallProgress(w, 'rewrite', 9, 3), overallProgress(w, 'rewrite', 3, 3));
  });
});

describe('ProgressThrottle', () => {
  const p = (stage: string, done: number): JobProgress => ({ stage, done, total: 10, percent: done });

  it('sends stage changes at once, after the previous stage\'s last figure, coalesces bursts and delivers the last update', async () => {
    const sent: JobProgress[] = [];
    let clock = 1000;
    const throttle = new ProgressThrottle(
      async (x) => {
        sent.push(x);
      },
      (err) => assert.fail(String(err)),
      250,
      () => clock,
    );
    throttle.push(p('analyze', 1));
    throttle.push(p('analyze', 2)); // within the interval: held
    throttle.push(p('analyze', 3)); // replaces the held one
    throttle.push(p('plan', 1)); // stage change: the held figure (the stage's last) goes first, then this
    clock += 300;
    throttle.push(p('plan', 2)); // interval passed: sent
    throttle.push(p('plan', 3)); // held
    await throttle.flush();
    assert.deepEqual(
      sent.map((x) => `${x.stage}:${x.done}`),
      ['analyze:1', 'analyze:3', 'plan:1', 'plan:2', 'plan:3'],
    );
  });

  it('reports sink errors and keeps going', async () => {
    const errors: unknown[] = [];
    const sent: number[] = [];
    const throttle = new ProgressThrottle(
      async (x) => {
        if (x.done === 1) throw new Error('db down');
        sent.push(x.done);
      },
      (err) => errors.push(err),
    );
    throttle.push(p('a', 1));
    throttle.push(p('b', 2));
    await throttle.flush();
    assert.equal(errors.length, 1);
    assert.deepEqual(sent, [2]);
  });
});

describe('metrics', () => {
  it('extracts totals, accuracy, fine-tuning and timings from a report', () => {
    const rows = metricsFromReport({
      totals: { params: { before: 1000, after: 250, ratio: 0.25 }, macs: { before: 9e6, after: 3e6, ratio: 1 / 3 } },
      accuracy: { labels: true, original: { top1: 0.93 }, compressed: { top1: 0.5 }, finetuned: { top1: 0.92 } },
      finetune: { epochs: 1, steps: 100, wallSeconds: 12.5, imagesPerSecond: 512, history: [] },
      timings: { analyze: 0.5, rewrite: 1.25 },
    });
    const byName = Object.fromEntries(rows.map((r) => [r.name, r.value]));
    assert.equal(byName.params_reduction, 4, 'reductions are before/after whatever the engine calls ratio');
    assert.equal(byName.macs_reduction, 3);
    assert.equal(byName.macs_after, 3e6);
    assert.equal(byName.top1_finetuned, 0.92);
    assert.equal(byName.finetune_images_per_second, 512);
    assert.equal(byName.stage_seconds_rewrite, 1.25);
    assert.equal(byName.top5_original, undefined, 'absent values are not invented');
  });
});

describe('stale engine guard', () => {
  it('kills a leftover engine group of the same job file and leaves other processes alone', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-stale-'));
    const jobFile = path.join(dir, 'job.json');
    const pidFile = path.join(dir, 'engine.pid');
    // A detached process whose command line looks like an engine's (`-m tuckerize run <jobFile>`), with a
    // child in its group, as an engine left behind by a worker that was SIGKILLed.
    const script = 'import subprocess, sys, time; subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]); time.sleep(60)';
    const leftover = spawn('/usr/bin/python3', ['-c', script, 'tuckerize', 'run', jobFile], { detached: true, stdio: 'ignore' });
    const pgid = leftover.pid!;
    try {
      await recordEngine(pidFile, pgid, jobFile);
      assert.equal(await killStaleEngine(pidFile, path.join(dir, 'other-job.json')), null, 'another job file: not ours to kill');
      assert.ok(processGroupAlive(pgid));
      const exited = once(leftover, 'exit');
      assert.equal(await killStaleEngine(pidFile, jobFile), pgid);
      await exited;
      assert.equal(processGroupAlive(pgid), false, 'the whole group is gone, child included');
      assert.equal(await killStaleEngine(pidFile, jobFile), null, 'nothing left to kill');
      assert.equal(await killStaleEngine(path.join(dir, 'missing.pid'), jobFile), null);
    } finally {
      if (processGroupAlive(pgid)) process.kill(-pgid, 'SIGKILL');
      await rm(dir, { recursive: true, force: true });
    }
  });
});
