// Fair scheduling with real worker and engine processes (issue 12, finding 2): with WORKER_CONCURRENCY=2, a
// tenant that queued 20 long jobs does not delay another tenant's short job behind them. The fair dispatcher
// (src/queue/fair.ts) keeps one job per tenant runnable (TENANT_MAX_RUNNING_JOBS=1, the default), so the
// short job takes the second worker slot as soon as it is created.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createTestKey } from './helpers/env.js';
import { Scenario, tinyDataset } from './fault-support/scenario.js';
import { waitUntil } from './fault-support/wait.js';
import { tinyCnn } from './worker-fixtures.js';

/** Long enough to still run when the short job is done (minutes on a loaded 2-core machine); canceled at the end. */
const LONG = { rule: 'ratio', ratio: 0.5, finetune: { steps: 10_000, batchSize: 16 } };
const SHORT = { rule: 'ratio', ratio: 0.5 };

describe('fair scheduling across tenants with real workers', { timeout: 300_000 }, () => {
  let s: Scenario;
  let fixtureDir: string;

  before(async () => {
    fixtureDir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fair-'));
    s = await Scenario.create();
    s.env.WORKER_CONCURRENCY = '2';
    await s.startApi();
  });

  after(async () => {
    await s?.close();
    await rm(fixtureDir, { recursive: true, force: true });
  });

  it("another tenant's short job runs next to the first tenant's running job, not behind its 19 queued ones", async () => {
    const modelA = await s.upload('models', await tinyCnn());
    const datasetA = await s.upload('datasets', await tinyDataset(fixtureDir));
    const longJobs: string[] = [];
    for (let i = 0; i < 20; i += 1) longJobs.push(await s.createJob({ modelId: modelA, datasetId: datasetA, options: LONG }));

    const keyA = s.apiKey;
    s.apiKey = await createTestKey(s.prisma, 'fair-tenant-b');
    const modelB = await s.upload('models', await tinyCnn());
    await s.startWorker('worker');
    await waitUntil("tenant A's first job to run", async () => (await s.prisma.job.count({ where: { id: { in: longJobs }, status: 'running' } })) === 1, {
      timeoutMs: 60_000,
    });

    const shortJob = await s.createJob({ modelId: modelB, options: SHORT });
    assert.equal(await s.waitForJobEnd(shortJob, 120_000), 'succeeded', s.workerLogs());
    const short = await s.prisma.job.findUniqueOrThrow({ where: { id: shortJob } });
    const longs = await s.prisma.job.findMany({ where: { id: { in: longJobs } }, orderBy: { createdAt: 'asc' } });
    const waited = (short.startedAt!.getTime() - short.createdAt.getTime()) / 1000;
    const ran = (short.finishedAt!.getTime() - short.startedAt!.getTime()) / 1000;
    console.log(`short job: waited ${waited.toFixed(1)} s for a worker, ran ${ran.toFixed(1)} s; tenant A: ${longs.filter((j) => j.startedAt).length} of 20 started`);

    // The order, not a timing: while A's first job ran, none of its other 19 started before B's job ended.
    assert.equal(longs[0]?.status, 'running', "A's first job is still running: the short job did not wait for it");
    for (const job of longs.slice(1)) {
      assert.ok(job.startedAt === null || job.startedAt > short.finishedAt!, `A's job ${job.id} ran before B's short job was done`);
    }

    s.apiKey = keyA;
    for (const id of longJobs) await s.http('POST', `/v1/jobs/${id}/cancel`);
    await waitUntil('the worker to drop the canceled jobs', async () => (await s.prisma.job.count({ where: { status: 'running' } })) === 0, { timeoutMs: 60_000 });
  });
});
