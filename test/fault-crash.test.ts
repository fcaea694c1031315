// Crash safety with real processes (issue 6, item 2): a worker SIGKILLed mid-fine-tune hands its job to
// another worker through BullMQ's stall detection and the engine resumes from its checkpoint; an engine
// SIGKILLed mid-fine-tune is retried by the same worker and resumes too; a worker sent SIGTERM mid-job
// finishes that job before it exits. Each ends `succeeded` with exactly one artifact row and one stored
// object, and leaves no process behind.
import assert from 'node:assert/strict';
import { access, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { processGroupAlive } from '../src/worker/engine.js';
import { engineProcesses } from './fault-support/processes.js';
import { bullState, Scenario, tinyDataset } from './fault-support/scenario.js';
import { waitUntil } from './fault-support/wait.js';
import { tinyCnn } from './worker-fixtures.js';

/** Short enough that the handover takes seconds, long enough that a busy 2-core machine renews in time. */
const STALL = { lockDurationMs: 5000, stalledIntervalMs: 2000 };
/** ~28 steps per epoch (512 samples, 10 % held out, batch 16): a checkpoint every ~28 steps. */
const FINETUNE = { steps: 500, batchSize: 16 };
const JOB_TIMEOUT_MS = 80_000;

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

/** Steps the engine said it resumed from ("fine-tuning resumed from step N of M"). */
function resumedSteps(logs: string[]): number[] {
  return logs.flatMap((m) => {
    const match = /fine-tuning resumed from step (\d+) of (\d+)/.exec(m);
    return match ? [Number(match[1])] : [];
  });
}

describe('crash safety with real worker and engine processes', { timeout: 240_000 }, () => {
  let s: Scenario;
  let fixtureDir: string;
  let modelId: string;
  let datasetId: string;

  before(async () => {
    fixtureDir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fault-fixtures-'));
    s = await Scenario.create();
    await s.startApi();
    modelId = await s.upload('models', await tinyCnn());
    datasetId = await s.upload('datasets', await tinyDataset(fixtureDir));
  });

  after(async () => {
    await s?.close();
    await rm(fixtureDir, { recursive: true, force: true });
  });

  /** Waits until the job fine-tunes and its first checkpoint is on disk; returns the engine's pgid. */
  async function waitForCheckpoint(jobId: string): Promise<number> {
    const checkpoint = path.join(s.jobDir(jobId), 'work', 'finetune.ckpt');
    await waitUntil(
      `job ${jobId} to fine-tune with a checkpoint in its workDir`,
      async () => {
        const row = await s.prisma.job.findUniqueOrThrow({ where: { id: jobId }, select: { stage: true, status: true } });
        if (row.status !== 'running' && row.status !== 'queued') throw new Error(`job ended early: ${row.status}\n${await s.jobTrace(jobId)}`);
        return row.stage === 'finetune' && (await exists(checkpoint));
      },
      { timeoutMs: 60_000, intervalMs: 100 },
    );
    const pgids = await s.enginePgids(jobId);
    assert.ok(pgids.length > 0, 'the worker recorded the engine it started');
    return pgids[pgids.length - 1]!;
  }

  it('SIGKILL of the worker mid-fine-tune: another worker takes the job over and the engine resumes', async () => {
    const first = await s.startWorker('worker-1', STALL);
    const jobId = await s.createJob({ modelId, datasetId, options: { rule: 'ratio', ratio: 0.5, finetune: FINETUNE } });
    const orphanPgid = await waitForCheckpoint(jobId);
    const engines = await engineProcesses(s.config.storageDir);
    assert.ok(
      engines.some((e) => e.pgid === orphanPgid && e.jobFile.includes(jobId)),
      `engine group ${orphanPgid} of job ${jobId} is running (found ${JSON.stringify(engines)})`,
    );

    await first.kill('SIGKILL');
    const second = await s.startWorker('worker-2', STALL);

    assert.equal(await s.waitForJobEnd(jobId, JOB_TIMEOUT_MS), 'succeeded');
    await s.assertSucceededWithOneArtifact(jobId);

    const row = await s.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
    assert.ok(row.workerId?.includes(`:${second.pid}:`), `worker-2 (pid ${second.pid}) finished the job, not ${row.workerId}`);
    assert.equal(row.attempts, 2, 'one claim by each worker');
    const logs = await s.engineLogs(jobId);
    const resumed = resumedSteps(logs);
    assert.equal(resumed.length, 1, `exactly one resume logged:\n${logs.join('\n')}`);
    assert.ok(resumed[0]! > 0, `resumed at step ${resumed[0]} > 0`);
    assert.equal(await bullState(s, jobId), 'completed', 'BullMQ completed the job (not failed, not stuck active)');

    // The killed worker's engine lost its stdout reader: it must not outlive its worker for long.
    await waitUntil(`the orphaned engine group ${orphanPgid} to exit`, () => !processGroupAlive(orphanPgid), { timeoutMs: 30_000 });
    assert.equal(await exists(s.jobDir(jobId)), false, 'job dir removed after success');
    await second.stop();
    assert.equal(second.exitStatus?.code, 0, `worker-2 drained and exited 0:\n${second.output().slice(-2000)}`);
  });

  it('SIGKILL of the engine mid-fine-tune: the job is retried and resumes from the checkpoint', async () => {
    const worker = await s.startWorker('worker-3');
    const jobId = await s.createJob({ modelId, datasetId, options: { rule: 'ratio', ratio: 0.5, finetune: FINETUNE } });
    await waitForCheckpoint(jobId);
    // Found the way an operator would: the engine processes running this job's job.json.
    const engines = (await engineProcesses(s.config.storageDir)).filter((e) => e.jobFile.includes(jobId));
    assert.equal(new Set(engines.map((e) => e.pgid)).size, 1, `one engine group for the job: ${JSON.stringify(engines)}`);
    const pgid = engines[0]!.pgid;
    process.kill(-pgid, 'SIGKILL');

    assert.equal(await s.waitForJobEnd(jobId, JOB_TIMEOUT_MS), 'succeeded');
    await s.assertSucceededWithOneArtifact(jobId);
    assert.ok(worker.alive, 'the worker survived its engine');

    const row = await s.prisma.job.findUniqueOrThrow({ where: { id: jobId }, include: { events: { orderBy: { id: 'asc' } } } });
    assert.equal(row.attempts, 2);
    const retry = row.events.find((e) => e.type === 'retry');
    assert.ok(retry, 'a retry event was recorded');
    const retryData = retry.data as { category: string; message: string };
    assert.equal(retryData.category, 'engine_crash');
    assert.match(retryData.message, /SIGKILL/);
    const resumed = resumedSteps(await s.engineLogs(jobId));
    assert.equal(resumed.length, 1);
    assert.ok(resumed[0]! > 0, `resumed at step ${resumed[0]} > 0`);
    assert.equal(processGroupAlive(pgid), false, 'the killed engine group is gone');
    assert.equal(await bullState(s, jobId), 'completed');
    await worker.stop();
    assert.equal(worker.exitStatus?.code, 0);
  });

  it('SIGTERM mid-job drains: the worker finishes the running job, then exits 0', async () => {
    const worker = await s.startWorker('worker-4');
    const jobId = await s.createJob({ modelId, datasetId, options: { rule: 'ratio', ratio: 0.5, finetune: { steps: 200, batchSize: 16 } } });
    await waitForCheckpoint(jobId);
    const exit = await worker.stop(JOB_TIMEOUT_MS);
    assert.deepEqual(exit, { code: 0, signal: null }, `drained and exited 0:\n${worker.output().slice(-3000)}`);
    const row = await s.prisma.job.findUniqueOrThrow({ where: { id: jobId } });
    assert.equal(row.status, 'succeeded', 'the job finished before the worker exited');
    assert.equal(row.attempts, 1, 'no second attempt: the drain is not a crash');
    await s.assertSucceededWithOneArtifact(jobId);
    assert.deepEqual(await engineProcesses(s.config.storageDir), [], 'no engine left running');
  });
});
