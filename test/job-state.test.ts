// The job state machine against the real PostgreSQL and Redis: guarded transitions, one winner per race,
// terminal hooks inside the transaction, and one job-events message per change.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import type { Job } from '@prisma/client';
import { JobStates, jobEventsChannel, type JobEventMessage } from '../src/jobs/state.js';
import { createTestEnv, type TestEnv } from './helpers/env.js';

let env: TestEnv;
let publisher: Redis;
let subscriber: Redis;
let states: JobStates;
let tenantId: string;
let otherTenantId: string;
let modelId: string;
const messages: JobEventMessage[] = [];

before(async () => {
  env = await createTestEnv();
  publisher = new Redis(env.config.redisUrl);
  subscriber = new Redis(env.config.redisUrl);
  await subscriber.subscribe(jobEventsChannel(env.config.queuePrefix));
  subscriber.on('message', (_channel: string, text: string) => messages.push(JSON.parse(text) as JobEventMessage));
  states = new JobStates({ prisma: env.prisma, publisher, prefix: env.config.queuePrefix });
  tenantId = (await env.prisma.tenant.create({ data: { name: 'acme' } })).id;
  otherTenantId = (await env.prisma.tenant.create({ data: { name: 'globex' } })).id;
  modelId = (
    await env.prisma.onnxModel.create({
      data: { tenantId, name: 'm.onnx', sha256: 'a'.repeat(64), bytes: 1n, storageKey: 'objects/aa/x', opset: 13, inputs: [], outputs: [] },
    })
  ).id;
});
after(async () => {
  subscriber?.disconnect();
  publisher?.disconnect();
  await env?.cleanup();
});

const newJob = () => states.create({ tenantId, modelId, options: {} });

async function messagesOf(jobId: string, count: number): Promise<JobEventMessage[]> {
  for (let i = 0; i < 200; i++) {
    const mine = messages.filter((m) => m.jobId === jobId);
    if (mine.length >= count) return mine;
    await sleep(10);
  }
  return messages.filter((m) => m.jobId === jobId);
}

describe('JobStates', () => {
  test('a job goes queued → running → succeeded, each step an event row and a job-events message', async () => {
    const job = await newJob();
    assert.equal(job.status, 'queued');
    const claimed = await states.claim(job.id, { workerId: 'w1', attempt: 1 });
    assert.equal(claimed?.status, 'running');
    assert.equal(claimed?.attempts, 1);
    assert.equal(await states.progress(job.id, { stage: 'rewrite', done: 1, total: 2, percent: 40 }), true);
    const done = await states.succeed(job.id, { report: { ok: true }, metrics: { x: 1 }, event: { sha256: 'abc' } });
    assert.equal(done?.status, 'succeeded');
    assert.equal(done?.progress, 1);
    // Finished: nothing moves it any more.
    assert.equal(await states.progress(job.id, { stage: 'late', done: 0, total: 1, percent: 1 }), false);
    assert.equal(await states.fail(job.id, { category: 'internal', message: 'late' }), null);
    assert.equal(await states.cancel(job.id), null);
    assert.equal(await states.claim(job.id, { workerId: 'w2', attempt: 2 }), null);

    const events = await env.prisma.jobEvent.findMany({ where: { jobId: job.id }, orderBy: { id: 'asc' } });
    assert.deepEqual(
      events.map((e) => [e.type, (e.data as { status?: string }).status ?? null]),
      [['status', 'queued'], ['status', 'running'], ['progress', null], ['status', 'succeeded']],
    );
    const published = await messagesOf(job.id, 4);
    assert.deepEqual(
      published.map((m) => [m.type, m.status, m.stage]),
      [['status', 'queued', null], ['status', 'running', 'staging'], ['progress', 'running', 'rewrite'], ['status', 'succeeded', 'done']],
    );
    assert.equal(published[0]?.tenantId, tenantId);
    assert.equal(published[3]?.job?.status, 'succeeded');
    assert.deepEqual(published[2]?.detail, { stage: 'rewrite', done: 1, total: 2, percent: 40 });
  });

  test('cancel racing succeed: exactly one wins, with one terminal event and one hook call', async () => {
    const calls: Array<[string, string]> = [];
    const off = states.onTerminal(async (tx, job) => {
      // The hook sees the row as written by its own transaction.
      const row = await tx.job.findUniqueOrThrow({ where: { id: job.id } });
      calls.push([job.id, row.status]);
    });
    try {
      const winners = { succeeded: 0, canceled: 0 };
      for (let i = 0; i < 8; i++) {
        const job = await newJob();
        await states.claim(job.id, { workerId: 'w', attempt: 1 });
        const [succeeded, canceled] = await Promise.all([
          states.succeed(job.id, { report: {}, metrics: {}, event: {} }),
          states.cancel(job.id, { tenantId }),
        ]);
        assert.equal((succeeded ? 1 : 0) + (canceled ? 1 : 0), 1, 'exactly one transition wins');
        const row = await env.prisma.job.findUniqueOrThrow({ where: { id: job.id } });
        assert.equal(row.status, succeeded ? 'succeeded' : 'canceled');
        winners[row.status as 'succeeded' | 'canceled'] += 1;
        const terminalEvents = await env.prisma.jobEvent.count({
          where: { jobId: job.id, type: 'status', OR: [{ data: { path: ['status'], equals: 'succeeded' } }, { data: { path: ['status'], equals: 'canceled' } }] },
        });
        assert.equal(terminalEvents, 1);
        assert.deepEqual(calls.filter(([id]) => id === job.id), [[job.id, row.status]]);
      }
      assert.equal(winners.succeeded + winners.canceled, 8);
    } finally {
      off();
    }
  });

  test('a terminal hook that throws rolls the transition back', async () => {
    const job = await newJob();
    const off = states.onTerminal(async () => {
      throw new Error('hook failed');
    });
    try {
      await assert.rejects(states.cancel(job.id), /hook failed/);
    } finally {
      off();
    }
    const row = await env.prisma.job.findUniqueOrThrow({ where: { id: job.id } });
    assert.equal(row.status, 'queued');
    assert.equal(await env.prisma.jobEvent.count({ where: { jobId: job.id } }), 1);
  });

  test("cancel with another tenant's id leaves the row alone; cancel reports where it came from", async () => {
    const job = await newJob();
    assert.equal(await states.cancel(job.id, { tenantId: otherTenantId }), null);
    assert.equal((await env.prisma.job.findUniqueOrThrow({ where: { id: job.id } })).status, 'queued');
    const canceled = await states.cancel(job.id, { tenantId });
    assert.equal(canceled?.from, 'queued');
    assert.equal(canceled?.job.status, 'canceled');
    assert.equal(canceled?.job.errorCategory, 'canceled');
  });

  test('requeue only from running; a requeued job is claimed again and may fail from queued', async () => {
    const job: Job = await newJob();
    assert.equal(await states.requeue(job.id, { category: 'engine_crash', message: 'x' }), null);
    await states.claim(job.id, { workerId: 'w', attempt: 1 });
    const requeued = await states.requeue(job.id, { category: 'engine_crash', message: 'boom', event: { attempt: 1, of: 3 } });
    assert.equal(requeued?.status, 'queued');
    assert.equal(requeued?.stage, 'retrying');
    const retry = await env.prisma.jobEvent.findFirstOrThrow({ where: { jobId: job.id, type: 'retry' } });
    assert.deepEqual(retry.data, { category: 'engine_crash', message: 'boom', attempt: 1, of: 3 });
    const again = await states.claim(job.id, { workerId: 'w2', attempt: 2 });
    assert.equal(again?.attempts, 2);
    assert.equal(again?.errorCategory, null);
    await states.requeue(job.id, { category: 'engine_crash', message: 'boom again' });
    const failed = await states.fail(job.id, { category: 'internal', message: 'gave up' });
    assert.equal(failed?.status, 'failed');
    assert.ok(failed?.finishedAt);
  });
});
