// Dependency failures (issue 6, item 3) on throwaway instances, so the machine's shared Redis and
// PostgreSQL are never touched: Redis restarted (losing every key) in the middle of a fine-tuning job, and
// PostgreSQL restarted between two API calls. The API runs in-process on loopback, the worker as the real
// `src/worker.ts` process; both must reconnect by themselves.
import assert from 'node:assert/strict';
import { access, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ThrowawayPostgres } from './fault-support/postgres.js';
import { ThrowawayRedis } from './fault-support/redis.js';
import { Scenario, tinyDataset } from './fault-support/scenario.js';
import { waitUntil } from './fault-support/wait.js';
import { tinyCnn } from './worker-fixtures.js';

const JOB_TIMEOUT_MS = 80_000;
const RECOVERY_TIMEOUT_MS = 30_000;
const QUICK_JOB = { rule: 'ratio', ratio: 0.5 };

async function exists(file: string): Promise<boolean> {
  return access(file).then(
    () => true,
    () => false,
  );
}

describe('Redis restarted mid-job', { timeout: 180_000 }, () => {
  let redis: ThrowawayRedis | undefined;
  let s: Scenario | undefined;
  let fixtureDir: string;

  before(async () => {
    fixtureDir = await mkdtemp(path.join(os.tmpdir(), 'tuckerize-fault-fixtures-'));
  });

  after(async () => {
    // The scenario's cleanup deletes its Redis keys: Redis must be up for it, even if a test left it down.
    if (redis && !redis.running) await redis.start();
    await s?.close();
    await redis?.destroy();
    await rm(fixtureDir, { recursive: true, force: true });
  });

  it('the worker and the API reconnect; the running job and a new one complete', async (t) => {
    redis = await ThrowawayRedis.create();
    s = await Scenario.create({ redisUrl: redis.url });
    await s.startApi();
    const modelId = await s.upload('models', await tinyCnn());
    const datasetId = await s.upload('datasets', await tinyDataset(fixtureDir));
    const worker = await s.startWorker('worker');

    const jobId = await s.createJob({ modelId, datasetId, options: { ...QUICK_JOB, finetune: { steps: 400, batchSize: 16 } } });
    await waitUntil(
      `job ${jobId} to reach fine-tuning`,
      async () => (await s!.prisma.job.findUniqueOrThrow({ where: { id: jobId } })).stage === 'finetune',
      { timeoutMs: 60_000 },
    );

    // Killed, not shut down: no chance to save; and it keeps nothing on disk, so every BullMQ key is gone.
    await redis.restart();
    const ready = await waitUntil(
      'the API to be ready again after the Redis restart',
      async () => {
        const res = await s!.http('GET', '/readyz');
        return res.status === 200 ? res : false;
      },
      { timeoutMs: RECOVERY_TIMEOUT_MS, intervalMs: 250 },
    );
    assert.equal(ready.body.status, 'ready');

    assert.equal(await s.waitForJobEnd(jobId, JOB_TIMEOUT_MS), 'succeeded');
    await s.assertSucceededWithOneArtifact(jobId);
    assert.ok(worker.alive, `the worker survived the Redis restart:\n${s.workerLogs()}`);

    // The API enqueues again and the worker's blocking connection takes new work.
    const second = await s.createJob({ modelId, options: QUICK_JOB });
    assert.equal(await s.waitForJobEnd(second, JOB_TIMEOUT_MS), 'succeeded');
    await s.assertSucceededWithOneArtifact(second);

    // A job that succeeded cleans up after itself, whatever Redis did meanwhile.
    const retries = await s.prisma.jobEvent.findMany({ where: { jobId, type: 'retry' } });
    assert.deepEqual(
      retries.map((r) => r.data),
      [],
      `a succeeded job must not record a retry:\n${await s.jobTrace(jobId)}`,
    );
    assert.equal(await exists(s.jobDir(jobId)), false, `job dir of ${jobId} removed after success`);
    t.diagnostic(`readyz answered 200 again ${ready.ms} ms into its first successful probe`);
    await worker.stop();
  });
});

describe('PostgreSQL restarted between two API calls', { timeout: 180_000 }, () => {
  let cluster: ThrowawayPostgres | undefined;
  let s: Scenario | undefined;

  after(async () => {
    if (cluster && !cluster.running) await cluster.start().catch(() => undefined);
    await s?.close();
    await cluster?.destroy();
  });

  it('answers 503 fast while it is down, /readyz names postgres, and recovers by itself', async (t) => {
    cluster = await ThrowawayPostgres.create();
    s = await Scenario.create({ postgres: cluster });
    await s.startApi();
    const modelId = await s.upload('models', await tinyCnn());
    const worker = await s.startWorker('worker');

    const before = await s.createJob({ modelId, options: QUICK_JOB });
    assert.equal(await s.waitForJobEnd(before, JOB_TIMEOUT_MS), 'succeeded');
    assert.equal((await s.http('GET', `/v1/jobs/${before}`)).status, 200);

    await cluster.stop('fast');
    const read = await s.http('GET', `/v1/jobs/${before}`);
    const create = await s.http('POST', '/v1/jobs', { modelId, options: QUICK_JOB });
    const readyz = await s.http('GET', '/readyz');
    for (const [what, res] of [['GET /v1/jobs/:id', read], ['POST /v1/jobs', create], ['GET /readyz', readyz]] as const) {
      assert.equal(res.status, 503, `${what} while PostgreSQL is down: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.status, 503, `${what}: problem+json body`);
      assert.equal(typeof res.body.detail, 'string');
    }
    assert.match(String(readyz.body.detail), /postgres is down/, 'readyz names the dependency that is down');
    assert.doesNotMatch(String(readyz.body.detail), /redis is down/, 'and only that one');
    t.diagnostic(`503 latencies with PostgreSQL down: read ${read.ms} ms, create ${create.ms} ms, readyz ${readyz.ms} ms`);
    assert.ok(worker.alive, `the idle worker survived the outage:\n${s.workerLogs()}`);

    await cluster.start();
    await waitUntil(
      'readyz to answer 200 after PostgreSQL is back',
      async () => (await s!.http('GET', '/readyz')).status === 200,
      { timeoutMs: RECOVERY_TIMEOUT_MS, intervalMs: 250 },
    );
    // Recovered without a restart of the API: the very next calls work, the old pool connections are gone.
    const again = await s.http('GET', `/v1/jobs/${before}`);
    assert.equal(again.status, 200, JSON.stringify(again.body));
    assert.equal(again.body.status, 'succeeded');
    const after = await s.createJob({ modelId, options: QUICK_JOB });
    assert.equal(await s.waitForJobEnd(after, JOB_TIMEOUT_MS), 'succeeded');
    await s.assertSucceededWithOneArtifact(after);
    // The refused POST during the outage created nothing.
    assert.equal(await s.prisma.job.count(), 2);
    await worker.stop();
  });
});
